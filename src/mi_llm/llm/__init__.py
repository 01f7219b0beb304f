"""Models, chat templates and generation backends."""
