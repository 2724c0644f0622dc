"""fastbert's fused residual-add + LayerNorm and its GELU kernel in GB/s, against a device-to-device copy.

    python benchmarks/elementwise_microbench.py --json elementwise.json           # on a GPU
    python benchmarks/elementwise_microbench.py --json elementwise.json --tiny    # dry run (CPU)

These kernels are memory-bound: the ceiling is how fast the GPU moves bytes, measured
here as ``dst.copy_(src)`` on a tensor of the same size (bytes read + bytes written).
Per (tokens, hidden) shape, fp16 by default:

- ``copy``: ``dst.copy_(src)``: 2 x tensor bytes;
- ``add_layernorm``: ``fastbert.ops.add_layernorm(x, residual, weight, bias)``, one
  kernel: reads x and residual, writes y (3 x tensor bytes; the weight and bias rows
  are counted too), against PyTorch's ``layer_norm(x + residual)`` (two kernels) with
  the same byte count, so its GB/s shows the cost of the extra pass;
- ``gelu``: ``fastbert.kernels.activations.activation_forward(z, "gelu")``: reads z,
  writes the output (2 x tensor bytes), against ``torch.nn.functional.gelu``.

GB/s = counted bytes / median time (``triton.testing.do_bench``; each tensor is over
100 MB, above L2). Each fastbert output is checked against PyTorch first (relative
error over 1e-2 marks the row failed; the script then exits 1).
"""

from __future__ import annotations

import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import microbench  # noqa: E402  (beside this file)

SHAPES = [(65536, 768), (65536, 1024), (16384, 4096)]  # (tokens, hidden): BERT-base, BERT-large, FFN width
TINY_SHAPES = [(64, 96), (33, 768)]
TOLERANCE = 1e-2


def cases(tokens: int, hidden: int, dtype: torch.dtype, dev: torch.device) -> dict[str, dict]:
    """Per op: fastbert and PyTorch callables on the same random inputs, and the bytes they must move."""
    import fastbert
    from fastbert.kernels.activations import activation_forward

    gen = torch.Generator(device=dev).manual_seed(tokens + hidden)
    x, residual, z = (torch.randn(tokens, hidden, device=dev, dtype=dtype, generator=gen) for _ in range(3))
    weight, bias = (torch.randn(hidden, device=dev, dtype=dtype, generator=gen) for _ in range(2))
    dst = torch.empty_like(x)
    size = x.numel() * x.element_size()
    row = hidden * x.element_size()
    return {
        "copy": {"bytes": 2 * size, "fastbert": None, "torch": lambda: dst.copy_(x)},
        "add_layernorm": {
            "bytes": 3 * size + 2 * row,
            "fastbert": lambda: fastbert.ops.add_layernorm(x, residual, weight, bias, 1e-12),
            "torch": lambda: F.layer_norm(x + residual, (hidden,), weight, bias, 1e-12),
        },
        "gelu": {"bytes": 2 * size, "fastbert": lambda: activation_forward(z, "gelu"), "torch": lambda: F.gelu(z)},
    }


def measure(shape: tuple[int, int], dtype_name: str, dev: torch.device) -> list[dict]:
    """LayerNorm and GELU at one shape: GB/s of each side and of the copy, after checking they agree."""
    tokens, hidden = shape
    ops = cases(tokens, hidden, microbench.DTYPES[dtype_name], dev)
    copy = {"bytes": ops["copy"]["bytes"]}
    microbench.time_sides(copy, {"copy": ops["copy"]["torch"]}, dev, copy["bytes"] / 1e9, "gbps")
    rows = []
    for name in ("add_layernorm", "gelu"):
        op = ops[name]
        err = microbench.rel_err(op["fastbert"](), op["torch"]())
        row = {"op": name, "tokens": tokens, "hidden": hidden, "dtype": dtype_name, "bytes": op["bytes"], "rel_err": err,
               "agrees": err < TOLERANCE, "copy_ms": copy["copy_ms"], "copy_gbps": copy["copy_gbps"]}  # fmt: skip
        microbench.time_sides(row, {side: op[side] for side in ("fastbert", "torch")}, dev, op["bytes"] / 1e9, "gbps")
        row["fastbert_of_copy"] = microbench.sig(row["fastbert_gbps"] / row["copy_gbps"], 3)
        rows.append(row)
    return rows


def describe(row: dict) -> str:
    """One printed line per row."""
    return (f"{row['dtype']} {row['op']:<13} {row['tokens']}x{row['hidden']}: fastbert {row['fastbert_gbps']:8.4g} GB/s  "
            f"torch {row['torch_gbps']:8.4g} GB/s  copy {row['copy_gbps']:8.4g} GB/s  ({row['fastbert_of_copy']:.0%} of copy)")


def main(argv: list[str] | None = None) -> int:
    return microbench.run(argv, __doc__.splitlines()[0], SHAPES, TINY_SHAPES, measure, describe,
                          bytes_counted="add_layernorm 3 x tensor + 2 rows; gelu and copy 2 x tensor",
                          ceiling="dst.copy_(src), bytes read + written")


if __name__ == "__main__":
    sys.exit(main())
