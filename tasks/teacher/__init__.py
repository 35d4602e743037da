"""The teacher: an LLM behind one small interface, with a durable cache and structured outputs.

- ``base``: requests, completions, errors and the provider interface.
- ``openai_compat``: any OpenAI-compatible endpoint (OpenAI, Groq, OpenRouter, Gemini, Anthropic, vLLM,
  Ollama, llama.cpp's server); ``llama_cpp``: the in-process GGUF model (the embedded default).
- ``teacher``: the facade every stage uses (cache, limiter, retries, budget, accounting, ``map``).
- ``retry``, ``limits``, ``keys``, ``cache``, ``progress``, ``runner``: its parts.
- ``scale``: fan-out of generation over Prefect tasks, on a Dask cluster with ``dask_task_runner``.
"""
