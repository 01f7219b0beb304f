"""Corpus layer: the canonical dialogue schema, its JSONL I/O, importers, downloaders."""
