from mi_llm.cli import main

main()
