"""distillery's work: one package per DAG stage, plus `core` (settings, store, recipes, caching)."""
