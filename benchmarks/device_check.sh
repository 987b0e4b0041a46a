#!/usr/bin/env bash
# The prepared device check (issue 14): one command, no network, <= ~8 min on one GPU.
#   benchmarks/device_check.sh [DIR] [--smoke] [extra args for benchmarks/device_check.py]
# Writes DIR/device_check.json and DIR/device_check.md (DIR: $OUT, else
# benchmarks/results/device_check). --smoke runs the same code paths on CPU at tiny sizes.
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${OUT:-benchmarks/results/device_check}"
if [[ $# -gt 0 && "$1" != --* ]]; then dir="$1"; shift; fi
py="${PYTHON:-}"
if [[ -z "$py" ]]; then
  if [[ -x .venv/bin/python ]]; then py=.venv/bin/python; else py=python3; fi
fi
export PYTHONUNBUFFERED=1 RAY_USAGE_STATS_ENABLED=0
exec "$py" benchmarks/device_check.py --out "$dir" "$@"
