"""The MITI 4.2.1 codebook: behaviour codes and global ratings (Moyers et al. 2015)."""

from __future__ import annotations

from typing import get_args

# The 10 behaviour codes; `None` in data means "not coded". The dialogue schema (a lower
# layer) owns the Literal; it is re-exported here.
from mi_llm.corpus.schema import Code

CODES: tuple[str, ...] = get_args(Code)

CODE_NAMES: dict[str, str] = {
    "GI": "Giving Information",
    "Persuade": "Persuade",
    "PwP": "Persuade with Permission",
    "Q": "Question",
    "SR": "Simple Reflection",
    "CR": "Complex Reflection",
    "AF": "Affirm",
    "Seek": "Seeking Collaboration",
    "EA": "Emphasizing Autonomy",
    "Confront": "Confront",
}

MI_ADHERENT: tuple[str, ...] = ("AF", "Seek", "EA")
MI_NON_ADHERENT: tuple[str, ...] = ("Persuade", "Confront")

# The 4 global ratings, each 1-5.
GLOBALS: tuple[str, ...] = ("cct", "sst", "partnership", "empathy")
GLOBAL_NAMES: dict[str, str] = {
    "cct": "Cultivating Change Talk",
    "sst": "Softening Sustain Talk",
    "partnership": "Partnership",
    "empathy": "Empathy",
}

# Label used for "not coded" (null) where a category name is needed (agreement tables).
NONE_LABEL = "none"

# Keyboard shortcuts of the human coding tool: 1-9 and 0 in codebook order.
SHORTCUTS: dict[str, str] = {code: str((i + 1) % 10) for i, code in enumerate(CODES)}

GLOBAL_ABBREVIATIONS: dict[str, str] = {"cct": "CCT", "sst": "SST", "partnership": "Partnership", "empathy": "Empathy"}

# Proficiency thresholds (fair, good) from the manual; %CR is a fraction here (0.40 = 40%).
THRESHOLDS: dict[str, tuple[float, float]] = {
    "relational": (3.5, 4.0),
    "technical": (3.0, 4.0),
    "pct_cr": (0.40, 0.50),
    "r_q": (1.0, 2.0),
}

# Figures reported by the MI-LLM paper (Hu et al., arXiv 2512.15446), as (low, high) ranges.
PAPER_FIGURES: dict[str, dict[str, tuple[float, float]]] = {
    "pct_cr": {"real counselors": (0.37, 0.37), "fine-tuned LLMs": (0.24, 0.31)},
    "mi_adherent_ratio": {"real counselors": (0.75, 0.75), "fine-tuned LLMs": (0.67, 0.82)},
}
PAPER_NOTES: dict[str, str] = {
    "r_q": "LLMs below real counselors (no figure given)",
    "mi_adherent_ratio": "paper does not give its formula; compare with care",
}


def level(key: str, value: float | None) -> str | None:
    """'good', 'fair' or 'below fair' against the manual's thresholds; None without a threshold or value."""
    if value is None or key not in THRESHOLDS:
        return None
    fair, good = THRESHOLDS[key]
    return "good" if value >= good else "fair" if value >= fair else "below fair"
