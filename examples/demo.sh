#!/usr/bin/env bash
# Serve the synthetic teacher on loopback for the length of the pipeline, then run it.
#   bash examples/demo.sh [extra `pai-distil run` options, e.g. --force]
# The teacher listens on 127.0.0.1:8400, or on $PAI_DISTIL_TEACHER_PORT; a port that something else
# holds is refused (the pipeline must not talk to a stranger). Its log and the pipeline as run (with
# that port) live under the pai-distil home ($PAI_DISTIL_HOME, else ~/.pai-distil), in demo/.
set -euo pipefail
cd "$(dirname "$0")/.."
export PAI_DISTIL_TEACHER_API_KEY="${PAI_DISTIL_TEACHER_API_KEY:-demo-$RANDOM$RANDOM}"
PORT="${PAI_DISTIL_TEACHER_PORT:-8400}"
DEMO="${PAI_DISTIL_HOME:-$HOME/.pai-distil}/demo"
mkdir -p "$DEMO"
LOG="$DEMO/teacher.log"

python3 - "$PORT" <<'EOF'
import socket, sys
port = sys.argv[1]
with socket.socket() as s:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the teacher binds it
    try:
        s.bind(("127.0.0.1", int(port)))
    except (OSError, ValueError, OverflowError) as e:
        sys.exit(f"error: cannot serve the teacher on 127.0.0.1:{port} ({getattr(e, 'strerror', None) or e}); "
                 "stop what holds the port, or set PAI_DISTIL_TEACHER_PORT to a free one")
EOF

sed "s#http://127.0.0.1:8400/v1#http://127.0.0.1:$PORT/v1#" examples/slow-thinking.yaml > "$DEMO/slow-thinking.yaml"
pai-distil teacher serve --synthetic --port "$PORT" >"$LOG" 2>&1 &
teacher=$!
trap 'kill $teacher 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  # ours must still run: a server that took the port meanwhile would answer the probe too
  kill -0 $teacher 2>/dev/null || { cat "$LOG" >&2; exit 1; }
  python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$PORT/health')" 2>/dev/null && break
  sleep 0.2
done
kill -0 $teacher 2>/dev/null || { cat "$LOG" >&2; exit 1; }
echo "teacher at http://127.0.0.1:$PORT/v1 (log: $LOG)"
pai-distil run "$DEMO/slow-thinking.yaml" "$@"
