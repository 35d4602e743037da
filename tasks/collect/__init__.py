"""The collect stage: arXiv, OpenReview, Stack Exchange and PostgreSQL sources into typed records.

Entry points: :func:`tasks.collect.sources.collect_source` (plain function, one source) and
:func:`tasks.collect.tasks.collect_source_task` (the Prefect task that keeps incremental snapshots in the
artifact store).
"""
