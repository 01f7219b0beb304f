"""`python -m mi_llm.cli`: the same as the `mi-llm` command."""

from mi_llm.cli import main

main()
