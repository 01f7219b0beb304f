"""The build stage: dialogues -> split -> round samples -> exports, into one build folder.

samples.py (round samples, the split) and exports.py (LLaMA-Factory, OpenAI) are data that
train and evaluate read too; stage.py is the stage itself (`mi-llm data build`). Nothing is
imported here, so that reading samples does not load the stage.
"""
