"""Which path each pruned matrix runs on, and the words the report uses for it.

- 2:4: :class:`~fastbert.modules.projection.SparsePlan` ``"2:4"``: PyTorch's semi-structured
  sparse GEMM on CUDA sm_80+ in float16/bfloat16 (where the measured table does not say
  dense is faster), the dense GEMM elsewhere;
- block: ``SparsePlan("block")``: the block-sparse Triton kernel on CUDA where the
  measured crossover table shows it faster, the dense GEMM elsewhere;
- heads / neurons: smaller dense matrices, on every device;
- unstructured (and N:M other than 2:4): the dense GEMM; the zeros are not skipped.
"""

from __future__ import annotations

from fastbert.modules.projection import SparsePlan, set_plan

PATHS = {
    "unstructured": "dense GEMM on every device: unstructured zeros are not skipped (no speedup)",
    "2:4": "2:4 semi-structured sparse GEMM on CUDA sm_80+ in fp16/bf16 (unless the measured table says dense "
           "is faster); dense GEMM elsewhere",
    "block": "block-sparse Triton kernel on CUDA where the measured crossover table shows it faster; dense GEMM "
             "elsewhere",
    "heads": "smaller dense matrices on every device",
    "neurons": "smaller dense matrices on every device",
}


def execution_of(pattern: str) -> str:
    """How matrices pruned with ``pattern`` run (one line)."""
    return PATHS.get(pattern, f"dense GEMM on every device: {pattern} zeros are not skipped (no speedup)")


def plan_execution(chosen, pattern: str, block: int) -> None:
    """Give each chosen 2:4- or block-pruned matrix its :class:`SparsePlan`."""
    for t in chosen:
        if pattern == "2:4":
            set_plan(t.module, SparsePlan("2:4"))
        elif pattern == "block":
            set_plan(t.module, SparsePlan("block", block, tile_sparsity(t.module.weight, block)))


def tile_sparsity(weight, block: int) -> float:
    """Fraction of the ``block x block`` tiles of ``weight`` that are all zero."""
    from fastbert.prune.masks import block_scores

    tiles = block_scores((weight.detach() != 0).float(), block)
    return float((tiles == 0).float().mean())
