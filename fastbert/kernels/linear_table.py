"""Which GEMM path :func:`fastbert.ops.linear` takes per shape: a measured table per architecture.

Two paths compute ``act(x @ weight.T + bias)`` on a GPU:

- ``"triton"``: the fused Triton GEMM (``fastbert.kernels.linear``), bias and activation
  in its epilogue: one kernel, one write of the output.
- ``"cublas"``: ``torch.addmm`` (cuBLAS, bias in cuBLAS's own epilogue), then, when
  there is an activation, one elementwise Triton epilogue kernel.

The choice is **measured, not guessed**: ``benchmarks/linear_crossover.py --write-table``
times both paths on a GPU at BERT shapes and writes that GPU architecture's entries into
``fastbert/data/linear_crossover.json`` (read here as :data:`TABLE`). **The table is
empty until a GPU run fills it**; with no entry for a shape (and always in the
interpreter, and for architectures not in the table) the fused Triton GEMM is used. No
number in it was estimated: every entry comes from a run of the benchmark, whose full
results (GPU, versions, date) go to ``benchmarks/results/``.

Lookup: entries are keyed by dtype, ``n`` (out features), ``k`` (in features) and
activation; among the entries for a key, the one with the smallest measured token
count ``m >= tokens`` decides (the largest measured one beyond the sweep).
"""

from __future__ import annotations

from typing import TypedDict

from fastbert.data.tables import load_table


class Entry(TypedDict):
    """One measured shape: the faster path and both timings (microseconds, median)."""

    dtype: str  # "fp16" | "bf16" | "fp32"
    m: int  # tokens (rows of x)
    n: int  # out features
    k: int  # in features
    activation: str  # canonical activation or "none"
    choice: str  # "triton" | "cublas"
    triton_us: float
    cublas_us: float


CHOICES = ("triton", "cublas")

TABLE: dict[int, list[Entry]] = load_table("linear_crossover", key=int)
"""Measured entries per architecture (80, 90), from ``fastbert/data/linear_crossover.json``."""


def choose(arch: int, m: int, n: int, k: int, dtype: str, activation: str | None, table=None) -> str:
    """``"triton"`` or ``"cublas"`` for a GEMM of ``m`` tokens, ``k`` -> ``n`` features on ``arch``.

    ``arch`` is 80 or 90 (0, the interpreter, has no table); ``table`` defaults to
    :data:`TABLE`. Shapes the table does not cover use the fused Triton GEMM.
    """
    entries = (TABLE if table is None else table).get(arch, [])
    act = activation or "none"
    matching = sorted((e["m"], e["choice"]) for e in entries if (e["dtype"], e["n"], e["k"], e["activation"]) == (dtype, n, k, act))
    if not matching:
        return "triton"
    for measured_m, choice in matching:
        if measured_m >= m:
            return choice
    return matching[-1][1]
