"""mi-llm: build, measure and serve Motivational Interviewing counselor LLMs."""

__version__ = "0.1.0"
