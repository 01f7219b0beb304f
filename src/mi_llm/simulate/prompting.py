"""The messages each side sees: the counselor gets the MI system prompt and the client's turns
as the user's; the simulated client gets its persona, stage and this turn's action
(prompts/client.<lang>.txt, prompts/client_guide.<lang>.txt) and the counselor's turns as the
user's."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

from mi_llm.corpus.schema import Turn
from mi_llm.errors import MiLlmError
from mi_llm.llm.backends.base import Messages
from mi_llm.prompts import load_prompt
from mi_llm.simulate.persona import PersonaCard
from mi_llm.simulate.state import ACTIONS, STAGES


@cache
def client_guide(language: str) -> dict[str, str]:
    """`key: text` lines of client_guide.<language>.txt (a `#` line is a comment)."""
    guide: dict[str, str] = {}
    for line in load_prompt("client_guide", language).splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        key, sep, text = line.partition(":")
        if not sep:
            raise MiLlmError(f"client_guide.{language}.txt: a line without 'key:' ({line[:40]!r})")
        guide[key.strip()] = text.strip()
    wanted = [f"stage.{s}" for s in STAGES] + [f"action.{a}" for a in ACTIONS] + ["opening"]
    missing = [k for k in wanted if k not in guide]
    if missing:
        raise MiLlmError(f"client_guide.{language}.txt: missing {', '.join(missing)}")
    return guide


def _bullets(items: Sequence[str]) -> str:
    return "\n".join(f"- {x}" for x in items)


def client_system(persona: PersonaCard, stage: str, action: str, language: str) -> str:
    guide = client_guide(language)
    separator = "；" if language == "zh" else "; "
    return load_prompt("client", language).format(
        persona=_bullets(persona.persona),
        behavior=persona.behavior,
        beliefs=_bullets(persona.beliefs),
        stage=guide[f"stage.{stage}"],
        motivation=persona.motivation,
        plans=separator.join(persona.acceptable_plans),
        action=guide[f"action.{action}"],
        language_note=guide.get(f"language_note.{persona.language}", ""),
    )


def client_messages(persona: PersonaCard, turns: Sequence[Turn], stage: str, action: str, language: str) -> Messages:
    """The client's prompt for its next turn: the counselor speaks as the user."""
    msgs: Messages = [{"role": "system", "content": client_system(persona, stage, action, language)}]
    msgs.append({"role": "user", "content": client_guide(language)["opening"]})
    for t in turns:
        role = "assistant" if t.role == "client" else "user"
        if msgs[-1]["role"] == role:  # keep roles alternating (the opening cue is a user turn)
            msgs[-1] = {"role": role, "content": msgs[-1]["content"] + "\n" + t.text}
        else:
            msgs.append({"role": role, "content": t.text})
    return msgs


def counselor_messages(turns: Sequence[Turn], language: str, system: str | None = None) -> Messages:
    """The counselor's prompt for its next reply, as `predict` gives it: the MI system
    prompt, the client as the user."""
    msgs: Messages = [{"role": "system", "content": system or load_prompt("system", language)}]
    for t in turns:
        msgs.append({"role": "user" if t.role == "client" else "assistant", "content": t.text})
    return msgs
