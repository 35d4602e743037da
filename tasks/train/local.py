"""The local training backend: the entrypoint script as a subprocess, its output streamed to logs."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

# Lines worth a log record: step and eval losses, the resume decision, errors.
_LOGGED = ("{'loss'", "{'eval_loss'", "resuming", "discarding", "Error", "error")


class TrainingFailed(RuntimeError):
    """The training script exited non-zero; the message carries the end of its output."""


def run_entrypoint(method: str, config: dict, model_dir: Path, data: Path, output_dir: Path,
                   checkpoint_dir: Path, eval_data: Path | None = None, init_adapter: Path | None = None,
                   log: Callable[[str], None] = print) -> dict:
    """Run ``python -m tasks.train.<method>`` and return its metrics.json."""
    output_dir.mkdir(parents=True, exist_ok=True)
    config_path = output_dir.parent / f"{method}-config.json"
    config_path.write_text(json.dumps(config, indent=2))
    command = [sys.executable, "-m", f"tasks.train.{method}", "--config", str(config_path),
               "--model-dir", str(model_dir), "--data", str(data), "--output-dir", str(output_dir),
               "--checkpoint-dir", str(checkpoint_dir)]
    if eval_data is not None:
        command += ["--eval-data", str(eval_data)]
    if init_adapter is not None:
        command += ["--init-adapter", str(init_adapter)]
    tail: list[str] = []
    repo_root = Path(__file__).resolve().parents[2]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=repo_root,
                          bufsize=1) as process:
        assert process.stdout is not None
        try:
            for line in process.stdout:
                # tqdm redraws with carriage returns; log only lines that say something new.
                text = line.rstrip().rsplit("\r", 1)[-1]
                if text and any(word in text for word in _LOGGED):
                    log(f"[{method}] {text[-400:]}")
                tail = (tail + [text])[-30:]
        except BaseException:
            # The stage is stopping (SIGTERM, a cancelled run): so does the trainer, whose last complete
            # checkpoint a rerun resumes from. Left alone, Popen's exit would wait for it to finish.
            process.kill()
            raise
        code = process.wait()
    if code != 0:
        raise TrainingFailed(f"{method} training {_ended(code, method)}:\n" + "\n".join(tail))
    return json.loads((output_dir / "metrics.json").read_text())


def _ended(code: int, method: str) -> str:
    """How the script ended, in words: an exit status, or the signal that killed it (Popen's negative code)."""
    if code >= 0:
        return f"exited with {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    text = f"was killed by {name}"
    if -code == signal.SIGKILL:
        # Nothing in the script sends SIGKILL; the kernel does when memory runs out (dmesg says so).
        text += (f", most often the kernel's out-of-memory killer: lower train.{method}.batch_size or "
                 f"max_seq_len (raise gradient_accumulation to keep the effective batch) or set "
                 f"train.gradient_checkpointing (a rerun with unchanged settings resumes from the last "
                 f"complete checkpoint; changed ones start over)")
    return text
