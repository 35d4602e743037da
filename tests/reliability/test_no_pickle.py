"""No pickle on the artifact path: read the code (case 8 of the reliability suite)."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = [p for d in ("tasks", "flows", "infra") for p in (ROOT / d).rglob("*.py")]


def calls(name_suffix: str):
    for path in PRODUCT:
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                func = ast.unparse(node.func)
                if func.endswith(name_suffix):
                    yield path, node


def test_there_is_product_code_to_check():
    assert len(PRODUCT) > 30


def test_every_torch_load_is_weights_only():
    for path, node in calls("torch.load"):
        kwargs = {k.arg: ast.unparse(k.value) for k in node.keywords}
        assert kwargs.get("weights_only") == "True", f"{path}:{node.lineno}: torch.load without weights_only=True"


def test_no_pickle_modules_in_product_code():
    pattern = re.compile(r"^\s*(import|from)\s+(pickle|cPickle|dill|cloudpickle|joblib)\b", re.MULTILINE)
    offenders = [str(p) for p in PRODUCT if pattern.search(p.read_text())]
    assert offenders == []


def test_trust_remote_code_is_never_hard_coded_on():
    for path in PRODUCT:
        text = path.read_text()
        assert not re.search(r"trust_remote_code\s*=\s*True", text), f"{path} turns trust_remote_code on"


def test_weights_are_saved_as_safetensors():
    for path, node in calls("save_pretrained"):
        kwargs = {k.arg: ast.unparse(k.value) for k in node.keywords}
        if "safe_serialization" in kwargs:
            assert kwargs["safe_serialization"] == "True", f"{path}:{node.lineno}"


def test_prefect_results_are_json():
    import os

    from tasks.core.settings import configure_prefect_environment

    configure_prefect_environment()
    assert os.environ["PREFECT_RESULTS_DEFAULT_SERIALIZER"] == "json"
    for path in (ROOT / "tasks").rglob("tasks.py"):
        text = path.read_text()
        for match in re.finditer(r"@task\((.*?)\)\ndef", text, re.DOTALL):
            assert 'result_serializer="json"' in match.group(1), f"{path}: a task persists results without JSON"
