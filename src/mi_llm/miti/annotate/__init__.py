"""The human MITI coding tool: a local web page served by FastAPI (`mi-llm miti annotate`)."""
