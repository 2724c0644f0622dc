"""Fused Triton GEMM vs cuBLAS + epilogue kernel at BERT shapes; writes the dispatch table.

    python benchmarks/linear_crossover.py                  # measure, print, write JSON
    python benchmarks/linear_crossover.py --write-table    # also write this GPU's entries
                                                           # into fastbert/data/linear_crossover.json
    python benchmarks/linear_crossover.py --list           # the shapes only (no GPU needed)

Needs a CUDA GPU. For every BERT-base and BERT-large linear layer (QKV, attention
output, FFN up with GELU, FFN down) and the GEMM of its input gradient, at
512 ... 65536 tokens, in fp16 and bf16, it times two paths on the same inputs:

- ``triton``: ``fastbert.kernels.linear.linear_forward`` (bias and activation fused);
- ``cublas``: ``torch.addmm`` (bias in cuBLAS's epilogue) + the elementwise activation
  kernel ``fastbert.kernels.activations.activation_forward`` when the layer has one.

Timing: ``triton.testing.do_bench`` (CUDA events), median, after warm-up and
autotuning; inputs rotate over enough buffers to exceed L2, so no path runs from a
warm cache. A path wins only by more than ``--margin`` (default 3 %); ties go to the
fused kernel. Results (GPU, versions, date, every timing, achieved TFLOP/s) go to
``benchmarks/results/linear_crossover_sm<arch>_<date>.json``; ``--write-table``
replaces this architecture's entries in ``fastbert/data/linear_crossover.json``, the
table ``fastbert.kernels.linear_table`` reads (empty until this script runs on a GPU).
"""

from __future__ import annotations

import argparse
import sys

import torch

from crossover import add_common_arguments, cuda_target, finish, rotating, time_us

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


def measure(m: int, k: int, n: int, act: str | None, dtype: torch.dtype, l2_bytes: int) -> dict:
    """Both paths at one shape: microseconds and achieved TFLOP/s."""
    from fastbert.kernels.activations import activation_forward
    from fastbert.kernels.linear import linear_forward

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
    times = {"triton": time_us(fused), "cublas": time_us(cublas)}
    flops = 2.0 * m * k * n
    return {
        "m": m, "n": n, "k": k, "activation": act or "none",
        "triton_us": round(times["triton"], 3), "cublas_us": round(times["cublas"], 3),
        "triton_tflops": round(flops / times["triton"] / 1e6, 2), "cublas_tflops": round(flops / times["cublas"] / 1e6, 2),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    add_common_arguments(parser, "linear_crossover", DTYPES, TOKENS, margin=0.03, wins="cuBLAS")
    args = parser.parse_args(argv)

    shapes = layer_shapes(args.models)
    if args.list:
        for k, n, act in shapes:
            print(f"{k:>5} -> {n:<5} {act or 'none'}")
        return 0
    device, arch, l2_bytes = cuda_target("linear_crossover")
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
    finish("linear_crossover", args, device, arch, rows, entries)
    return 0


if __name__ == "__main__":
    sys.exit(main())
