"""`--code`: MITI-code the rewritten dialogues with the automatic coder and score them, so
the transcription's quality is measured, not assumed.

The coder comes from `mi_llm.miti.coders` (issue 6). The interface used here:

    coder = mi_llm.miti.coders.load_coder(name)           # name: "default" or a coder folder
    coded = coder.code_dialogues(dialogues)              # list[Dialogue]: counselor turns get
                                                         # `codes`, dialogues may get `miti_globals`
Scores: `mi_llm.miti.scoring.score_session` per dialogue, `mi_llm.miti.aggregate.pooled`
(ratios of summed counts) and `aggregate` (mean, median, IQR per session).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

from mi_llm.corpus.schema import Dialogue, read_dialogues, write_dialogues
from mi_llm.errors import MiLlmError
from mi_llm.io import write_json
from mi_llm.layout import CODED_SUFFIX, MITI_SUFFIX, beside

log = logging.getLogger(__name__)

REPORTED = ("pct_cr", "r_q", "mi_adherent_ratio")


def score(coded: Sequence[Dialogue]) -> dict[str, Any]:
    from mi_llm.miti.aggregate import aggregate, pooled
    from mi_llm.miti.scoring import score_session

    scores = [score_session(d) for d in coded]
    if not scores:
        return {"sessions": 0}
    agg = aggregate(scores)
    return {
        "sessions": len(scores),
        "pooled": pooled(scores),
        "per_session": {k: agg[k] for k in REPORTED},
        "ratio_definition": scores[0].ratio.formula,
    }


def code_output(output: Path, coder_name: str = "default", coder: Any = None) -> dict[str, Any]:
    """Code every dialogue in `output`; writes `<output>.coded.jsonl` and `<output>.miti.json`."""
    from mi_llm.miti.coders import load_coder

    dialogues = read_dialogues(output)
    coder = coder or load_coder(coder_name)
    log.info("coding %d rewritten dialogue(s) with the MITI coder %r", len(dialogues), coder_name)
    coded = list(coder.code_dialogues(dialogues))
    if len(coded) != len(dialogues):
        raise MiLlmError(f"the MITI coder returned {len(coded)} dialogues for {len(dialogues)}")
    coded_path = beside(output, CODED_SUFFIX)
    write_dialogues(coded_path, coded)
    result = {"coder": coder_name, "coded": str(coded_path), **score(coded)}
    write_json(beside(output, MITI_SUFFIX), result)
    return result
