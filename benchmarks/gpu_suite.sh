#!/usr/bin/env bash
# One GPU measurement run of fastbert, in under nine minutes on an H100/H200:
#
#   benchmarks/gpu_suite.sh OUT_DIR                              # on the GPU machine
#   FASTBERT_SUITE_ALLOW_CPU=1 benchmarks/gpu_suite.sh OUT_DIR   # CPU dry run (tiny shapes, < 2 min; CI runs it)
#
# The steps, their time limits and the files they write are in benchmarks/gpu_suite.py
# (env, gpu-tests, compile-check, attention, elementwise, bench, latency, profile, linear-crossover,
# sparse-crossover). OUT_DIR ends up with at most 8 files: summary.json, a few small JSONs,
# results.tar.gz. Then, here: python benchmarks/ingest_gpu_results.py OUT_DIR.
#
# Installs nothing: uses `python3` from PATH (or $PYTHON) with this checkout on PYTHONPATH.
# (The real-checkpoint tests cannot run there: see benchmarks/gpu_suite.py's docstring.)
set -u
exec "${PYTHON:-python3}" "$(dirname "${BASH_SOURCE[0]}")/gpu_suite.py" "$@"
