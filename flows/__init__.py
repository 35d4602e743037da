"""distillery's flows: one per stage, ``full`` for the whole DAG, ``backfill`` to resume a failed run.

Importing this package points Prefect at the state folder (``DISTILLERY_HOME``) before Prefect
itself is imported; explicit ``PREFECT_*`` variables still win.
"""

from tasks.core.settings import configure_prefect_environment

configure_prefect_environment()
