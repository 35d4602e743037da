"""llama.cpp's own HF->GGUF converter, taken from the pinned llama-cpp-python source archive.

The installed wheel has no converter; its source archive carries ``vendor/llama.cpp/
convert_hf_to_gguf.py`` with ``conversion/`` and ``gguf-py/``, the converter matching the llama.cpp
we quantize and serve with. ``python -m tasks.package.converter`` fetches it once (pip download from
the package index), the setup commands run that; at run time it is only read.
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

NEEDED = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/")


class ConverterMissing(RuntimeError):
    pass


def converter_script(folder: Path) -> Path:
    script = folder / "convert_hf_to_gguf.py"
    if not script.exists():
        raise ConverterMissing(
            f"llama.cpp's converter (convert_hf_to_gguf.py) is not in {folder}; run `python -m tasks.package.converter` once "
            "(it downloads the llama-cpp-python source archive from the package index)")
    return script


def ensure_converter(folder: Path) -> Path:
    """Extract the converter of the installed llama-cpp-python version into ``folder`` if absent."""
    if (folder / "convert_hf_to_gguf.py").exists():
        return folder
    version = importlib.metadata.version("llama-cpp-python")
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-d", tmp,
                        f"llama-cpp-python=={version}"], check=True, stdout=subprocess.DEVNULL)
        archive = next(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
        staging = Path(tempfile.mkdtemp(dir=folder.parent if folder.parent.exists() else None))
        with tarfile.open(archive) as tar:
            prefix = f"llama_cpp_python-{version}/vendor/llama.cpp/"
            members = []
            for member in tar.getmembers():
                if not member.name.startswith(prefix):
                    continue
                rel = member.name[len(prefix):]
                if any(rel == n or rel.startswith(n) for n in NEEDED) and (member.isfile() or member.isdir()):
                    member.name = rel
                    members.append(member)
            tar.extractall(staging, members=members, filter="data")
        folder.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging, folder)
    return folder


def convert_to_gguf(model_dir: Path, outfile: Path, converter_dir: Path, outtype: str = "f16") -> Path:
    """Run llama.cpp's converter on a transformers folder; return the GGUF path."""
    script = converter_script(converter_dir)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(converter_dir), str(converter_dir / "gguf-py"), env.get("PYTHONPATH", "")])
    result = subprocess.run([sys.executable, str(script), str(model_dir), "--outfile", str(outfile),
                             "--outtype", outtype], env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0 or not outfile.exists():
        raise RuntimeError(f"convert_hf_to_gguf failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return outfile


if __name__ == "__main__":
    from tasks.core.settings import get_settings

    print(ensure_converter(get_settings().llama_cpp_converter_dir))
