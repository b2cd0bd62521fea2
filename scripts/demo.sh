#!/usr/bin/env bash
# The demo: installs BIDViz, trains the digits example in a new run under runs/ (runs/digits-1, then digits-2, ...),
# and serves TensorBoard with the BIDViz tab on 127.0.0.1, and `bidviz serve` (the live page) beside it. Both keep
# serving after training ends (stopped from the tab or with `bidviz stop`), so the run stays there to look at; Ctrl-C
# stops them. PORT (default 6006), SERVE_PORT (default PORT + 1) and LOGDIR (default runs) can be set in the
# environment (INSTALL=0 skips the install);
# arguments go to the example (e.g. `bash scripts/demo.sh --resume runs/digits-1` continues that run).
set -euo pipefail
cd "$(dirname "$0")/.."
PORT="${PORT:-6006}"
SERVE_PORT="${SERVE_PORT:-$((PORT + 1))}"
LOGDIR="${LOGDIR:-runs}"
PY="${PYTHON:-python3}"

if [ "${INSTALL:-1}" != 0 ]; then
  "$PY" -m pip install -q -c constraints.txt -e ".[examples,server]"
fi

mkdir -p "$LOGDIR"
TBLOG="${TMPDIR:-/tmp}/bidviz-demo-tensorboard.log"
SERVELOG="${TMPDIR:-/tmp}/bidviz-demo-serve.log"
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

"$PY" -m tensorboard.main --logdir "$LOGDIR" --host 127.0.0.1 --port "$PORT" >"$TBLOG" 2>&1 &
pids+=($!)
"$PY" -m bidviz serve --logdir "$LOGDIR" --host 127.0.0.1 --port "$SERVE_PORT" >"$SERVELOG" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
  if "$PY" -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$PORT/', timeout=1)" 2>/dev/null; then
    break
  fi
  sleep 0.3
done
echo "BIDViz tab in TensorBoard: http://127.0.0.1:$PORT/#bidviz   (TensorBoard's log: $TBLOG)"
echo "The live page (bidviz serve):    http://127.0.0.1:$SERVE_PORT/   (its log: $SERVELOG)"
echo "Open either to change lr, add metrics, query the model and stop the run; or use the bidviz commands below."

"$PY" examples/train_torch.py --logdir "$LOGDIR" "$@" &
pids+=($!)
status=0
wait "${pids[2]}" || status=$?
echo
echo "Training ended (exit status $status). TensorBoard keeps serving the run: http://127.0.0.1:$PORT/#bidviz"
echo "and so does the live page: http://127.0.0.1:$SERVE_PORT/"
echo "Start another run beside it (in another terminal): $PY examples/train_torch.py --logdir $LOGDIR"
echo "Ctrl-C stops TensorBoard and the live page."
wait "${pids[0]}"
