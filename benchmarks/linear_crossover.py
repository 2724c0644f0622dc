"""Fused Triton GEMM vs cuBLAS + epilogue kernel at BERT shapes; writes the dispatch table.

    python benchmarks/linear_crossover.py                  # measure, print, write JSON
    python benchmarks/linear_crossover.py --write-table    # also rewrite the table in
                                                           # fastbert/kernels/linear_table.py
    python benchmarks/linear_crossover.py --list           # the shapes only (no GPU needed)

Needs a CUDA GPU. For every BERT-base and BERT-large linear layer (QKV, attention
output, FFN up with GELU, FFN down) and the GEMM of its input gradient, at
512 ... 65536 tokens, in fp16 and bf16, it times two paths on the same inputs:

- ``triton``: ``fastbert.kernels.linear.linear_forward`` (bias and activation fused);
- ``cublas``: ``torch.addmm`` (bias in cuBLAS's epilogue) + the elementwise activation
  kernel ``fastbert.kernels.linear.activation_forward`` when the layer has one.

Timing: ``triton.testing.do_bench`` (CUDA events), median, after warm-up and
autotuning; inputs rotate over enough buffers to exceed L2, so no path runs from a
warm cache. A path wins only by more than ``--margin`` (default 3 %); ties go to the
fused kernel. Results (GPU, versions, date, every timing, achieved TFLOP/s) go to
``benchmarks/results/linear_crossover_sm<arch>_<date>.json``; ``--write-table``
replaces this architecture's entries in ``fastbert.kernels.linear_table.TABLE``
(the table is empty until this script runs on a GPU).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import pprint
import re
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TABLE_FILE = os.path.join(ROOT, "fastbert", "kernels", "linear_table.py")
MODELS = {"bert-base": (768, 3072), "bert-large": (1024, 4096)}
TOKENS = [512 * 2**i for i in range(8)]  # 512 ... 65536
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def layer_shapes(models: list[str]) -> list[tuple[int, int, str | None]]:
    """(k in, n out, activation) of every forward GEMM and input-gradient GEMM, deduplicated."""
    shapes = []
    for name in models:
        hidden, inter = MODELS[name]
        for k, n, act in ((hidden, 3 * hidden, None), (hidden, hidden, None), (hidden, inter, "gelu"), (inter, hidden, None)):
            for shape in ((k, n, act), (n, k, None)):  # the layer, then dX = dY @ W (n -> k, no activation)
                if shape not in shapes:
                    shapes.append(shape)
    return shapes


def rotating(make, nbytes: int, l2_bytes: int) -> list:
    """Enough copies of an input that cycling through them exceeds L2 twice over (2 to 16)."""
    count = min(16, max(2, -(-2 * l2_bytes // max(nbytes, 1))))
    return [make() for _ in range(count)]


def measure(m: int, k: int, n: int, act: str | None, dtype: torch.dtype, l2_bytes: int) -> dict:
    import triton.testing

    from fastbert.kernels.linear import activation_forward, linear_forward

    gen = torch.Generator(device="cuda").manual_seed(m + k + n)
    xs = rotating(lambda: torch.randn(m, k, device="cuda", dtype=dtype, generator=gen), m * k * 2, l2_bytes)
    w = torch.randn(n, k, device="cuda", dtype=dtype, generator=gen) / k**0.5
    b = torch.randn(n, device="cuda", dtype=dtype, generator=gen)
    state = {"i": 0}

    def next_x():
        state["i"] = (state["i"] + 1) % len(xs)
        return xs[state["i"]]

    def fused():
        return linear_forward(next_x(), w, b, act)[0]

    def cublas():
        z = torch.addmm(b, next_x(), w.t())
        return z if act is None else activation_forward(z, act)

    ref = cublas().float()  # both paths compute the same thing (a sanity check, not a numerics test)
    err = ((fused().float() - ref).norm() / ref.norm()).item()
    if not err < 2e-2:
        raise RuntimeError(f"paths disagree at m={m} k={k} n={n} act={act}: rel err {err}")
    times = {}
    for label, fn in (("triton", fused), ("cublas", cublas)):
        fn()  # autotune / cuBLAS heuristics outside the timing
        times[label] = triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median") * 1e3  # microseconds
    flops = 2.0 * m * k * n
    return {
        "m": m, "n": n, "k": k, "activation": act or "none",
        "triton_us": round(times["triton"], 3), "cublas_us": round(times["cublas"], 3),
        "triton_tflops": round(flops / times["triton"] / 1e6, 2), "cublas_tflops": round(flops / times["cublas"] / 1e6, 2),
    }  # fmt: skip


def write_table(arch: int, entries: list[dict]) -> None:
    """Replace ``arch``'s entries in linear_table.py's TABLE block, keeping other architectures."""
    from fastbert.kernels import linear_table

    table = {a: list(rows) for a, rows in linear_table.TABLE.items()}
    table[arch] = entries
    with open(TABLE_FILE) as f:
        source = f.read()
    body = pprint.pformat(table, width=118, sort_dicts=False)
    block = f"TABLE: dict[int, list[Entry]] = {body}\n"
    pattern = re.compile(r"(# BEGIN MEASURED TABLE[^\n]*\n).*?(# END MEASURED TABLE)", re.S)
    if not pattern.search(source):
        raise RuntimeError(f"no BEGIN/END MEASURED TABLE markers in {TABLE_FILE}")
    with open(TABLE_FILE, "w") as f:
        f.write(pattern.sub(lambda mt: mt.group(1) + block + mt.group(2), source))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    parser.add_argument("--tokens", nargs="+", type=int, default=TOKENS)
    parser.add_argument("--margin", type=float, default=0.03, help="cuBLAS must be faster by this fraction to win")
    parser.add_argument("--json", help="output path (default benchmarks/results/linear_crossover_sm<arch>_<date>.json)")
    parser.add_argument("--write-table", action="store_true", help="rewrite this arch's entries in linear_table.py")
    parser.add_argument("--list", action="store_true", help="print the shapes and exit")
    args = parser.parse_args(argv)

    shapes = layer_shapes(args.models)
    if args.list:
        for k, n, act in shapes:
            print(f"{k:>5} -> {n:<5} {act or 'none'}")
        return 0
    if not torch.cuda.is_available():
        print("linear_crossover: needs a CUDA GPU (nothing measured, table unchanged)", file=sys.stderr)
        return 2

    import triton

    from fastbert.kernels import launch

    device = torch.device("cuda")
    arch = launch.arch(device)
    props = torch.cuda.get_device_properties(device)
    l2_bytes = getattr(props, "L2_cache_size", 50 * 2**20)
    entries, rows = [], []
    for dtype_name in args.dtypes:
        for k, n, act in shapes:
            for m in args.tokens:
                row = measure(m, k, n, act, DTYPES[dtype_name], l2_bytes) | {"dtype": dtype_name}
                faster = row["cublas_us"] < row["triton_us"] * (1 - args.margin)
                row["choice"] = "cublas" if faster else "triton"
                rows.append(row)
                entries.append({key: row[key] for key in ("dtype", "m", "n", "k", "activation", "choice", "triton_us", "cublas_us")})
                print(f"{dtype_name} m={m:<6} {k:>5}->{n:<5} {row['activation']:<5} triton {row['triton_us']:9.1f} us "
                      f"({row['triton_tflops']:6.1f} TF/s)  cublas {row['cublas_us']:9.1f} us "
                      f"({row['cublas_tflops']:6.1f} TF/s)  -> {row['choice']}", flush=True)  # fmt: skip
    date = datetime.date.today().isoformat()
    out = args.json or os.path.join(ROOT, "benchmarks", "results", f"linear_crossover_sm{arch}_{date}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    meta = {
        "gpu": torch.cuda.get_device_name(device), "arch": arch, "date": date, "torch": torch.__version__,
        "triton": triton.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
        "margin": args.margin, "timing": "triton.testing.do_bench median, rotating inputs > 2x L2",
    }  # fmt: skip
    with open(out, "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    print(f"wrote {out}")
    if args.write_table:
        write_table(arch, entries)
        print(f"rewrote the sm_{arch} entries of {TABLE_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
