"""MITI 4.2.1 summary scores of one coded session (Moyers, Manuel & Ernst 2015).

- Technical global = (CCT + SST) / 2;  Relational global = (Partnership + Empathy) / 2
- %CR = CR / (SR + CR);  R:Q = (SR + CR) / Q      (as fractions: 0.40 means 40%)
- MIA = Seek + AF + EA;  MINA = Persuade + Confront
- MI-adherent ratio = adherent / (adherent + non-adherent) under a `RatioDefinition`
  (default: MIA / (MIA + MINA)); its raw counts are always reported beside it.
- Client talk (MISC, when client turns carry `talk`): change-talk share = CT / (CT + ST),
  CT:ST = CT / ST (not MITI scores: they describe the client, not the counselor).
Counts follow the per-volley rules of `mi_llm.miti.session`. A ratio whose denominator
is zero is undefined and reported as None (JSON null), never 0 or infinity.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mi_llm.corpus.schema import Dialogue
from mi_llm.errors import MiLlmError
from mi_llm.miti.codebook import CODES, GLOBALS, MI_ADHERENT, MI_NON_ADHERENT, THRESHOLDS, level
from mi_llm.miti.session import CodedSession

SUMMARY_KEYS: tuple[str, ...] = ("technical", "relational", "pct_cr", "r_q", "mia", "mina", "mi_adherent_ratio")
# Every per-session value aggregated over sessions, in table order.
SCORE_KEYS: tuple[str, ...] = GLOBALS + SUMMARY_KEYS
# Client talk, per session; defined only when client turns carry a talk type.
CLIENT_KEYS: tuple[str, ...] = ("change_share", "ct_st")
SCORE_LABELS: dict[str, str] = {
    "cct": "Cultivating Change Talk",
    "sst": "Softening Sustain Talk",
    "partnership": "Partnership",
    "empathy": "Empathy",
    "technical": "Technical global",
    "relational": "Relational global",
    "pct_cr": "% Complex Reflections",
    "r_q": "Reflection : Question",
    "mia": "MI-adherent (count)",
    "mina": "MI-non-adherent (count)",
    "mi_adherent_ratio": "MI-adherent ratio",
    "change_share": "Change talk / (change + sustain)",
    "ct_st": "Change talk : sustain talk",
}


class RatioDefinition(BaseModel):
    """Which codes the MI-adherent ratio counts: adherent / (adherent + non-adherent)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str
    adherent: tuple[str, ...]
    non_adherent: tuple[str, ...]

    @field_validator("adherent", "non_adherent")
    @classmethod
    def _known(cls, codes: tuple[str, ...]) -> tuple[str, ...]:
        bad = [c for c in codes if c not in CODES]
        if bad:
            raise ValueError(f"unknown code(s) {', '.join(bad)}; expected some of {', '.join(CODES)}")
        if not codes:
            raise ValueError("needs at least one code")
        return tuple(dict.fromkeys(codes))

    @model_validator(mode="after")
    def _disjoint(self) -> RatioDefinition:
        both = set(self.adherent) & set(self.non_adherent)
        if both:
            raise ValueError(f"code(s) {', '.join(sorted(both))} cannot be both adherent and non-adherent")
        return self

    def describe(self) -> str:
        return f"({' + '.join(self.adherent)}) / ({' + '.join(self.adherent + self.non_adherent)})"

    @classmethod
    def parse(cls, spec: str) -> RatioDefinition:
        """A preset name, or 'adherent=AF,Seek,EA,PwP;non-adherent=Persuade,Confront'."""
        spec = spec.strip()
        if spec in RATIO_DEFINITIONS:
            return RATIO_DEFINITIONS[spec]
        if "=" not in spec:
            raise MiLlmError(
                f"unknown MI-adherent ratio definition {spec!r}: use one of {', '.join(RATIO_DEFINITIONS)} "
                "or 'adherent=AF,Seek,EA;non-adherent=Persuade,Confront'"
            )
        parts: dict[str, tuple[str, ...]] = {}
        for part in spec.split(";"):
            key, _, value = part.partition("=")
            key = key.strip().lower().replace("_", "-")
            if key not in ("adherent", "non-adherent"):
                raise MiLlmError(f"ratio definition: unknown part {key!r} (use adherent=... and non-adherent=...)")
            parts[key] = tuple(c.strip() for c in value.replace("+", ",").split(",") if c.strip())
        try:
            return cls(
                name="custom",
                adherent=parts.get("adherent", MI_ADHERENT),
                non_adherent=parts.get("non-adherent", MI_NON_ADHERENT),
            )
        except ValueError as e:
            raise MiLlmError(f"ratio definition {spec!r}: {e}") from None


RATIO_DEFINITIONS: dict[str, RatioDefinition] = {
    # MITI 3.x percentage MI-adherent with the 4.2.1 codes: MIA / (MIA + MINA).
    "default": RatioDefinition(name="default", adherent=MI_ADHERENT, non_adherent=MI_NON_ADHERENT),
    # Advice given with permission counted as adherent, as MITI 3.x's "MI-adherent" did.
    "pwp-adherent": RatioDefinition(name="pwp-adherent", adherent=MI_ADHERENT + ("PwP",), non_adherent=MI_NON_ADHERENT),
}
DEFAULT_RATIO = RATIO_DEFINITIONS["default"]


class Summary(BaseModel):
    technical: float | None = None
    relational: float | None = None
    pct_cr: float | None = None
    r_q: float | None = None
    mia: int
    mina: int
    mi_adherent_ratio: float | None = None


class RatioCounts(BaseModel):
    """The raw counts behind the MI-adherent ratio, under the definition used."""

    definition: str
    formula: str
    adherent: int
    non_adherent: int


class ClientTalk(BaseModel):
    """Client turns by talk type, and the two ratios (None when the denominator is 0)."""

    change: int
    sustain: int
    neutral: int
    change_share: float | None = None
    ct_st: float | None = None


class SessionScores(BaseModel):
    id: str
    language: str
    style: str
    source: str
    topic: str | None = None
    n_volleys: int
    n_utterances: int
    n_uncoded_utterances: int = Field(description="utterances coded null (not a behaviour)")
    uncoded_volleys: int = 0
    # behaviour counts under the per-volley rules (what every score uses)
    counts: dict[str, int]
    # one count per coded utterance, before the volley rules (for transparency)
    utterance_counts: dict[str, int]
    globals: dict[str, int] | None = None
    summary: Summary
    ratio: RatioCounts
    levels: dict[str, str | None]
    client_talk: ClientTalk | None = None  # None: no client turn carries a talk type

    def value(self, key: str) -> float | None:
        """A global rating, a summary score or a behaviour count by key; None if undefined."""
        if key in GLOBALS:
            return None if self.globals is None else float(self.globals[key])
        if key in SUMMARY_KEYS:
            v = getattr(self.summary, key)
            return None if v is None else float(v)
        if key in CLIENT_KEYS:
            v = None if self.client_talk is None else getattr(self.client_talk, key)
            return None if v is None else float(v)
        if key in self.counts:
            return float(self.counts[key])
        raise KeyError(key)

    def report_dict(self) -> dict[str, Any]:
        """JSON-ready dict; undefined values are None (null)."""
        return self.model_dump(mode="json")


def _ratio(num: float, den: float) -> float | None:
    return None if den == 0 else num / den


def score_session(session: CodedSession | Dialogue, definition: RatioDefinition = DEFAULT_RATIO) -> SessionScores:
    """Every MITI 4.2.1 summary score of one session; globals-based ones None without globals."""
    if isinstance(session, Dialogue):
        session = CodedSession.from_dialogue(session)
    counts = dict.fromkeys(CODES, 0)
    utterance_counts = dict.fromkeys(CODES, 0)
    n_utt = n_null = 0
    for volley in session.volleys:
        for code in volley.counted():
            counts[code] += 1
        for utterance_code in volley.codes:
            n_utt += 1
            if utterance_code is None:
                n_null += 1
            else:
                utterance_counts[utterance_code] += 1
    g = session.globals
    reflections = counts["SR"] + counts["CR"]
    mia = counts["Seek"] + counts["AF"] + counts["EA"]
    mina = counts["Persuade"] + counts["Confront"]
    adherent = sum(counts[c] for c in definition.adherent)
    non_adherent = sum(counts[c] for c in definition.non_adherent)
    summary = Summary(
        technical=None if g is None else (g.cct + g.sst) / 2,
        relational=None if g is None else (g.partnership + g.empathy) / 2,
        pct_cr=_ratio(counts["CR"], reflections),
        r_q=_ratio(reflections, counts["Q"]),
        mia=mia,
        mina=mina,
        mi_adherent_ratio=_ratio(adherent, adherent + non_adherent),
    )
    return SessionScores(
        id=session.id,
        language=session.language,
        style=session.style,
        source=session.source,
        topic=session.topic,
        n_volleys=len(session.volleys),
        n_utterances=n_utt,
        n_uncoded_utterances=n_null,
        uncoded_volleys=session.uncoded_volleys,
        counts=counts,
        utterance_counts=utterance_counts,
        globals=None if g is None else g.model_dump(),
        summary=summary,
        ratio=RatioCounts(
            definition=definition.name, formula=definition.describe(), adherent=adherent, non_adherent=non_adherent
        ),
        levels={k: level(k, getattr(summary, k)) for k in THRESHOLDS},
        client_talk=client_talk(session.client_talk),
    )


def client_talk(talk: Sequence[str]) -> ClientTalk | None:
    """Counts and ratios of client talk types; None when there are none."""
    if not talk:
        return None
    n = {t: sum(1 for x in talk if x == t) for t in ("change", "sustain", "neutral")}
    return ClientTalk(
        **n, change_share=_ratio(n["change"], n["change"] + n["sustain"]), ct_st=_ratio(n["change"], n["sustain"])
    )
