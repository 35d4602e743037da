"""What the SFT and DPO entrypoints share: arguments, seeds, model loading, trainer settings, checkpoints,
the timed run and what it publishes.

These scripts run unchanged as a local subprocess and inside a SageMaker training container, so
every path has a SageMaker default: ``SM_CHANNEL_<NAME>`` (else ``/opt/ml/input/data/<name>`` when
that folder exists), ``SM_MODEL_DIR`` and ``SM_CHECKPOINT_DIR`` (else ``/opt/ml/model`` and
``/opt/ml/checkpoints`` on SageMaker). The SageMaker backend sets all of them explicitly, so the
script does not depend on the sagemaker-training toolkit being in the image.

Checkpoints are crash-safe: a checkpoint counts only when our completion marker (written after the
Trainer finished writing it, and after the files are fsynced) names this run's key and lists the
size and sha256 of every file, and every file still matches. Anything else in the checkpoint folder
(another run's, a truncated or half-synced one, one newer than the resume point) is removed before
training starts, so a stale marker can never vouch for files rewritten later.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

COMPLETE_MARKER = "distillery-complete.json"
# Files a checkpoint cannot be resumed without (the adapter and the Trainer's step counter).
_REQUIRED_FILES = ("adapter_model.safetensors", "trainer_state.json")


def parse_args(method: str, argv: list[str] | None = None) -> argparse.Namespace:
    on_sagemaker = _on_sagemaker()
    output_default = _env_path("SM_MODEL_DIR") or (Path("/opt/ml/model") if on_sagemaker else Path("output"))
    checkpoint_default = _env_path("SM_CHECKPOINT_DIR") or (
        Path("/opt/ml/checkpoints") if on_sagemaker else None)
    parser = argparse.ArgumentParser(
        prog=f"python -m tasks.train.{method}",
        description=f"LoRA {method.upper()} with trl + peft (local or SageMaker).")
    parser.add_argument("--config", type=Path, default=_config_channel(),
                        help="JSON {'train': <recipe train section>, 'run_key': str} "
                             "(SageMaker: the 'config' channel).")
    parser.add_argument("--model-dir", type=Path, default=_channel("model"),
                        help="Base model folder (transformers format).")
    parser.add_argument("--data", type=Path, default=_channel("train"),
                        help="Training JSONL (file or folder).")
    parser.add_argument("--eval-data", type=Path, default=_channel("eval"), help="Eval JSONL (optional).")
    parser.add_argument("--init-adapter", type=Path, default=_channel("adapter"),
                        help="Adapter to continue from (the SFT adapter for DPO, or last week's).")
    parser.add_argument("--output-dir", type=Path, default=output_default,
                        help="Where the adapter and metrics.json are written.")
    parser.add_argument("--checkpoint-dir", type=Path, default=checkpoint_default,
                        help="Checkpoints, resumed from after a crash (default: <output-dir>-checkpoints).")
    args = parser.parse_args(argv)
    for name in ("config", "model_dir", "data"):
        if getattr(args, name) is None:
            parser.error(f"--{name.replace('_', '-')} is required")
    if args.checkpoint_dir is None:
        # A sibling, not a child: the output folder holds only what is published (adapter + metrics).
        args.checkpoint_dir = args.output_dir.parent / f"{args.output_dir.name}-checkpoints"
    return args


def start(method: str, argv: list[str] | None = None) -> tuple[argparse.Namespace, dict[str, Any], str]:
    """The arguments, the recipe's train section and the run key, checked before any heavy import."""
    args = parse_args(method, argv)
    config = load_config(args.config)
    train = config["train"]
    check_lora(train)
    check_quantization(train)
    return args, train, config["run_key"]


def seed_everything(train: dict[str, Any]) -> None:
    import torch
    from transformers import set_seed

    set_seed(train["seed"])
    torch.use_deterministic_algorithms(True, warn_only=True)


def trainer_arguments(args: argparse.Namespace, train: dict[str, Any], opt: dict[str, Any]) -> dict[str, Any]:
    """What SFT's and DPO's trl configs share: the schedule, checkpoints, logging, device and precision."""
    import torch

    return dict(
        output_dir=str(args.checkpoint_dir), seed=train["seed"], data_seed=train["seed"],
        learning_rate=opt["learning_rate"], lr_scheduler_type=opt["scheduler"], warmup_steps=warmup_steps(opt),
        num_train_epochs=opt["epochs"], max_steps=opt["max_steps"], per_device_train_batch_size=opt["batch_size"],
        gradient_accumulation_steps=opt["gradient_accumulation"], max_length=opt["max_seq_len"],
        save_strategy="steps", save_steps=train["save_steps"], save_total_limit=2, logging_steps=1, report_to=[],
        use_cpu=not torch.cuda.is_available(), dataloader_num_workers=0,
        include_num_input_tokens_seen="non_padding",
        activation_checkpointing=train.get("gradient_checkpointing", False), **precision_kwargs(train))


def timed_training(trainer: Any, resume: Path | None) -> dict[str, Any]:
    """Train (on from ``resume`` when given) and return what metrics.json says of any run."""
    start_s, cpu_start_s = time.perf_counter(), time.process_time()
    result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    return {"train_runtime_s": time.perf_counter() - start_s, "train_cpu_s": time.process_time() - cpu_start_s,
            "global_step": trainer.state.global_step, "resumed_from": resume.name if resume else None,
            "train_loss": result.training_loss,
            "tokens_seen": int(getattr(trainer.state, "num_input_tokens_seen", 0) or 0)}


def _env_path(name: str) -> Path | None:
    value = os.environ.get(name)
    return Path(value) if value else None


def _sm_input_dir() -> Path:
    return Path(os.environ.get("SM_INPUT_DIR", "/opt/ml/input"))


def _on_sagemaker() -> bool:
    return bool(os.environ.get("SM_MODEL_DIR") or os.environ.get("TRAINING_JOB_NAME")
                or (_sm_input_dir() / "config" / "inputdataconfig.json").exists())


def _channel(name: str) -> Path | None:
    """The SageMaker input channel ``name``: SM_CHANNEL_<NAME>, else its standard folder if present."""
    explicit = _env_path(f"SM_CHANNEL_{name.upper()}")
    if explicit is not None:
        return explicit
    folder = _sm_input_dir() / "data" / name
    return folder if folder.is_dir() else None


def _config_channel() -> Path | None:
    folder = _channel("config")
    if folder is None:
        return None
    return folder / "config.json" if folder.is_dir() else folder


def load_config(path: Path) -> dict[str, Any]:
    config = json.loads(path.read_text())
    missing = {"train", "run_key"} - set(config)
    if missing:
        raise SystemExit(f"{path} lacks {sorted(missing)}: "
                         "expected {'train': <TrainConfig>, 'run_key': str}")
    return config


def jsonl_rows(path: Path) -> list[dict[str, Any]]:
    files = sorted(path.glob("*.jsonl")) if path.is_dir() else [path]
    rows = []
    for file in files:
        with open(file, encoding="utf-8") as handle:
            rows.extend(json.loads(line) for line in handle if line.strip())
    return rows


def check_lora(train: dict[str, Any]) -> None:
    lora = train["lora"]
    ratio = lora["alpha"] / lora["r"]
    if not 0.5 <= ratio <= 4:
        warnings.warn(f"LoRA alpha/r = {lora['alpha']}/{lora['r']} = {ratio:g} is unusual (1-2 is typical); "
                      "the effective learning rate scales with it", stacklevel=2)


def check_quantization(train: dict[str, Any]) -> None:
    """Refuse QLoRA without CUDA before anything heavy is loaded."""
    import torch

    if train["quantization"] == "4bit" and not torch.cuda.is_available():
        raise SystemExit("QLoRA (train.quantization=4bit) needs a CUDA GPU: bitsandbytes 4-bit kernels do "
                         "not run on CPU. Use train.quantization=none here, or train.backend=sagemaker.")


def precision_kwargs(train: dict[str, Any]) -> dict[str, Any]:
    import torch

    precision = train["precision"]
    if precision != "fp32" and not torch.cuda.is_available():
        warnings.warn(f"precision {precision} asked for without CUDA; training in fp32", stacklevel=2)
        return {}
    return {"bf16": precision == "bf16", "fp16": precision == "fp16"}


def warmup_steps(opt: dict[str, Any]) -> float:
    """``warmup_steps`` for the trainer: the recipe's share of the steps (a value below 1 is a share),
    except that warmup never takes every step. With max_steps=1 and any warmup the only step would
    run at learning rate 0 and the "trained" adapter would be its initialization."""
    ratio, max_steps = opt["warmup_ratio"], opt["max_steps"]
    if max_steps > 0 and math.ceil(ratio * max_steps) >= max_steps:
        return 0
    return ratio


def load_base(model_dir: Path, train: dict[str, Any]):
    """The base model (4-bit for QLoRA, which needs CUDA) and its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_quantization(train)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=train["trust_remote_code"])
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    kwargs: dict[str, Any] = {"trust_remote_code": train["trust_remote_code"]}
    if train["quantization"] == "4bit":
        from peft import prepare_model_for_kbit_training
        from transformers import BitsAndBytesConfig

        compute = torch.bfloat16 if train["precision"] == "bf16" else torch.float16
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute)
        model = AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=train.get("gradient_checkpointing", False))
    else:
        dtype = torch.float32
        if torch.cuda.is_available() and train["precision"] == "bf16":
            dtype = torch.bfloat16
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, **kwargs)
    return model, tokenizer


def lora_config(train: dict[str, Any]):
    from peft import LoraConfig

    lora = train["lora"]
    return LoraConfig(r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
                      target_modules=list(lora["target_modules"]), task_type="CAUSAL_LM", bias="none")


@contextmanager
def completion_positions_only_on_cpu() -> Iterator[None]:
    """Let trl's fused LM head score only the positions that have a label, on CPU too.

    trl 1.16's SFT loss projects hidden states through the LM head in tiles. On CUDA (Triton) it
    projects only the positions whose label is not -100; elsewhere it projects every position,
    prompt and padding included, and projects them again in the backward pass, which on CPU makes a
    step ~25% slower than transformers' own loss. Projecting only the labelled positions gives the
    same loss and gradients (the others are zeroed anyway; checked in the tests) and needs no
    Triton: trl's torch tiles take any number of rows. The switch is trl's module-level
    ``_use_triton`` as read by ``add_fused_lm_head`` only (its kernels import their own), and it is
    restored on exit. Absent in another trl version, nothing changes.
    """
    try:
        import trl.trainer.utils as trl_utils
    except ImportError:
        yield
        return
    original = getattr(trl_utils, "_use_triton", None)
    if original is None:
        yield
        return
    trl_utils._use_triton = lambda device: device.type == "cpu" or original(device)
    try:
        yield
    finally:
        trl_utils._use_triton = original


# -- checkpoints -------------------------------------------------------------------------------


def _step(folder: Path) -> int:
    tail = folder.name.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else -1


def _checkpoints(checkpoint_dir: Path) -> list[Path]:
    """checkpoint-N folders, newest step first."""
    if not checkpoint_dir.is_dir():
        return []
    found = [p for p in checkpoint_dir.glob("checkpoint-*") if p.is_dir() and _step(p) >= 0]
    return sorted(found, key=_step, reverse=True)


def checkpoint_problem(folder: Path, run_key: str) -> str | None:
    """Why ``folder`` cannot be resumed by run ``run_key``; None when it is complete and ours."""
    try:
        info = json.loads((folder / COMPLETE_MARKER).read_text())
    except OSError:
        return "no completion marker (the save did not finish)"
    except ValueError:
        return "unreadable completion marker"
    if info.get("run_key") != run_key:
        return f"written by another run ({str(info.get('run_key'))[:16]}...)"
    files: dict[str, int] = info.get("files") or {}
    digests: dict[str, str] = info.get("sha256") or {}
    for name in _REQUIRED_FILES:
        if name not in files:
            return f"{name} is not part of the checkpoint"
    for name, size in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size} bytes, the marker says {size}"
    for name, digest in digests.items():
        if _sha256(folder / name) != digest:
            return f"{name} does not match its sha256"
    try:
        state = json.loads((folder / "trainer_state.json").read_text())
    except ValueError:
        return "unreadable trainer_state.json"
    if state.get("global_step") != info.get("step") or info.get("step") != _step(folder):
        return (f"step mismatch (folder {_step(folder)}, marker {info.get('step')}, "
                f"state {state.get('global_step')})")
    return None


def find_resume_checkpoint(checkpoint_dir: Path, run_key: str) -> Path | None:
    """The newest complete checkpoint of this run; a truncated newest one falls back to the one before.

    A checkpoint counts only when our completion marker, written after the Trainer finished saving
    it, names this run's key and every file still has the size and sha256 the marker recorded:
    another run's checkpoints are never restored.
    """
    for candidate in _checkpoints(checkpoint_dir):
        if checkpoint_problem(candidate, run_key) is None:
            return candidate
    return None


def prepare_checkpoints(checkpoint_dir: Path, run_key: str,
                        log: Callable[[str], None] | None = None) -> Path | None:
    """Pick the checkpoint to resume from and clear everything else that could confuse the Trainer.

    Removed: checkpoints newer than the resume point (the Trainer would rewrite them in place, and a
    crash half-way would leave an old marker next to new files) and checkpoints that are not this
    run's or are incomplete (they would count against ``save_total_limit`` and could push a good
    checkpoint out). Returns the checkpoint to resume from, or None to start fresh.
    """
    log = log or _stderr
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    resume = None
    for folder in _checkpoints(checkpoint_dir):  # newest first
        problem = checkpoint_problem(folder, run_key)
        if problem is None:
            resume = resume or folder  # older complete ones stay: the Trainer's rotation handles them
            continue
        log(f"discarding {folder.name}: {problem}")
        shutil.rmtree(folder, ignore_errors=True)
    if resume is not None:
        log(f"resuming from {resume}")
    return resume


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def mark_checkpoint_complete(folder: Path, run_key: str, step: int) -> None:
    """Write the completion marker of ``folder``: sizes and sha256 of every file, atomically, last."""
    files = {p.name: p.stat().st_size for p in sorted(folder.iterdir())
             if p.is_file() and not p.name.startswith(COMPLETE_MARKER)}
    for name in files:
        _fsync(folder / name)  # the marker must never reach the disk before the files it vouches for
    digests = {name: _sha256(folder / name) for name in files}
    info = {"run_key": run_key, "step": step, "files": files, "sha256": digests}
    tmp = folder / (COMPLETE_MARKER + ".tmp")
    tmp.write_text(json.dumps(info, indent=1))
    _fsync(tmp)
    os.replace(tmp, folder / COMPLETE_MARKER)
    _fsync(folder)


def completion_callback(run_key: str):
    """A TrainerCallback that marks a checkpoint complete once the Trainer has written all of it.

    ``on_save`` runs after ``Trainer._save_checkpoint`` returned: adapter, optimizer, scheduler, RNG
    and trainer state are written, and the older checkpoints beyond ``save_total_limit`` rotated out.
    """
    from transformers import TrainerCallback

    class MarkComplete(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if folder.is_dir() and state.is_world_process_zero:
                mark_checkpoint_complete(folder, run_key, state.global_step)
            return control

    return MarkComplete()


def write_metrics(output_dir: Path, trainer: Any, extra: dict[str, Any]) -> None:
    """``metrics.json``: the Trainer's log history, ``extra``, the device, and on a GPU the peak memory
    PyTorch allocated in this process (since the last ``torch.cuda.reset_peak_memory_stats``)."""
    import torch

    history = [dict(entry) for entry in trainer.state.log_history]
    cuda = torch.cuda.is_available()
    metrics = {"log_history": history, **extra, "device": torch.cuda.get_device_name() if cuda else "cpu",
               "peak_gpu_memory_bytes": torch.cuda.max_memory_allocated() if cuda else None}
    (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))


def publish(output_dir: Path, trainer: Any, metrics: dict[str, Any]) -> None:
    """Write the trained adapter and ``metrics.json`` to ``output_dir``, and nothing else."""
    output_dir.mkdir(parents=True, exist_ok=True)
    trainer.model.save_pretrained(output_dir, safe_serialization=True)
    write_metrics(output_dir, trainer, metrics)
    clean_output(output_dir)


def clean_output(output_dir: Path) -> None:
    """Keep only the adapter and metrics in the output folder (checkpoints live elsewhere)."""
    for name in ("README.md",):
        (output_dir / name).unlink(missing_ok=True)
    for path in output_dir.glob("checkpoint-*"):
        shutil.rmtree(path, ignore_errors=True)


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
