"""The MITI 4.2.1 codebook: behaviour codes and global ratings (Moyers et al. 2015)."""

from __future__ import annotations

from typing import Literal, get_args

# The 10 behaviour codes; `None` in data means "not coded".
Code = Literal["GI", "Persuade", "PwP", "Q", "SR", "CR", "AF", "Seek", "EA", "Confront"]
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
