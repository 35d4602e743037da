"""Deploy: publish a run's artifacts to the store, move ``latest`` after the gate, serve on Ollama."""
