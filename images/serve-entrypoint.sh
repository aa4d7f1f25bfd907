#!/bin/sh
# Start the OpenAI-compatible server of the image's engine on a mounted checkpoint.
set -eu
MODEL_DIR="${MODEL_DIR:-/mnt/model}"
PORT="${PORT:-8000}"
NAME="${SERVED_MODEL_NAME:-$(basename "$MODEL_DIR")}"
PARSER="${REASONING_PARSER:-qwen3}"
LEN="${MAX_MODEL_LEN:-4096}"
ENGINE="${ENGINE:-}"
DTYPE="${DTYPE:-auto}"  # the checkpoint's (training stages save bf16 where they trained in it)
TP="${TENSOR_PARALLEL:-}"  # default: every GPU of the instance
if [ -z "$TP" ]; then
  TP=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
  [ "${TP:-0}" -ge 1 ] 2>/dev/null || TP=1
fi
if [ -z "$ENGINE" ]; then
  if command -v vllm >/dev/null 2>&1; then ENGINE=vllm
  elif python3 -c "import sglang" >/dev/null 2>&1; then ENGINE=sglang
  else echo "pai-distil-serve: neither vllm nor sglang is installed in this image" >&2; exit 2
  fi
fi
[ -f "$MODEL_DIR/config.json" ] || { echo "pai-distil-serve: no checkpoint at $MODEL_DIR (config.json missing)" >&2; exit 2; }
case "$ENGINE" in
  vllm) exec vllm serve "$MODEL_DIR" --served-model-name "$NAME" --host 0.0.0.0 --port "$PORT" \
          --reasoning-parser "$PARSER" --max-model-len "$LEN" \
          --dtype "$DTYPE" --tensor-parallel-size "$TP" "$@" ;;
  sglang) exec python3 -m sglang.launch_server --model-path "$MODEL_DIR" --served-model-name "$NAME" \
          --host 0.0.0.0 --port "$PORT" --reasoning-parser "$PARSER" --context-length "$LEN" \
          --dtype "$DTYPE" --tp-size "$TP" "$@" ;;
  *) echo "pai-distil-serve: ENGINE must be vllm or sglang, not $ENGINE" >&2; exit 2 ;;
esac
