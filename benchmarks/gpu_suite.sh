#!/usr/bin/env bash
# One GPU measurement run of fastbert, in under eight minutes on an H100/H200.
#
#   benchmarks/gpu_suite.sh OUT_DIR
#
# Installs nothing: uses `python3` from PATH with this checkout on PYTHONPATH. Steps, each
# limited with `timeout` and independent of the others (a failing step does not stop the
# rest); the exit status is 0 only if every step succeeded:
#
#   step            limit  writes (under OUT_DIR)
#   env               40 s  env.txt (nvidia-smi, versions, commit), GPU check (+15 s module check)
#   gpu-tests         90 s  logs/gpu-tests.log       python3 -m pytest tests -m gpu -q
#   compile-check     45 s  compile-check.json       fastbert compile-check --arch 90 (if present)
#   bench            180 s  bench/ (bench.json, bench.csv, PNG)
#   profile           40 s  profile/ (traces, profile.json, roofline.png)
#   pytest-benchmark  55 s  pytest-benchmark.json    pytest benchmarks --benchmark-only
#
# Worst case, every limit reached: 40 + 15 + 90 + 45 + 180 + 40 + 55 s + 2 s grace per step = 475 s.
#
# Why `bench --quick --time-budget 125` and not the full default sweep: the default GPU sweep
# (bert-base + bert-large x batch 1..256 x seq 128/512 x fp16/bf16 x fixed/varlen = 80
# configurations x 5 variants) is estimated conservatively at 15-25 minutes, dominated by
# torch.compile (about 30-70 s per compilation; each compiled model compiles a static graph,
# then a dynamic one, and batch 1 separately) and by bert-large's large batches. --quick
# (bert-base, batch 1 32 128, seq 128 512 + varlen, fp16 and bf16: 24 configurations) is the
# part that fits; --time-budget stops starting configurations after 125 s so the step ends
# inside its limit, and any configuration left is recorded as "skipped" in bench.json.
# Run the full sweep separately with `python3 -m fastbert.cli bench --out DIR`.

set -u

if [ $# -ne 1 ]; then
    echo "usage: $0 OUT_DIR" >&2
    exit 2
fi
OUT="$1"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="$REPO:${PYTHONPATH:-}"
mkdir -p "$OUT/logs"
OUT="$(cd "$OUT" && pwd)"
cd "$REPO"

FAILED=()
printf 'step\texit\tseconds\n' > "$OUT/steps.tsv"

# run_step NAME LIMIT_SECONDS COMMAND...: run with a time limit, log to logs/NAME.log.
run_step() {
    local name="$1" limit="$2"
    shift 2
    local start=$SECONDS
    echo "== $name (limit ${limit}s)"
    timeout --kill-after=2 "$limit" "$@" > "$OUT/logs/$name.log" 2>&1
    local rc=$?
    local took=$((SECONDS - start))
    printf '%s\t%s\t%s\n' "$name" "$rc" "$took" >> "$OUT/steps.tsv"
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        echo "   timed out after ${took}s"
        FAILED+=("$name")
    elif [ "$rc" -ne 0 ]; then
        echo "   failed (exit $rc) after ${took}s"
        FAILED+=("$name")
    else
        echo "   ok in ${took}s"
    fi
    tail -n 5 "$OUT/logs/$name.log" | sed 's/^/   | /'
}

# env: what this run measured on (each command time-limited; failures noted, not fatal).
{
    echo "date_utc: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "commit: $(git -C "$REPO" rev-parse HEAD 2>/dev/null || echo unknown)"
    echo "modified tracked files: $(git -C "$REPO" status --porcelain --untracked-files=no 2>/dev/null | wc -l)"
    echo
    timeout 5 nvidia-smi || echo "nvidia-smi failed or is missing"
    timeout 5 nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem,power.limit \
        --format=csv || true
    echo
    timeout 15 python3 -c '
import platform
print("python", platform.python_version())
for name in ("torch", "triton", "transformers", "numpy", "matplotlib", "pytest", "pytest_benchmark", "fastbert"):
    try:
        module = __import__(name)
        print(name, getattr(module, "__version__", "?"), getattr(module, "__file__", ""))
    except Exception as exc:
        print(name, "not importable:", exc)
import torch
print("cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("gpu", torch.cuda.get_device_name(), torch.cuda.get_device_capability())
' || echo "python3 version probe failed"
} > "$OUT/env.txt" 2>&1
echo "== env: $OUT/env.txt"

# Without a GPU the numbers would be CPU numbers: refuse, unless dry-running the script
# itself (FASTBERT_SUITE_ALLOW_CPU=1, small CPU shapes; results say measured_on_gpu false).
PROFILE_ARGS=(--arch bert-base --batch 32 --seq-len 128 --dtype fp16)
if ! timeout 15 python3 -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
    if [ "${FASTBERT_SUITE_ALLOW_CPU:-0}" != "1" ]; then
        echo "no CUDA GPU visible to torch: this suite measures GPUs (FASTBERT_SUITE_ALLOW_CPU=1 dry-runs it on the CPU)" >&2
        exit 2
    fi
    echo "== dry run on the CPU: these are NOT GPU results"
    PROFILE_ARGS=(--arch bert-tiny --dtype fp32)
fi

run_step gpu-tests 90 python3 -m pytest tests -m gpu -q -p no:cacheprovider

if timeout 15 python3 -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('fastbert.kernels.compile_check') is None)"; then
    # The module directly: `fastbert compile-check --json X` currently rejects its options
    # (argparse REMAINDER in fastbert/cli.py); `python3 -m fastbert.kernels.compile_check` is the same program.
    # sm_90 only (the GPU's own architecture; both archs took 351 s on 2 busy CPU cores, ~half that is sm_90).
    run_step compile-check 45 python3 -m fastbert.kernels.compile_check --arch 90 --json "$OUT/compile-check.json"
else
    echo "== compile-check: not present in this checkout, skipped"
    printf 'compile-check\tskipped\t0\n' >> "$OUT/steps.tsv"
fi

run_step bench 180 python3 -m fastbert.cli bench --quick --time-budget 125 --warmup 3 \
    --max-time-per-variant 0.5 --out "$OUT/bench"

run_step profile 40 python3 -m fastbert.cli profile "${PROFILE_ARGS[@]}" --compare hf --out "$OUT/profile"

run_step pytest-benchmark 55 python3 -m pytest benchmarks --benchmark-only -q -p no:cacheprovider \
    --benchmark-json "$OUT/pytest-benchmark.json"

echo
column -t "$OUT/steps.tsv" 2>/dev/null || cat "$OUT/steps.tsv"
if [ ${#FAILED[@]} -gt 0 ]; then
    echo "FAILED steps: ${FAILED[*]} (logs in $OUT/logs)"
    exit 1
fi
echo "all steps passed; results in $OUT"
