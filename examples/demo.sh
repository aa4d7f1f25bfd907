#!/usr/bin/env bash
# Serve the synthetic teacher on loopback for the length of the pipeline, then run it.
#   bash examples/demo.sh [extra `pai-distil run` options, e.g. --force]
set -euo pipefail
cd "$(dirname "$0")/.."
export PAI_DISTIL_TEACHER_API_KEY="${PAI_DISTIL_TEACHER_API_KEY:-demo-$RANDOM$RANDOM}"
PORT="${PAI_DISTIL_TEACHER_PORT:-8400}"

pai-distil teacher serve --synthetic --port "$PORT" >/tmp/pai-distil-teacher.log 2>&1 &
teacher=$!
trap 'kill $teacher 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$PORT/health')" 2>/dev/null && break
  kill -0 $teacher 2>/dev/null || { cat /tmp/pai-distil-teacher.log; exit 1; }
  sleep 0.2
done
pai-distil run examples/slow-thinking.yaml "$@"
