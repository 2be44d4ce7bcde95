#!/usr/bin/env bash
# The prepared GPU check: on one H200 in at most 8 minutes, the gpu-marked tests, the attention bench at
# 16k-64k (FlexHeadFA where pip installs it), and mini-Sigma vs GQA pretraining at 100x the CPU token
# budget with loss curves, all under one folder (benchmarks/gpu_check.py says what each phase does).
#   scripts/gpu-check.sh [--out DIR] [--dry-run]      (--dry-run: the same sequence on a CPU at toy sizes)
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# every phase has its own limit inside; this one is the whole run's (8 minutes)
exec timeout 480 python benchmarks/gpu_check.py "$@"
