"""The MI rewrite prompt: data files `prompts/rewrite.<lang>.txt`, their version id, rendering.

A prompt file has a header of `# key: value` lines (`version` is required) and sections
that each start with a line `=== name ===`: `system`, `user` and `repair`. Placeholders are
written `{{name}}` (double braces, so the JSON examples in the prompt need no escaping).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from functools import cache
from importlib import resources

from mi_llm.corpus.schema import Dialogue
from mi_llm.errors import MiLlmError

PROMPT_NAME = "rewrite"
LANGUAGES = ("zh", "en")
SECTIONS = ("system", "user", "repair")

_SECTION = re.compile(r"^=== (\w+) ===\s*$")
_HEADER = re.compile(r"^#\s*([\w-]+)\s*:\s*(.*?)\s*$")
_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")

Messages = list[dict[str, str]]


@dataclass(frozen=True)
class RewritePrompt:
    language: str
    version: str  # declared in the file's header, bumped by hand on meaningful edits
    sha256: str  # of the file's bytes: any edit shows, even without a version bump
    sections: dict[str, str]
    header: dict[str, str] = field(default_factory=dict)

    @property
    def version_id(self) -> str:
        """`rewrite.<lang>@<version>+<sha[:8]>`: recorded in outputs and in the cache key."""
        return f"{PROMPT_NAME}.{self.language}@{self.version}+{self.sha256[:8]}"

    def fill(self, section: str, **values: str) -> str:
        text = self.sections[section]

        def sub(m: re.Match[str]) -> str:
            key = m.group(1)
            if key not in values:
                raise MiLlmError(
                    f"prompt {self.version_id}: section {section!r} uses unknown placeholder {{{{{key}}}}}"
                )
            return str(values[key])

        return _PLACEHOLDER.sub(sub, text)


def parse_prompt(text: str, language: str, source: str = "<prompt>") -> RewritePrompt:
    header: dict[str, str] = {}
    sections: dict[str, list[str]] = {}
    current: str | None = None
    for line in text.splitlines():
        m = _SECTION.match(line)
        if m:
            current = m.group(1)
            if current in sections:
                raise MiLlmError(f"{source}: section {current!r} appears twice")
            sections[current] = []
        elif current is None:
            h = _HEADER.match(line)
            if h:
                header[h.group(1).lower()] = h.group(2)
            elif line.strip() and not line.startswith("#"):
                raise MiLlmError(f"{source}: text before the first '=== section ===' line")
        else:
            sections[current].append(line)
    missing = [s for s in SECTIONS if s not in sections]
    if missing:
        raise MiLlmError(f"{source}: missing section(s) {', '.join(missing)}")
    if not header.get("version"):
        raise MiLlmError(f"{source}: missing '# version: ...' header line")
    return RewritePrompt(
        language=language,
        version=header["version"],
        sha256=hashlib.sha256(text.encode("utf-8")).hexdigest(),
        sections={k: "\n".join(v).strip() for k, v in sections.items()},
        header=header,
    )


@cache
def load_rewrite_prompt(language: str) -> RewritePrompt:
    """The bundled rewrite prompt for `language` (zh | en)."""
    if language not in LANGUAGES:
        raise MiLlmError(f"no rewrite prompt for language {language!r} (have: {', '.join(LANGUAGES)})")
    res = resources.files("mi_llm.prompts").joinpath(f"{PROMPT_NAME}.{language}.txt")
    return parse_prompt(res.read_text(encoding="utf-8"), language, source=f"prompts/{PROMPT_NAME}.{language}.txt")


@dataclass
class PreparedDialogue:
    """A dialogue made ready for rewriting: alternating turns that start with the client.

    Blank turns are dropped, consecutive turns by the same speaker are joined with a
    newline, and counselor turns before the first client turn (greetings) are dropped,
    because the rewrite must start with the client. The counts are kept for the output's meta.
    """

    dialogue: Dialogue
    turns: list[tuple[str, str]]
    dropped_leading_counselor: int = 0
    merged_turns: int = 0
    dropped_blank: int = 0

    @property
    def client_texts(self) -> list[str]:
        return [t for r, t in self.turns if r == "client"]

    @property
    def n_client(self) -> int:
        return len(self.client_texts)


def prepare(dialogue: Dialogue) -> PreparedDialogue:
    turns: list[tuple[str, str]] = []
    merged = blank = leading = 0
    for turn in dialogue.turns:
        text = turn.text.strip()
        if not text:
            blank += 1
            continue
        if not turns and turn.role == "counselor":
            leading += 1
            continue
        if turns and turns[-1][0] == turn.role:
            turns[-1] = (turn.role, turns[-1][1] + "\n" + text)
            merged += 1
        else:
            turns.append((turn.role, text))
    return PreparedDialogue(dialogue, turns, leading, merged, blank)


def dialogue_json(turns: list[tuple[str, str]]) -> str:
    """The dialogue in the exact JSON shape the answer must have, one turn per line."""
    lines = [json.dumps({"role": r, "text": t}, ensure_ascii=False) for r, t in turns]
    return '{"turns": [\n  ' + ",\n  ".join(lines) + "\n]}"


def expected_turns(n_client: int) -> int:
    return 2 * n_client


def render_messages(prepared: PreparedDialogue, prompt: RewritePrompt | None = None) -> Messages:
    """The chat messages of the first request for one dialogue."""
    prompt = prompt or load_rewrite_prompt(prepared.dialogue.language)
    topic = prepared.dialogue.topic or prompt.header.get("unknown-topic", "-")
    user = prompt.fill(
        "user",
        dialogue=dialogue_json(prepared.turns),
        n_client=str(prepared.n_client),
        n_turns=str(expected_turns(prepared.n_client)),
        topic=topic,
    )
    return [{"role": "system", "content": prompt.fill("system")}, {"role": "user", "content": user}]


def repair_messages(messages: Messages, answer: str, error: str, n_client: int, prompt: RewritePrompt) -> Messages:
    """The conversation so far plus the rejected answer and the reason, to ask again."""
    feedback = prompt.fill("repair", error=error, n_client=str(n_client), n_turns=str(expected_turns(n_client)))
    return [*messages, {"role": "assistant", "content": answer}, {"role": "user", "content": feedback}]
