"""What a lent GPU machine needs to run bench/gpu_train.py and bench/train_throughput.py: ``make gpu-kit``.

    python bench/gpu_kit.py [--out .gpu]

Such a machine can fetch nothing, has no base model and lacks some packages (trl, bitsandbytes,
datasets, pydantic; its transformers predates the training arguments the entrypoints use). This writes,
into ``--out`` (git-ignored; carried there as ``.gpu``):

- ``wheels/``: bench/gpu_wheels.txt's wheels for its Python 3.12. bitsandbytes' wheel carries a kernel
  library for every CUDA and ROCm release (43 MB); it is repacked with the CUDA 13 ones only, which the
  image's torch (cu130) loads, so that the kit and the working tree fit in the 64 MiB a call may carry;
- ``tokenizer/`` and ``conversations.jsonl``: SmolLM2's tokenizer and the Stack Exchange sample's
  conversations (``bench.train_throughput.save_kit``).

It prints the kit's size beside the working tree's and fails when the two would not fit.
docs/benchmarks.md, section 5, has the command that uses it there.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.train_throughput import save_kit  # after the path is set

PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"]
# The kernel libraries of bitsandbytes' wheel that the image's torch (CUDA 13) cannot load.
UNUSED_BNB = re.compile(r"bitsandbytes/libbitsandbytes_(cuda1[12]\d|rocm\d+)\.so$")
LIMIT = 64 * 2**20  # what one device call carries, working tree included


def download(wheels: Path) -> None:
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
               "--python-version", "3.12", "--implementation", "cp", "-d", str(wheels),
               "-r", str(REPO / "bench" / "gpu_wheels.txt")]
    for platform in PLATFORMS:
        command += ["--platform", platform]
    subprocess.run(command, check=True)


def slim_wheel(wheel: Path, unused: re.Pattern) -> int:
    """Rewrite ``wheel`` without the files ``unused`` matches (and their RECORD lines); return bytes saved."""
    before = wheel.stat().st_size
    slim = wheel.with_suffix(".slim")
    with zipfile.ZipFile(wheel) as source, zipfile.ZipFile(slim, "w", zipfile.ZIP_DEFLATED) as target:
        for item in source.infolist():
            if unused.search(item.filename):
                continue
            data = source.read(item)
            if item.filename.endswith(".dist-info/RECORD"):
                lines = [line for line in data.decode().splitlines() if not unused.search(line.split(",")[0])]
                data = ("\n".join(lines) + "\n").encode()
            target.writestr(item, data)
    slim.replace(wheel)
    return before - wheel.stat().st_size


def tree_bytes() -> int:
    """The size of what a device call sends besides the kit: the tracked and untracked, not ignored files."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            check=True, capture_output=True).stdout.split(b"\0")
    return sum((REPO / name.decode()).stat().st_size for name in listed if name and (REPO / name.decode()).is_file())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / ".gpu")
    args = parser.parse_args(argv)
    wheels = args.out / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    download(wheels)
    for wheel in wheels.glob("bitsandbytes-*.whl"):
        saved = slim_wheel(wheel, UNUSED_BNB)
        print(f"{wheel.name}: {saved / 2**20:.1f} MiB of other CUDA and ROCm releases' kernels left out")
    save_kit(args.out)
    kit = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    tree = tree_bytes()
    print(f"kit {kit / 2**20:.1f} MiB in {args.out} + working tree {tree / 2**20:.1f} MiB "
          f"= {(kit + tree) / 2**20:.1f} MiB of the {LIMIT // 2**20} MiB a call carries")
    if kit + tree > LIMIT:
        print("too big to carry: leave out what a run does not need", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
