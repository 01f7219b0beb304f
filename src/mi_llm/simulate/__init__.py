"""Whole MI sessions with simulated clients (`mi-llm simulate`). See docs/simulate.md.

persona.py: the persona card schema; patienthub.py: PatientHub's ConsistentMI profiles as
cards; cards.py: what `--personas` reads; state.py: the client's state machine;
prompting.py: the messages each side sees; config.py: SimulateConfig; runner.py: the
batched, resumable sessions; outcomes.py: the coded sessions' outcomes; stage.py: all of it
end to end (backends and coders loaded)."""
