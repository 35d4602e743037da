"""Shared fixtures. Every test gets its own state folder; nothing touches ./.distillery."""

from __future__ import annotations

import os
import shutil

import pytest


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # noqa: BLE001 - a broken torch install means no GPU tests, not a failed session
        return False


def pytest_configure(config):
    """Under ``pytest -n N`` the workers share the cores: each worker's llama.cpp models get the
    physical cores divided among them (one thread each on 2 cores), not all of them each, which would
    have N models' threads wait on one another's cores."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1 and "DISTILLERY_LLAMA_THREADS" not in os.environ:
        from tasks.core.settings import Settings

        os.environ["DISTILLERY_LLAMA_THREADS"] = str(max(1, Settings().generation_threads // workers))


def pytest_collection_modifyitems(config, items):
    # Whole-DAG tests run several pipelines on 2 CPU cores: the suite-wide 900 s limit is for the rest.
    for item in items:
        if "e2e" in item.keywords and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(3600))
    gpu_items = [item for item in items if "gpu" in item.keywords]
    if not gpu_items or _has_cuda():  # importing torch costs seconds: only when a GPU test is collected
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in gpu_items:
        item.add_marker(skip)


# Under `make test` (pytest -n 2), a test file runs whole on one worker, so its module-scoped fixtures
# (a failed run, a trained adapter, a server) are built once; these files share a session fixture's
# state folder as well (smoke_dag_home) and run on one worker, in this order.
SAME_WORKER = {"tests/e2e/test_full_dag.py": "smoke-dag", "tests/e2e/test_ui_manual_run.py": "smoke-dag"}


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """pytest-xdist's scheduling by file, with the files of SAME_WORKER in one unit (xdist's own
    ``--dist loadgroup`` does not group on pytest 9: the group suffix it writes to ``_nodeid`` is lost)."""
    if config.getvalue("dist") != "load":  # an explicit --dist is the caller's choice
        return None
    from xdist.scheduler import LoadFileScheduling

    # Files in collection order, so the end-to-end ones (the longest) start first; xdist's default puts
    # the files with the most tests first, which left two 10-minute DAG files for the end.
    config.option.loadscopereorder = False

    class FileScheduling(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = super()._split_scope(nodeid)
            return SAME_WORKER.get(path, path)

    return FileScheduling(config, log)


@pytest.fixture(autouse=True)
def distillery_home(tmp_path, monkeypatch):
    """A fresh DISTILLERY_HOME per test, with settings re-read, and Prefect's results inside it.

    Base models converted from GGUF still come from the machine-wide cache (``DISTILLERY_MODEL_CACHE``),
    as for a user: converted once per machine, not once per state folder.

    Prefect reads its settings when first imported, which in a test session happens before
    ``flows/`` can point them at the state folder: without the override, flows run in-process would
    write their task results (the stage cache) to ~/.prefect/storage, where the next test, or the
    next pytest run, would find them and report a stage ``cached`` that should have run.
    """
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, temporary_settings

    from tasks.core.settings import get_settings

    home = tmp_path / "distillery-home"
    monkeypatch.setenv("DISTILLERY_HOME", str(home))
    monkeypatch.delenv("DISTILLERY_STORE_URI", raising=False)
    monkeypatch.delenv("DISTILLERY_OLLAMA_HOST", raising=False)
    get_settings.cache_clear()
    with temporary_settings({PREFECT_LOCAL_STORAGE_PATH: home / "prefect" / "results"}):
        yield home
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory):
    """One temporary Prefect server (SQLite) for the whole session's flow tests."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def smoke_dag_home(tmp_path_factory):
    """The state folder of the stats-qa smoke DAG runs: tests/e2e/test_full_dag.py runs it cold and warm,
    then the UI test's run from the deployment finds those stages cached, as a manual run from the UI
    finds the weekly run's. Each test also holds on its own, slower, when run alone."""
    return tmp_path_factory.mktemp("smoke-dag") / "home"


@pytest.fixture(scope="session")
def base_model_dir(tmp_path_factory):
    """SmolLM2-135M as a transformers folder (dequantized from the packaged GGUF once per session)."""
    from tasks.base.export import export_base_model

    return export_base_model("smollm2-135m", tmp_path_factory.mktemp("base") / "base-model")


@pytest.fixture(scope="session")
def converter_dir():
    from tasks.core.settings import Settings

    folder = Settings().llama_cpp_converter_dir
    if not (folder / "convert_hf_to_gguf.py").exists():
        pytest.fail(f"llama.cpp converter missing at {folder}: run `python -m tasks.package.converter`")
    return folder


def cleanup(path):
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path, exist_ok=True)
