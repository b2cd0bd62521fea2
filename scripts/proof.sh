#!/usr/bin/env bash
# The proof suite (tests/proof) of "no file or code can crash training, every command runs at most once".
# Long mode by default (the nightly run: >= 10,000 fuzzed files, 30 kill -9 cycles, a 10 min soak; ~25 min on 2
# cores); BIDVIZ_PROOF=short runs CI's figures. Prints the figures as a Markdown table (docs/reliability.md's) and
# keeps them as JSON lines in $BIDVIZ_PROOF_REPORT (default: proof-<mode>-<date>.jsonl in the current directory).
# Extra arguments go to pytest.
set -euo pipefail
here="$(pwd)"
cd "$(dirname "$0")/.."
export BIDVIZ_PROOF="${BIDVIZ_PROOF:-long}" PYTHONUNBUFFERED=1
export BIDVIZ_PROOF_REPORT="${BIDVIZ_PROOF_REPORT:-$here/proof-$BIDVIZ_PROOF-$(date -u +%Y%m%dT%H%M%SZ).jsonl}"
PY="${PYTHON:-python3}"
: > "$BIDVIZ_PROOF_REPORT"
start=$(date +%s)
status=0
"$PY" -m pytest -q tests/proof -p no:cacheprovider -o timeout=3600 "$@" || status=$?
took=$(( $(date +%s) - start ))
"$PY" - "$BIDVIZ_PROOF_REPORT" "$took" <<'PY'
import json, os, platform, sys, time

rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
print(f"\n{time.strftime('%Y-%m-%d', time.gmtime())}, {os.cpu_count()} cores, {platform.python_version()}, "
      f"BIDVIZ_PROOF={os.environ['BIDVIZ_PROOF']} scripts/proof.sh: {sys.argv[2]} s\n")
print("| part | tried | answered | lost | double-applied | crashed | seconds | notes |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
for r in rows:
    notes = ", ".join(f"{k} {v}" for k, v in r["notes"].items())
    print(f"| {r['part']} | {r['tried']} | {r['answered']} | {r['lost']} | {r['double']} | {r['crashed']} "
          f"| {r['seconds']:.0f} | {notes} |")
PY
exit "$status"
