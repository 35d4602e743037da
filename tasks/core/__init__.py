"""What every stage shares: settings, the artifact store, recipes, cache keys and JSONL helpers."""
