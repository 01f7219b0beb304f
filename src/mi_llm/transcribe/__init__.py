"""The MI transcription stage: rewrite counseling dialogues into MI style with an LLM.

    from mi_llm.transcribe import TranscribeSettings, transcribe_file
    stats = transcribe_file("dialogues.jsonl", "mi.jsonl", TranscribeSettings(backend="openai", model="gpt-4o"))

See docs/transcribe.md.
"""

from mi_llm.transcribe.clients import GenSettings
from mi_llm.transcribe.prompt import load_rewrite_prompt, prepare, render_messages
from mi_llm.transcribe.runner import RunStats, TranscribeSettings, transcribe_file
from mi_llm.transcribe.store import failures_path
from mi_llm.transcribe.validate import ValidationSettings, validate_answer

__all__ = [
    "GenSettings",
    "RunStats",
    "TranscribeSettings",
    "ValidationSettings",
    "failures_path",
    "load_rewrite_prompt",
    "prepare",
    "render_messages",
    "transcribe_file",
    "validate_answer",
]
