#!/usr/bin/env bash
# The training image's contents, checked where no Docker engine runs: what `docker build -f
# infra/sagemaker/Dockerfile .` installs and copies, put in a folder instead of an image, then two jobs run
# as SageMaker runs them, through the image's `train` with only SageMaker's environment (`env -i`): SFT on
# the `model`, `train` and `config` channels, then DPO continuing its adapter (`adapter` channel).
#
#   infra/sagemaker/check_without_docker.sh [WORK_DIR]
#
# Needs python3.11 (the image's python:3.11-slim), a package index for pip, and `make install` (the
# development environment writes the jobs' inputs: the built-in base model's folder and real rows).
# What it cannot check: the Docker engine's own steps, the CUDA build of torch (pip picks the CPU one
# where a CPU build is the only one the index has), and SageMaker itself.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
WORK=${1:-$(mktemp -d -t sagemaker-image-XXXXXX)}
IMAGE=$WORK/image       # the image's filesystem: a virtual environment for its Python, /opt/distillery
OPT_ML=$WORK/opt/ml     # what SageMaker mounts at /opt/ml
echo "image folder: $IMAGE"
cd "$ROOT"

# FROM python:3.11-slim + RUN pip install -r requirements.txt
python3.11 -m venv "$IMAGE/venv"
"$IMAGE/venv/bin/pip" install --quiet --disable-pip-version-check -r "$ROOT/infra/sagemaker/requirements.txt"
# COPY tasks/ /opt/distillery/tasks/ (the build context keeps no caches: Dockerfile.dockerignore)
mkdir -p "$IMAGE/opt/distillery" "$IMAGE/usr/local/bin"
cp -r "$ROOT/tasks" "$IMAGE/opt/distillery/"
find "$IMAGE/opt/distillery" \( -name __pycache__ -o -name '*.pyc' \) -prune -exec rm -rf {} +
# COPY --chmod=755 infra/sagemaker/train /usr/local/bin/train
install -m 755 "$ROOT/infra/sagemaker/train" "$IMAGE/usr/local/bin/train"

# The image's environment (Dockerfile ENV), and nothing of this machine's.
in_image() {
    env -i HOME="$WORK" PATH="$IMAGE/usr/local/bin:$IMAGE/venv/bin:/usr/bin:/bin" \
        PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 \
        PYTHONPATH="$IMAGE/opt/distillery" "$@"
}
# RUN python -c "import ..." (the build's own check)
in_image python -c "import tasks.train.sft, tasks.train.dpo, trl, peft, bitsandbytes"

# The jobs' inputs, as the train stage uploads them: channels under /opt/ml/input/data/<name>.
"$ROOT/.venv/bin/python" - "$OPT_ML/input/data" <<'EOF'
import json, sys
from pathlib import Path

sys.path.insert(0, ".")
from bench.gpu_train import preference_pairs
from bench.train_throughput import ensure_model, load_rows
from tasks.core.recipe import TrainConfig

data = Path(sys.argv[1])
rows = load_rows(8)
(data / "train").mkdir(parents=True)
(data / "train" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
(data / "pairs").mkdir()
(data / "pairs" / "pairs.jsonl").write_text("".join(json.dumps(pair) + "\n" for pair in preference_pairs(rows)))
train = TrainConfig.model_validate({"sft": {"max_steps": 2, "batch_size": 2, "max_seq_len": 256},
                                    "dpo": {"max_steps": 1, "batch_size": 2, "max_seq_len": 256}})
(data / "config").mkdir()
(data / "config" / "config.json").write_text(json.dumps(
    {"train": train.model_dump(mode="json"), "run_key": "check-without-docker"}))
(data / "model").symlink_to(ensure_model(None))
EOF

channels="$OPT_ML/input/data"
echo "--- SFT job"
in_image SM_INPUT_DIR="$OPT_ML/input" SM_CHANNEL_MODEL="$channels/model" SM_CHANNEL_TRAIN="$channels/train" \
    SM_CHANNEL_CONFIG="$channels/config" SM_MODEL_DIR="$OPT_ML/model-sft" \
    SM_CHECKPOINT_DIR="$OPT_ML/checkpoints-sft" TRAINING_JOB_NAME=check-sft train
echo "--- DPO job, continuing the SFT adapter"
in_image SM_INPUT_DIR="$OPT_ML/input" SM_CHANNEL_MODEL="$channels/model" SM_CHANNEL_TRAIN="$channels/pairs" \
    SM_CHANNEL_CONFIG="$channels/config" SM_CHANNEL_ADAPTER="$OPT_ML/model-sft" SM_MODEL_DIR="$OPT_ML/model-dpo" \
    SM_CHECKPOINT_DIR="$OPT_ML/checkpoints-dpo" TRAINING_JOB_NAME=check-dpo DISTILLERY_METHOD=dpo train

for job in sft dpo; do
    test -s "$OPT_ML/model-$job/adapter_model.safetensors"
    in_image python -c "import json, sys; m = json.load(open(sys.argv[1])); \
print(sys.argv[2], 'steps', m['global_step'], 'loss', m['train_loss'], 'device', m['device'])" \
        "$OPT_ML/model-$job/metrics.json" "$job"
done
echo "the image's contents train both methods under SageMaker's conventions"
