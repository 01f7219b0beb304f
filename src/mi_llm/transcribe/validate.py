"""Parse and check an LLM's rewrite: JSON shape, role order, client turns, language, no commentary.

Every check returns a plain-language reason; the reasons are fed back to the model when
it is asked again, and written to the failure report when it gives up.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from difflib import SequenceMatcher
from typing import Any

from mi_llm.transcribe.config import ValidationConfig
from mi_llm.transcribe.prompt import PreparedDialogue, expected_turns

# Speaker names a model may use instead of ours; anything else is rejected.
ROLE_ALIASES: dict[str, str] = {
    "client": "client",
    "user": "client",
    "patient": "client",
    "来访者": "client",
    "求助者": "client",
    "counselor": "counselor",
    "counsellor": "counselor",
    "therapist": "counselor",
    "assistant": "counselor",
    "咨询师": "counselor",
    "心理咨询师": "counselor",
}

_FENCE = re.compile(r"^```[a-zA-Z]*\s*\n(.*?)\n?```$", re.S)

# Commentary inside a turn: talk about the rewrite, speaker labels, MI code annotations.
_META_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    (
        "talks about the rewrite",
        re.compile(
            r"\b(here is|here's|below is)\b[^.\n]{0,40}\b(rewrit\w*|dialogue|version|conversation)\b"
            r"|\brewritten (dialogue|version|conversation)\b|\bas an ai\b|\blanguage model\b",
            re.I,
        ),
    ),
    (
        "talks about the rewrite",
        re.compile(
            r"以下是[^。\n]{0,12}(改写|重写|修改|对话|版本)|(改写|重写)(后的|如下|版本)|作为(一个)?(AI|人工智能|语言模型)"
        ),
    ),
    (
        "starts with a speaker label",
        re.compile(
            r"^\s*[\*\[【(（]?\s*(counsel+or|client|therapist|user|assistant|咨询师|心理咨询师|来访者|求助者)\s*[\*\]】)）]?\s*[:：]",
            re.I,
        ),
    ),
    (
        "contains an MI code annotation",
        re.compile(
            r"[\(\[（【]\s*(open(-ended)? question|closed question|simple reflection|complex reflection|double-sided reflection"
            r"|reflection|affirm(ation)?|summary|change talk|sustain talk|OARS|MITI?|emphasi[sz]ing autonomy"
            r"|开放式(提问|问题)|封闭式(提问|问题)|简单反映|复杂反映|双面反映|反映|肯定|总结|改变语句|维持语句|强调自主)"
            r"[^\)\]）】]{0,30}[\)\]）】]",
            re.I,
        ),
    ),
)

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")


@dataclass
class Verdict:
    turns: list[tuple[str, str]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def reason(self) -> str:
        return "; ".join(self.errors[:5]) + (f"; and {len(self.errors) - 5} more" if len(self.errors) > 5 else "")


def _snippet(text: str, n: int = 40) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[:n] + "…"


def extract_json(answer: str) -> tuple[Any, str | None]:
    """(the parsed JSON object, None) or (None, reason). A ```json fence is tolerated;
    any other text around the object is commentary and rejected."""
    text = answer.strip()
    if not text:
        return None, "the answer is empty"
    m = _FENCE.match(text)
    if m:
        text = m.group(1).strip()
    start = text.find("{")
    if start < 0:
        return None, "the answer contains no JSON object"
    if text[:start].strip():
        return (
            None,
            f"there is text outside the JSON object ({_snippet(text[:start])!r}): answer with the JSON object only",
        )
    try:
        obj, end = json.JSONDecoder().raw_decode(text, start)
    except json.JSONDecodeError as e:
        return None, f"the answer is not valid JSON ({e.msg} at line {e.lineno} column {e.colno})"
    after = text[end:].strip()
    if after:
        return None, f"there is text outside the JSON object ({_snippet(after)!r}): answer with the JSON object only"
    return obj, None


def parse_turns(answer: str) -> tuple[list[tuple[str, str]], list[str]]:
    obj, err = extract_json(answer)
    if err is not None:
        return [], [err]
    if not isinstance(obj, dict) or not isinstance(obj.get("turns"), list):
        return [], ['the JSON object needs a "turns" list']
    extra = sorted(k for k in obj if k != "turns")
    errors: list[str] = []
    if extra:
        errors.append(f'the JSON object has keys other than "turns" ({", ".join(extra)}): no notes or commentary')
    turns: list[tuple[str, str]] = []
    for i, t in enumerate(obj["turns"], start=1):
        if not isinstance(t, dict):
            errors.append(f"turn {i} is not an object with role and text")
            continue
        role = ROLE_ALIASES.get(str(t.get("role", "")).strip().lower())
        text = t.get("text")
        if role is None:
            errors.append(f'turn {i} has role {t.get("role")!r}; use "client" or "counselor"')
        if not isinstance(text, str) or not text.strip():
            errors.append(f"turn {i} has no text")
        keys = sorted(k for k in t if k not in ("role", "text"))
        if keys:
            errors.append(f"turn {i} has keys other than role and text ({', '.join(keys)})")
        if role and isinstance(text, str):
            turns.append((role, text.strip()))
    return turns, errors


def _role_errors(turns: list[tuple[str, str]], n_client: int, keep_count: bool) -> list[str]:
    errors: list[str] = []
    if not turns:
        return ["the answer has no turns"]
    for i, (role, _) in enumerate(turns, start=1):
        want = "client" if i % 2 == 1 else "counselor"
        if role != want:
            errors.append(
                f"turn {i} is by the {role} but should be by the {want}: turns alternate, starting with the client"
            )
            break
    if turns[-1][0] != "counselor":
        errors.append("the last turn must be a counselor turn: every client turn gets one counselor reply")
    got = sum(1 for r, _ in turns if r == "client")
    if keep_count and got != n_client:
        errors.append(
            f"the answer has {got} client turns but the original has {n_client}; keep every client turn "
            f"({expected_turns(n_client)} turns in all)"
        )
    return errors


def _meta_errors(turns: list[tuple[str, str]]) -> list[str]:
    errors = []
    for i, (_, text) in enumerate(turns, start=1):
        for what, pat in _META_PATTERNS:
            m = pat.search(text)
            if m:
                errors.append(f"turn {i} {what} ({_snippet(m.group(0))!r}): turns hold only what the speaker says")
                break
    return errors


def language_shares(text: str) -> tuple[float, float]:
    """(share of CJK characters, share of ASCII letters) among the letters of `text`."""
    letters = [c for c in text if c.isalpha()]
    if not letters:
        return 0.0, 0.0
    cjk = sum(1 for c in letters if _CJK.match(c))
    ascii_ = sum(1 for c in letters if c.isascii())
    return cjk / len(letters), ascii_ / len(letters)


def _language_errors(turns: list[tuple[str, str]], language: str, s: ValidationConfig) -> list[str]:
    counselor = "".join(t for r, t in turns if r == "counselor")
    cjk, ascii_ = language_shares(counselor)
    if language == "zh" and cjk < s.zh_min_cjk_share:
        return [
            f"the counselor turns are not in Chinese (CJK share {cjk:.0%}, need {s.zh_min_cjk_share:.0%}): write in Chinese"
        ]
    if language == "en" and (cjk > s.en_max_cjk_share or ascii_ < s.en_min_ascii_share):
        return [
            f"the counselor turns are not in English (CJK share {cjk:.0%}, ASCII letters {ascii_:.0%}): write in English"
        ]
    return []


def client_similarity(original: list[str], rewritten: list[str]) -> float:
    """Mean per-turn character similarity (turns paired in order), or of the joined text
    when the counts differ."""
    if len(original) == len(rewritten) and original:
        ratios = [SequenceMatcher(None, a, b, autojunk=False).ratio() for a, b in zip(original, rewritten)]
        return sum(ratios) / len(ratios)
    return SequenceMatcher(None, "\n".join(original), "\n".join(rewritten), autojunk=False).ratio()


def validate_answer(
    answer: str, prepared: PreparedDialogue, settings: ValidationConfig = ValidationConfig()
) -> Verdict:
    turns, errors = parse_turns(answer)
    if not turns and errors:
        return Verdict([], errors)
    errors += _role_errors(turns, prepared.n_client, settings.keep_client_count)
    errors += _meta_errors(turns)
    errors += _language_errors(turns, prepared.dialogue.language, settings)
    if settings.min_client_similarity > 0:
        new_client = [t for r, t in turns if r == "client"]
        sim = client_similarity(prepared.client_texts, new_client)
        if sim < settings.min_client_similarity:
            errors.append(
                f"the client turns were changed too much (similarity {sim:.2f}, need "
                f"{settings.min_client_similarity:.2f}): keep what the client says"
            )
    return Verdict(turns, errors)
