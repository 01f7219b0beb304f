"""`--code`: MITI-code the rewritten dialogues with the automatic coder and score them, so
the transcription's quality is measured, not assumed.

The coder comes from `mi_llm.miti.coders.load_coder`; coding and scoring are
`mi_llm.miti.results.code_and_score`, as in `mi-llm miti score` and the pipeline, and
`<output>.miti.json` has the same schema as their miti.json (one system, named by the
output file's stem).
"""

from __future__ import annotations

import logging
from pathlib import Path

from mi_llm.corpus.schema import read_dialogues
from mi_llm.layout import CODED_SUFFIX, MITI_SUFFIX, beside
from mi_llm.miti.results import DialogueCoder, MitiScores, code_and_score, write_miti_scores

log = logging.getLogger(__name__)


def code_output(output: Path, coder_name: str = "default", coder: DialogueCoder | None = None) -> MitiScores:
    """Code every dialogue in `output`; writes `<output>.coded.jsonl` and `<output>.miti.json`."""
    from mi_llm.miti.coders import load_coder

    dialogues = read_dialogues(output)
    coder = coder or load_coder(coder_name)
    log.info("coding %d rewritten dialogue(s) with the MITI coder %r", len(dialogues), coder_name)
    scores = code_and_score(
        {Path(output).stem: dialogues}, coder, coder_name=coder_name, coded_file=lambda _: beside(output, CODED_SUFFIX)
    )
    write_miti_scores(beside(output, MITI_SUFFIX), scores)
    return scores
