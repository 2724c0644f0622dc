"""Block-sparse and 2:4 GEMMs vs dense at BERT-base shapes; writes the sparse dispatch table.

    python benchmarks/sparse_crossover.py                  # measure, print, write JSON
    python benchmarks/sparse_crossover.py --write-table    # also write this GPU's entries
                                                           # into fastbert/data/sparse_crossover.json
    python benchmarks/sparse_crossover.py --list           # the sweep only (no GPU needed)

Needs a CUDA GPU. **No GPU has run it yet: the table is empty and no sparse GPU number
exists.** For the BERT-base projections (QKV 768->2304, attention output 768->768 with
the residual, FFN up 768->3072 with GELU, FFN down 3072->768 with the residual), fp16
and bf16, 4096 ... 65536 tokens, it times:

- ``dense``: the faster of cuBLAS (``torch.addmm``, then the activation and residual in
  PyTorch) and ``fastbert.ops.linear`` (what ``pruned_linear`` runs when it stays dense);
- ``block``: ``fastbert.kernels.sparse.sparse_forward`` (bias, activation, residual
  fused) at 50/75/90 % block sparsity, block sizes 16/32/64 (random block masks from
  ``fastbert.prune.masks.block_mask``: the pruning API's own pattern);
- ``2:4``: ``torch.sparse.to_sparse_semi_structured`` + ``F.linear`` (50 %), where torch
  supports it on this GPU.

Timing: ``triton.testing.do_bench`` (CUDA events), median, after warm-up and autotuning;
inputs rotate over enough buffers to exceed L2 twice. A sparse path wins only when
faster than dense by more than ``--margin`` (default 5 %). Each point is checked
against the dense result first. Results (GPU, versions, date, timings, achieved
effective TFLOP/s = dense FLOPs / time) go to
``benchmarks/results/sparse_crossover_sm<arch>_<date>.json``; ``--write-table``
replaces this architecture's entries in ``fastbert/data/sparse_crossover.json``, the
table ``fastbert.kernels.sparse_table`` reads.
"""

from __future__ import annotations

import argparse
import sys

import torch

from crossover import add_common_arguments, cuda_target, finish, rotating, time_us

HIDDEN, INTER = 768, 3072
SHAPES = {  # name: (k in, n out, activation, residual)
    "qkv": (HIDDEN, 3 * HIDDEN, None, False),
    "attention.output": (HIDDEN, HIDDEN, None, True),
    "ffn.in": (HIDDEN, INTER, "gelu", False),
    "ffn.out": (INTER, HIDDEN, None, True),
}
TOKENS = [4096, 8192, 16384, 32768, 65536]
SPARSITIES = [0.5, 0.75, 0.9]
BLOCKS = [16, 32, 64]
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def sweep(args) -> list[dict]:
    """Every point to measure: shape x dtype x tokens x (dense-only reference, block configs, 2:4)."""
    points = []
    for dtype in args.dtypes:
        for name in args.shapes:
            for m in args.tokens:
                for block in args.blocks:
                    for sparsity in args.sparsities:
                        points.append({"kind": "block", "dtype": dtype, "shape": name, "m": m, "block": block, "sparsity": sparsity})
                if not args.no_2_4:
                    points.append({"kind": "2:4", "dtype": dtype, "shape": name, "m": m, "block": 0, "sparsity": 0.5})
    return points


class Inputs:
    """Rotating activations (and residuals) for one (shape, tokens, dtype)."""

    def __init__(self, m, k, n, residual, dtype, l2_bytes, seed):
        gen = torch.Generator(device="cuda").manual_seed(seed)
        self.xs = rotating(lambda: torch.randn(m, k, device="cuda", dtype=dtype, generator=gen), m * k * 2, l2_bytes)
        self.rs = [torch.randn(m, n, device="cuda", dtype=dtype, generator=gen) for _ in self.xs] if residual else None
        self.i = 0

    def next(self):
        self.i = (self.i + 1) % len(self.xs)
        return self.xs[self.i], (self.rs[self.i] if self.rs is not None else None)


def pruned_weight(n, k, dtype, kind, block, sparsity, seed):
    from fastbert.prune.masks import block_mask, two_four_mask

    gen = torch.Generator(device="cuda").manual_seed(seed)
    w = torch.randn(n, k, device="cuda", dtype=torch.float32, generator=gen) / k**0.5
    keep = two_four_mask(w.abs()) if kind == "2:4" else block_mask(torch.rand(n, k, device="cuda", generator=gen), sparsity, block)
    return (w * keep).to(dtype)


def measure_dense(inputs: Inputs, w, b, act) -> dict:
    """Both dense paths; the faster is the baseline a sparse path must beat."""
    from fastbert.ops.linear import ACTIVATIONS, linear

    torch_act = ACTIVATIONS[act] if act else None

    def cublas():
        x, r = inputs.next()
        y = torch.addmm(b, x, w.t())
        y = torch_act(y) if torch_act else y
        return y if r is None else y + r

    def fastbert_dense():
        x, r = inputs.next()
        y = linear(x, w, b, act)
        return y if r is None else y + r

    times = {"cublas_us": time_us(cublas), "fastbert_dense_us": time_us(fastbert_dense)}
    return times | {"dense_us": min(times.values())}


def measure_point(p: dict, inputs: Inputs, w, b, act, dense_ref) -> float:
    from fastbert.kernels.sparse import BlockSparseWeight, sparse_forward
    from fastbert.ops.sparse_linear import semi_structured_linear, to_semi_structured

    if p["kind"] == "block":
        sw = BlockSparseWeight.from_dense(w, p["block"])
        p["measured_sparsity"] = round(sw.block_sparsity, 4)

        def run():
            x, r = inputs.next()
            return sparse_forward(x, sw, b, act, r)[0]
    else:
        w24 = to_semi_structured(w)  # ValueError where unsupported: recorded by the caller
        p["measured_sparsity"] = 0.5

        def run():
            x, r = inputs.next()
            return semi_structured_linear(x, w24, b, act, r)

    inputs.i = 0
    out = run().float()
    err = ((out - dense_ref).norm() / dense_ref.norm()).item()
    if not err < 2e-2:
        raise RuntimeError(f"{p['kind']} disagrees with dense at {p}: rel err {err}")
    return time_us(run)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--sparsities", nargs="+", type=float, default=SPARSITIES)
    parser.add_argument("--blocks", nargs="+", type=int, default=BLOCKS, choices=BLOCKS)
    parser.add_argument("--no-2-4", action="store_true", help="skip the 2:4 semi-structured path")
    add_common_arguments(parser, "sparse_crossover", DTYPES, TOKENS, margin=0.05, wins="a sparse path")
    args = parser.parse_args(argv)

    points = sweep(args)
    if args.list:
        for p in points:
            print(" ".join(f"{k}={v}" for k, v in p.items()))
        print(f"{len(points)} points")
        return 0
    device, arch, l2_bytes = cuda_target("sparse_crossover")
    rows, entries, dense_cache = [], [], {}
    for p in points:
        k, n, act, residual = SHAPES[p["shape"]]
        dtype, m = DTYPES[p["dtype"]], p["m"]
        seed = k + n + p["block"] + int(100 * p["sparsity"])  # the same mask at every token count
        inputs = Inputs(m, k, n, residual, dtype, l2_bytes, seed=m + k + n)
        w = pruned_weight(n, k, dtype, p["kind"], p["block"], p["sparsity"], seed)
        b = torch.randn(n, device="cuda", dtype=dtype)
        # The dense baseline does not depend on the mask: time it once per (dtype, shape, tokens).
        key = (p["dtype"], p["shape"], m)
        if key not in dense_cache:
            dense_cache[key] = measure_dense(inputs, w, b, act)
        row = dict(p, n=n, k=k, activation=act or "none", residual=residual, **dense_cache[key])
        x0, r0 = inputs.xs[0], (inputs.rs[0] if inputs.rs else None)
        dense_ref = torch.addmm(b.float(), x0.float(), w.float().t())
        if act:
            from fastbert.ops.linear import ACTIVATIONS

            dense_ref = ACTIVATIONS[act](dense_ref)
        if r0 is not None:
            dense_ref = dense_ref + r0.float()
        try:
            row["sparse_us"] = round(measure_point(row, inputs, w, b, act, dense_ref), 3)
        except ValueError as e:  # 2:4 not supported by this torch/GPU: recorded, never a table entry
            row["skipped"] = str(e)
            print(f"{p} skipped: {e}", flush=True)
            rows.append(row)
            continue
        flops = 2.0 * m * k * n
        row["sparse_wins"] = row["sparse_us"] < row["dense_us"] * (1 - args.margin)
        row["speedup"] = round(row["dense_us"] / row["sparse_us"], 3)
        row["sparse_eff_tflops"] = round(flops / row["sparse_us"] / 1e6, 2)
        row["dense_tflops"] = round(flops / row["dense_us"] / 1e6, 2)
        rows.append(row)
        entries.append({
            "kind": p["kind"], "dtype": p["dtype"], "m": m, "n": n, "k": k, "block": p["block"],
            "sparsity": row["measured_sparsity"], "sparse_us": row["sparse_us"], "dense_us": round(row["dense_us"], 3),
            "sparse_wins": row["sparse_wins"],
        })  # fmt: skip
        print(f"{p['dtype']} {p['shape']:<16} m={m:<6} {p['kind']:<5} B={p['block']:<2} s={p['sparsity']:.2f} "
              f"sparse {row['sparse_us']:9.1f} us  dense {row['dense_us']:9.1f} us  x{row['speedup']:.2f}"
              f"{'  WIN' if row['sparse_wins'] else ''}", flush=True)  # fmt: skip
    finish("sparse_crossover", args, device, arch, rows, entries,
           dense="min(cuBLAS addmm + torch epilogue, fastbert.ops.linear)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
