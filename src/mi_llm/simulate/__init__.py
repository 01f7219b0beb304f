"""Whole MI sessions with simulated clients (`mi-llm simulate`): persona cards (persona.py,
patienthub.py), the client's state machine (state.py), the prompts each side sees
(prompting.py), the batched, resumable runner (runner.py) and the session outcomes
(outcomes.py). See docs/simulate.md."""
