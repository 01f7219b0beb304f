"""The LLM-prompted coder: any generation backend, prompts as data files, JSON answers.

Per counselor volley, one request: the system prompt (`prompts/miti_code.<lang>.txt`,
section `codes`) and the client's previous turn with the numbered utterances (section
`volley`); the answer must be `{"codes": [...]}` with one valid key (or null) per
utterance. Per session, one request for the 4 global ratings (sections `globals` and
`session`), answered as `{"cct": n, "sst": n, "partnership": n, "empathy": n}`.

An answer that is not valid JSON, has the wrong number of codes, an unknown code or a
rating outside 1-5 is sent back with the error (section `retry`) and asked again, up to
`retries` times; what still fails is recorded (code null with the error) rather than
guessed. Requests are sent in batches through the backend's `generate`.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from string import Template
from typing import Any

from mi_llm.corpus.language import detect_language
from mi_llm.corpus.schema import Dialogue, GlobalRatings
from mi_llm.errors import MiLlmError
from mi_llm.miti.codebook import CODE_NAMES, CODES, GLOBALS
from mi_llm.miti.coders.base import Coder, Item, Progress, Result
from mi_llm.prompts import load_prompt

log = logging.getLogger(__name__)

PROMPT = "miti_code"
SECTIONS = ("codes", "volley", "globals", "session", "retry")

# Accepted spellings of each key: the key, its full name, lower-cased, no spaces.
_ALIASES: dict[str, str] = {}
for _k in CODES:
    for _s in (_k, CODE_NAMES[_k]):
        _ALIASES[_s.lower()] = _k
        _ALIASES[re.sub(r"[\s_-]+", "", _s.lower())] = _k
_NULLS = {"null", "none", "", "n/a", "na", "-", "not coded", "uncoded"}

_ROLE_NAMES = {"en": ("Client", "Counselor"), "zh": ("来访者", "咨询师")}


def prompt_sections(language: str) -> dict[str, Template]:
    """The sections (`### name` headers) of the coder prompt file for a language."""
    text = load_prompt(PROMPT, language)
    parts = re.split(r"^###\s*(\w+)\s*$", text, flags=re.MULTILINE)
    found = {parts[i].strip(): parts[i + 1].strip() for i in range(1, len(parts) - 1, 2)}
    missing = [s for s in SECTIONS if s not in found]
    if missing:
        raise MiLlmError(f"prompt {PROMPT}.{language}.txt lacks the section(s) {', '.join(missing)}")
    return {k: Template(v) for k, v in found.items()}


def _json_object(text: str) -> Any:
    """The JSON value in a reply, allowing code fences and text around one object."""
    t = text.strip()
    fence = re.search(r"```(?:json)?\s*(.*?)```", t, flags=re.DOTALL)
    if fence:
        t = fence.group(1).strip()
    try:
        return json.loads(t)
    except ValueError:
        pass
    a, b = t.find("{"), t.rfind("}")
    if a >= 0 and b > a:
        try:
            return json.loads(t[a : b + 1])
        except ValueError:
            pass
    raise ValueError("the reply is not a JSON object")


def normalize_code(value: Any) -> str | None:
    """A code as the LLM wrote it -> a MITI key or None; anything else raises ValueError."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"code {value!r} is not a string or null")
    s = value.strip().lower()
    if s in _NULLS:
        return None
    key = _ALIASES.get(s) or _ALIASES.get(re.sub(r"[\s_-]+", "", s))
    if key is None:
        raise ValueError(f"unknown code {value!r} (use one of {', '.join(CODES)} or null)")
    return key


def parse_codes(text: str, n: int) -> list[str | None]:
    """Validate a `{"codes": [...]}` reply for n utterances (a bare list is accepted too)."""
    obj = _json_object(text)
    codes = obj.get("codes") if isinstance(obj, dict) else obj
    if not isinstance(codes, list):
        raise ValueError('expected {"codes": [...]}')
    if len(codes) != n:
        raise ValueError(f"expected {n} code(s), one per utterance, got {len(codes)}")
    return [normalize_code(c) for c in codes]


def parse_globals(text: str) -> GlobalRatings:
    obj = _json_object(text)
    if not isinstance(obj, dict):
        raise ValueError('expected {"cct": n, "sst": n, "partnership": n, "empathy": n}')
    vals: dict[str, int] = {}
    for g in GLOBALS:
        v = obj.get(g)
        if isinstance(v, str) and v.strip().isdigit():
            v = int(v.strip())
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        if not isinstance(v, int) or isinstance(v, bool):
            raise ValueError(f"{g} must be an integer 1-5, got {v!r}")
        if not 1 <= v <= 5:
            raise ValueError(f"{g} must be between 1 and 5, got {v}")
        vals[g] = v
    return GlobalRatings(**vals)


def parse_spec(spec: str) -> tuple[str, str]:
    """`llm:<backend>:<model>` -> (backend, model); the model may itself contain colons."""
    parts = spec.split(":", 2)
    if len(parts) != 3 or parts[0] != "llm" or not parts[1] or not parts[2]:
        raise MiLlmError(f"bad LLM coder {spec!r}: expected llm:<backend>:<model>, e.g. llm:openai:gpt-4o")
    return parts[1], parts[2]


class LLMCoder(Coder):
    def __init__(
        self,
        backend: Any,
        name: str = "llm",
        retries: int = 2,
        batch_size: int = 16,
        max_new_tokens: int = 256,
        max_transcript_chars: int = 12000,
    ):
        self.backend = backend
        self.name = name
        self.retries = max(0, int(retries))
        self.batch_size = max(1, int(batch_size))
        self.max_new_tokens = max_new_tokens
        self.max_transcript_chars = max_transcript_chars
        self._prompts: dict[str, dict[str, Template]] = {}
        self.stats = {"requests": 0, "retries": 0, "failures": 0}

    @classmethod
    def from_spec(cls, spec: str, **backend_opts: Any) -> LLMCoder:
        from mi_llm.llm.backends import get_backend

        backend_name, model = parse_spec(spec)
        opts = {k: v for k, v in backend_opts.items() if v is not None}
        return cls(get_backend(backend_name, model, **opts), name=spec)

    def _p(self, language: str) -> dict[str, Template]:
        lang = language if language in ("zh", "en") else "en"
        if lang not in self._prompts:
            self._prompts[lang] = prompt_sections(lang)
        return self._prompts[lang]

    # ------------------------------------------------------------- the loop
    def _run(
        self, convs: list[list[dict[str, str]]], parse: Any, languages: Sequence[str], progress: Progress | None = None
    ) -> list[tuple[Any, str | None]]:
        """Ask every conversation; re-ask the invalid ones with the error; (value, error) each."""
        from mi_llm.llm.backends import GenerationConfig

        config = GenerationConfig(max_new_tokens=self.max_new_tokens, do_sample=False)
        results: list[tuple[Any, str | None]] = [(None, "not asked")] * len(convs)
        pending = list(range(len(convs)))
        done = 0
        for attempt in range(self.retries + 1):
            if not pending:
                break
            if attempt:
                self.stats["retries"] += len(pending)
                log.info("asking again for %d invalid answer(s) (retry %d/%d)", len(pending), attempt, self.retries)
            still: list[int] = []
            for b in range(0, len(pending), self.batch_size):
                idx = pending[b : b + self.batch_size]
                outs = self.backend.generate([convs[i] for i in idx], config)
                self.stats["requests"] += len(idx)
                if len(outs) != len(idx):
                    raise MiLlmError(f"the backend returned {len(outs)} completions for {len(idx)} requests")
                for i, comp in zip(idx, outs):
                    try:
                        results[i] = (parse(i, comp.text), None)
                        done += 1
                    except ValueError as e:
                        results[i] = (None, f"{e}")
                        if attempt < self.retries:
                            retry = self._p(languages[i])["retry"].safe_substitute(error=str(e))
                            convs[i] = [
                                *convs[i],
                                {"role": "assistant", "content": comp.text},
                                {"role": "user", "content": retry},
                            ]
                            still.append(i)
                        else:
                            done += 1
                    if progress:
                        progress(done, len(convs))
            pending = still
        failed = sum(1 for _, err in results if err)
        self.stats["failures"] += failed
        if failed:
            log.warning(
                "%d of %d answers stayed invalid after %d retries; recorded as errors", failed, len(convs), self.retries
            )
        return results

    # ------------------------------------------------------------- codes
    def code_volleys(self, volleys: Sequence[tuple], progress: Progress | None = None) -> list[list[Result]]:
        asked = [(i, v) for i, v in enumerate(volleys) if v[1]]
        convs, langs, sizes = [], [], []
        for _, (ctx, texts, lang, *_window) in asked:  # the prompt shows the client's previous turn only
            lang = lang or detect_language(" ".join(texts))
            p = self._p(lang)
            numbered = "\n".join(f"{k}. {t}" for k, t in enumerate(texts, start=1))
            none = "(none)" if lang == "en" else "（无）"
            user = p["volley"].safe_substitute(context=ctx.strip() or none, utterances=numbered, n=len(texts))
            convs.append(
                [{"role": "system", "content": p["codes"].safe_substitute()}, {"role": "user", "content": user}]
            )
            langs.append(lang)
            sizes.append(len(texts))
        answers = self._run(convs, lambda i, text: parse_codes(text, sizes[i]), langs, progress)
        out: list[list[Result]] = [[] for _ in volleys]
        for (vi, (_, texts, *_)), (codes, err) in zip(asked, answers):
            if err:
                out[vi] = [Result(None, error=f"LLM coder: {err}") for _ in texts]
            else:
                out[vi] = [Result(c) for c in codes]
        return out

    def code_items(self, items: Sequence[Item], progress: Progress | None = None) -> list[Result]:
        res = self.code_volleys([(it.context, [it.text], it.language) for it in items], progress)
        return [r[0] for r in res]

    # ------------------------------------------------------------- globals
    def _transcript(self, d: Dialogue) -> str:
        client, counselor = _ROLE_NAMES.get(d.language, _ROLE_NAMES["en"])
        lines = [f"{client if t.role == 'client' else counselor}: {t.text}" for t in d.turns]
        text = "\n".join(lines)
        if len(text) > self.max_transcript_chars:  # keep the start and the end of a long session
            half = self.max_transcript_chars // 2
            text = text[:half] + "\n[...]\n" + text[-half:]
        return text

    def rate_globals_many(self, dialogues: Sequence[Dialogue]) -> list[tuple[GlobalRatings | None, str | None]]:
        convs, langs = [], []
        for d in dialogues:
            p = self._p(d.language)
            target = d.meta.get("target_behaviour") or d.topic or ("not stated" if d.language == "en" else "未说明")
            user = p["session"].safe_substitute(target=target, transcript=self._transcript(d))
            convs.append(
                [{"role": "system", "content": p["globals"].safe_substitute()}, {"role": "user", "content": user}]
            )
            langs.append(d.language)
        answers = self._run(convs, lambda i, text: parse_globals(text), langs)
        return [(g, f"LLM coder: {err}" if err else None) for g, err in answers]

    def rate_globals(self, dialogue: Dialogue) -> tuple[GlobalRatings | None, str | None]:
        return self.rate_globals_many([dialogue])[0]
