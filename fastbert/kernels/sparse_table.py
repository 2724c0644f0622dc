"""When a pruned matrix should run sparse: a measured crossover table per GPU architecture.

Two sparse paths can replace the dense GEMM of a pruned weight:

- ``"block"``: the block-sparse Triton kernel (``fastbert.kernels.sparse``), which skips
  the zero ``B x B`` blocks;
- ``"2:4"``: PyTorch's semi-structured sparse tensor-core GEMM (2:4-pruned weights).

Whether either beats the dense GEMM depends on the GPU, shape, dtype, block size,
sparsity and token count, so the choice is **measured, never estimated**:
``benchmarks/sparse_crossover.py`` times each sparse path against dense (the faster of
cuBLAS and fastbert's fused linear) on a GPU and, with ``--write-table``, writes that
architecture's entries into ``fastbert/data/sparse_crossover.json`` (read here as
:data:`TABLE`). **The table is empty: no GPU measurement exists yet.** Without an entry
the answer is ``"dense"``: the default can never be slower than dense.

Lookup (:func:`choose`), deliberately conservative: among entries of the same path,
dtype, ``n``, ``k`` and block size, take the largest measured sparsity not above the
matrix's own (a sparser matrix only gets faster on the sparse path); at that sparsity
the measured token counts bracketing ``m`` (the nearest below and above, or the nearest
one outside the measured range) must **all** have shown the sparse path faster.
"""

from __future__ import annotations

from typing import TypedDict

from fastbert.data.tables import load_table


class Entry(TypedDict):
    """One measured point: both timings (microseconds, median) and whether sparse won."""

    kind: str  # "block" | "2:4"
    dtype: str  # "fp16" | "bf16"
    m: int  # tokens (rows of x)
    n: int  # out features
    k: int  # in features
    block: int  # block size (0 for 2:4)
    sparsity: float  # fraction of blocks (2:4: of weights) removed, as measured
    sparse_us: float
    dense_us: float
    sparse_wins: bool  # sparse faster than dense by the benchmark's margin


KINDS = ("block", "2:4")

TABLE: dict[int, list[Entry]] = load_table("sparse_crossover", key=int)
"""Measured entries per architecture (80, 90), from ``fastbert/data/sparse_crossover.json``."""


def choose(
    arch: int,
    m: int,
    n: int,
    k: int,
    dtype: str,
    block: int,
    sparsity: float,
    kind: str = "block",
    table: dict[int, list[Entry]] | None = None,
) -> str:
    """``kind`` (``"block"`` or ``"2:4"``) when measured faster than dense for this GEMM, else ``"dense"``.

    ``arch`` is 80 or 90 (0, the interpreter, has no table); ``block`` is 0 for 2:4;
    ``table`` defaults to :data:`TABLE`. See the module docstring for the rule.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    entries = [
        e for e in (TABLE if table is None else table).get(arch, [])
        if (e["kind"], e["dtype"], e["n"], e["k"], e["block"]) == (kind, dtype, n, k, block)
    ]  # fmt: skip
    levels = sorted({e["sparsity"] for e in entries if e["sparsity"] <= sparsity + 1e-9})
    if not levels:
        return "dense"
    at_level = {e["m"]: e["sparse_wins"] for e in entries if e["sparsity"] == levels[-1]}
    measured = sorted(at_level)
    below = [t for t in measured if t <= m]
    above = [t for t in measured if t >= m]
    bracket = {below[-1] if below else above[0], above[0] if above else below[-1]}
    return kind if all(at_level[t] for t in bracket) else "dense"
