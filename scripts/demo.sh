#!/usr/bin/env bash
# The demo: installs BIDViz, trains the digits example under runs/, and serves TensorBoard with the BIDViz tab on
# 127.0.0.1.
# Ctrl-C stops both. PORT (default 6006) and LOGDIR (default runs) can be set in the environment.
set -euo pipefail
cd "$(dirname "$0")/.."
PORT="${PORT:-6006}"
LOGDIR="${LOGDIR:-runs}"
PY="${PYTHON:-python3}"

"$PY" -m pip install -q -c constraints.txt -e ".[examples]"

mkdir -p "$LOGDIR"
TBLOG="${TMPDIR:-/tmp}/bidviz-demo-tensorboard.log"
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

"$PY" examples/train_torch.py --logdir "$LOGDIR" &
pids+=($!)
"$PY" -m tensorboard.main --logdir "$LOGDIR" --host 127.0.0.1 --port "$PORT" >"$TBLOG" 2>&1 &
pids+=($!)

for _ in $(seq 100); do
  if [ -f "$LOGDIR/digits/.bidviz/state.json" ] && "$PY" -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:$PORT/', timeout=1)" 2>/dev/null; then
    break
  fi
  sleep 0.3
done
echo
echo "BIDViz tab in TensorBoard: http://127.0.0.1:$PORT/#bidviz   (TensorBoard's log: $TBLOG)"
echo "Open it to change lr, add metrics, query the model and stop the run; or use the bidviz commands above."
echo "Ctrl-C stops training and TensorBoard."
wait "${pids[0]}"
