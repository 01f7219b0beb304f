"""Whole sessions between a counselor and simulated clients, run as one batch, resumable.

Every active session's next counselor reply goes into one `Backend.generate` call, then
every active session's next client turn into one call on the client's backend; the MITI
coder codes the replies of the round together and each session's state machine reads
them. A session ends on the client's plan, a drop-out, or `max_rounds` counselor replies
(each answered by the client). A finished session is appended to `sessions.jsonl` as one
whole line (flushed and synced); a rerun cuts a torn last line, skips the sessions already
there and runs the rest. A generate call that fails is retried with backoff; when it still
fails, each conversation is tried alone, and a session whose own call fails is recorded in
`sessions.failed.jsonl` with the reason, the run going on (a rerun tries it again). A backend
that settles each conversation on its own (`generate_settled`: the openai one, whose client
retries each request with backoff, Retry-After honoured) is asked once per round, and only
the sessions whose own request failed fail.

Strategy-then-response (`strategy`, mi_llm.build.strategy): a leading tag such as "[CR] " is
always cut from a counselor reply before it is stored, coded or shown to the client (a
strategy-trained counselor writes one); a forced or policy code is begun as the assistant's
turn (`Strategy.prefill`), a policy reading each earlier reply's one code (`turn_code`) as the
MITI coder coded it. The turn's `meta` keeps the strategy, the code asked for and the code
followed (asked, else written), as `mi-llm predict --strategy` records them.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Protocol

from mi_llm.build.strategy import Strategy, split_tag, turn_code
from mi_llm.corpus.schema import Dialogue, Language, Turn, Utterance
from mi_llm.errors import MiLlmError
from mi_llm.io import repair_torn_tail, write_json, write_jsonl
from mi_llm.layout import SimulatePaths, meta_file
from mi_llm.llm.backends.base import Backend, GenerationConfig, Messages
from mi_llm.miti.segment import split_utterances
from mi_llm.simulate.config import SimulateConfig
from mi_llm.simulate.persona import PersonaCard
from mi_llm.simulate.prompting import client_messages, counselor_messages
from mi_llm.simulate.state import ClientState, touches_motivator

log = logging.getLogger(__name__)

SOURCE = "simulate"
END_REASONS = ("plan", "dropout", "max_rounds")

ProgressFn = Callable[[str, int], None]  # (event "session" | "round", how many)


class VolleyCoder(Protocol):
    """The MITI coder's batch interface (`mi_llm.miti.coders.base.Coder.code_volleys`)."""

    def code_volleys(self, volleys: Sequence[tuple[str, list[str], str | None]]) -> Sequence[Sequence[Any]]: ...


@dataclass
class SessionPlan:
    index: int
    id: str
    persona: PersonaCard
    language: Language
    seed: int


def plan_sessions(config: SimulateConfig, personas: Sequence[PersonaCard]) -> list[SessionPlan]:
    """Session i talks with persona i mod len(personas); its seed depends on --seed and i only."""
    if not personas:
        raise MiLlmError("no personas to simulate")
    plans = []
    for i in range(config.sessions):
        p = personas[i % len(personas)]
        plans.append(SessionPlan(i, f"sim{i:05d}-{p.id}", p, config.language or p.language, config.seed * 100_003 + i))
    return plans


@dataclass
class Session:
    plan: SessionPlan
    state: ClientState
    turns: list[Turn] = field(default_factory=list)
    action: str = ""  # what the client does in its next turn
    rounds: int = 0
    end: str | None = None
    error: str | None = None

    def dialogue(self, config: SimulateConfig) -> Dialogue:
        p = self.plan
        client_turns = [t for t in self.turns if t.role == "client"]
        return Dialogue(
            id=p.id,
            source=SOURCE,
            language=p.language,
            topic=p.persona.goal,
            turns=self.turns,
            meta={
                "persona_id": p.persona.id,
                "persona_source": p.persona.source,
                "behavior": p.persona.behavior,
                "seed": p.seed,
                "end_reason": self.end,
                "rounds": self.rounds,
                "start_stage": p.persona.stage,
                "start_receptivity": p.persona.receptivity,
                "final_stage": self.state.stage,
                "final_receptivity": self.state.receptivity,
                "moves_back": self.state.moves_back,
                # per round (the client's answer to counselor reply k): index 0 is the opening
                "stages": [t.meta["stage"] for t in client_turns],
                "receptivity": [t.meta["receptivity"] for t in client_turns],
                "actions": [t.meta["action"] for t in client_turns],
                "counselor": config.counselor_url or config.counselor,
                "client": config.client_url or config.client,
            },
        )


@dataclass
class SimulateResult:
    output: Path
    sessions: int  # planned
    written_now: int
    resumed: int
    failed: list[dict[str, Any]]
    seconds: float


def read_done_sessions(path: Path) -> dict[str, Dialogue]:
    """Sessions already in `path`; a line that is not a session is FILE:LINE (exit 2)."""
    done: dict[str, Dialogue] = {}
    if not path.is_file():
        return done
    from mi_llm.corpus.schema import read_dialogues

    for d in read_dialogues(path):
        done[d.id] = d
    return done


def _retrying(fn: Callable[[], Any], retries: int, wait: float) -> Any:
    for attempt in range(retries + 1):
        try:
            return fn()
        except Exception as e:  # an endpoint's failure of any kind: retried, then reported
            if attempt == retries:
                raise
            log.warning(
                "generate failed (%s: %s); retry %d of %d", type(e).__name__, str(e)[:200], attempt + 1, retries
            )
            time.sleep(wait * 2**attempt)
    raise AssertionError("unreachable")


def generate_each(
    backend: Backend, batch: Sequence[Messages], config: GenerationConfig, retries: int, wait: float
) -> list[str | Exception]:
    """Each conversation's next turn, or the exception that its own call ended with."""
    if not batch:
        return []
    settled = getattr(backend, "generate_settled", None)
    if settled is not None:  # the backend retries each request itself, with backoff (the openai one)
        return [o if isinstance(o, Exception) else o.text.strip() for o in settled(list(batch), config)]
    try:
        completions = _retrying(lambda: backend.generate(list(batch), config), retries, wait)
        if len(completions) != len(batch):
            raise MiLlmError(f"the backend returned {len(completions)} completions for {len(batch)} prompts")
        return [c.text.strip() for c in completions]
    except Exception as batch_error:
        if len(batch) == 1:
            return [batch_error]
    out: list[str | Exception] = []
    for messages in batch:  # find which conversations fail
        try:
            [c] = _retrying(partial(backend.generate, [messages], config), retries, wait)
            out.append(c.text.strip())
        except Exception as e:
            out.append(e)
    return out


def _reason(e: Exception) -> str:
    return " ".join(f"{type(e).__name__}: {e}".split())[:500]


def simulate(
    config: SimulateConfig,
    personas: Sequence[PersonaCard],
    counselor: Backend,
    client: Backend,
    coder: VolleyCoder,
    output_dir: str | Path,
    overwrite: bool = False,
    progress: ProgressFn | None = None,
) -> SimulateResult:
    """Run the planned sessions not yet in output_dir/sessions.jsonl; append each as it ends."""
    paths = SimulatePaths(Path(output_dir))
    paths.root.mkdir(parents=True, exist_ok=True)
    output = paths.sessions
    sidecar = meta_file(output)
    strategy = config.steering()
    key = config.run_key()
    if strategy is not None:  # a policy's settings too: an edited policy file is another setting
        key["strategy"] = strategy.describe()
    if overwrite:
        for stale in (output, sidecar, paths.failed, paths.outcomes, paths.coded, paths.fidelity):
            stale.unlink(missing_ok=True)
    repair_torn_tail(output)
    done = read_done_sessions(output)
    if done and sidecar.is_file():
        old = json.loads(sidecar.read_text(encoding="utf-8")).get("settings")
        if old != key:
            old = old if isinstance(old, dict) else {}
            changed = sorted(k for k in key.keys() | old.keys() if old.get(k) != key.get(k))
            raise MiLlmError(
                f"{output} holds sessions simulated with other settings (differs in {', '.join(changed)}); "
                "pass --overwrite or choose another -o"
            )
    plans = plan_sessions(config, personas)
    todo = [p for p in plans if p.id not in done]
    resumed = len(plans) - len(todo)
    if resumed:
        log.info("resuming: %d of %d sessions already in %s", resumed, len(plans), output)
        if progress:
            progress("session", resumed)
    meta: dict[str, Any] = {
        "settings": key,
        "counselor": counselor.describe(),
        "client": client.describe(),
        "sessions": len(plans),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "complete": False,
    }
    write_json(sidecar, meta)
    counselor_gen = GenerationConfig(max_new_tokens=config.counselor_max_tokens, seed=config.seed)
    client_gen = GenerationConfig(
        max_new_tokens=config.client_max_tokens,
        do_sample=config.client_temperature > 0,
        temperature=config.client_temperature or 1.0,
        seed=config.seed,
    )
    t0 = time.monotonic()
    sessions = [Session(p, ClientState.start(p.persona, p.seed)) for p in todo]
    for s in sessions:
        s.action = s.state.opening_action()
    failed: list[dict[str, Any]] = []
    written = 0
    with open(output, "a", encoding="utf-8") as f:

        def finish(finished: list[Session]) -> None:
            nonlocal written
            for s in finished:
                if s.error is not None:
                    failed.append(
                        {"id": s.plan.id, "persona_id": s.plan.persona.id, "rounds": s.rounds, "error": s.error}
                    )
                    log.warning("session %s failed after %d rounds: %s", s.plan.id, s.rounds, s.error)
                else:
                    f.write(s.dialogue(config).model_dump_json() + "\n")
                    written += 1
            if finished:
                f.flush()
                os.fsync(f.fileno())
                if progress:
                    progress("session", len(finished))

        # the client opens: what brings them here
        active = sessions
        _client_turns(active, client, client_gen, config)
        finish([s for s in active if s.error is not None])
        active = [s for s in active if s.error is None]
        while active:
            _counselor_turns(active, counselor, counselor_gen, coder, config, strategy)
            _client_turns([s for s in active if s.error is None], client, client_gen, config)
            finish([s for s in active if s.error is not None or s.end is not None])
            active = [s for s in active if s.error is None and s.end is None]
            if progress:
                progress("round", 1)
    seconds = time.monotonic() - t0
    write_jsonl(paths.failed, failed)
    meta.update(
        complete=True,
        finished=time.strftime("%Y-%m-%dT%H:%M:%S"),
        written_now=written,
        failed_now=len(failed),
        seconds=round(seconds, 2),
    )
    write_json(sidecar, meta)
    return SimulateResult(output, len(plans), written, resumed, failed, seconds)


def counselor_codes(turns: Sequence[Turn]) -> list[str | None]:
    """The one code (turn_code) of each counselor turn so far, as the MITI coder coded it."""
    return [turn_code(u.code for u in t.codes or []) for t in turns if t.role == "counselor"]


def strategy_meta(strategy: Strategy | None, requested: str | None, written: str | None) -> dict[str, Any]:
    """What a counselor turn keeps of its strategy (nothing without one, unless the model wrote a tag)."""
    if strategy is None:
        return {"code": written} if written else {}
    return {"strategy": strategy.spec, "requested": requested, "code": requested or written}


def _counselor_turns(
    sessions: list[Session],
    backend: Backend,
    gen: GenerationConfig,
    coder: VolleyCoder,
    config: SimulateConfig,
    strategy: Strategy | None = None,
) -> None:
    """Each session's next counselor reply (its tag cut), coded; each client state steps on it."""
    requested = [strategy.requested(counselor_codes(s.turns)) if strategy else None for s in sessions]
    batch = [counselor_messages(s.turns, s.plan.language) for s in sessions]
    if strategy is not None:
        batch = [strategy.prefill(m, code) for m, code in zip(batch, requested)]
    texts = generate_each(backend, batch, gen, config.retries, config.retry_wait_s)
    ok: list[tuple[Session, str, list[str], dict[str, Any]]] = []
    for s, text, asked in zip(sessions, texts, requested):
        if isinstance(text, Exception):
            s.error = "counselor: " + _reason(text)
        else:
            written, reply = split_tag(text)
            reply = reply.strip()
            if not reply:  # nothing said (e.g. only a tag): no turn to code or to answer
                s.error = "counselor: an empty reply" + (" (only a strategy tag)" if text.strip() else "")
                continue
            pieces = split_utterances(reply, s.plan.language)
            ok.append((s, reply, pieces, strategy_meta(strategy, asked, written)))
    volleys = [(s.turns[-1].text, pieces, s.plan.language) for s, _, pieces, _ in ok]
    results = coder.code_volleys(volleys) if volleys else []
    for (s, text, pieces, meta), coded in zip(ok, results):
        codes = [r.code for r in coded]
        s.turns.append(
            Turn(
                role="counselor",
                text=text,
                codes=[Utterance(text=x, code=c) for x, c in zip(pieces, codes)] if pieces else None,
                meta=meta,
            )
        )
        s.rounds += 1
        step = s.state.step(codes, touches_motivator(text, s.plan.persona))
        s.action = step.action


def _client_turns(sessions: list[Session], backend: Backend, gen: GenerationConfig, config: SimulateConfig) -> None:
    """Each session's next client turn, in the manner of its chosen action; sessions end here."""
    batch = [client_messages(s.plan.persona, s.turns, s.state.stage, s.action, s.plan.language) for s in sessions]
    texts = generate_each(backend, batch, gen, config.retries, config.retry_wait_s)
    for s, text in zip(sessions, texts):
        if isinstance(text, Exception):
            s.error = "client: " + _reason(text)
            continue
        last = s.state.history[-1] if s.state.history else None
        meta = {
            "round": s.rounds,
            "action": s.action,
            "stage": s.state.stage,
            "receptivity": s.state.receptivity,
            "effect": last.effect if last else None,
        }
        s.turns.append(Turn(role="client", text=text, meta=meta))
        if s.action == "plan":
            s.end = "plan"
        elif s.action == "leave":
            s.end = "dropout"
        elif s.rounds >= config.max_rounds:
            s.end = "max_rounds"
