"""Preference data from MITI: sample replies, score them with a MITI coder, keep pairs
(build.py, the stage); the pairs schema and its exports (pairs.py); scoring and guards
(score.py); options (config.py)."""
