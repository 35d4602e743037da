"""Validate: run the served GGUF on held-out data against the base (and production), then gate."""
