#!/usr/bin/env bash
# Run the benchmarks with their defaults, one after the other.
#
#   benchmarks/run_all.sh            # aligned tables
#   benchmarks/run_all.sh --json     # one JSON document per benchmark
#   PYTHON=/path/to/venv/bin/python benchmarks/run_all.sh
#
# Arguments are passed to every benchmark, so only the ones they share make sense
# (--json). Scratch and cached logs go to benchmarks/.work/ (gitignored).
set -euo pipefail

cd "$(dirname "$0")"
python="${PYTHON:-python3}"

for benchmark in append.py replay.py open_after_crash.py latency.py swaps.py idle_gap.py \
    submit.py memory.py prune.py webhooks.py; do
    echo "== ${benchmark}" >&2
    "${python}" "${benchmark}" "$@"
    echo
done
