"""What pruning did: sparsity per matrix, parameters and FLOPs removed, the ideal FLOP ratio, how it runs."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from fastbert.prune.execution import execution_of
from fastbert.prune.targets import encoder_of, targets


@dataclass
class MatrixReport:
    """One pruned matrix."""

    name: str
    role: str
    shape: tuple[int, int]
    dense_params: int
    remaining_params: int

    @property
    def sparsity(self) -> float:
        """Fraction of the original (dense) entries that are gone."""
        return 1.0 - self.remaining_params / self.dense_params


@dataclass
class PruneReport:
    """Summary of a pruning pass over an encoder's projection matrices.

    FLOPs are those of the projections per token (2 per remaining weight); attention's
    score/value products and the glue ops are not counted. ``ideal_flop_ratio`` is the
    ratio of dense to remaining projection FLOPs: **ideal, not a measured speedup**. Only
    paths that skip the pruned weights can approach it (removed heads/neurons, 2:4 and
    block kernels where they are faster); unstructured zeros run on the dense GEMM and
    give no speedup. ``execution`` says which path the matrices take; a speedup is only
    known where it was measured (``measured_speedup``, set by whoever timed it, else None).
    """

    pattern: str
    method: str
    target_sparsity: float
    matrices: list[MatrixReport] = field(default_factory=list)
    execution: str = ""
    measured_speedup: float | None = None

    @property
    def dense_params(self) -> int:
        """Parameters of the pruned matrices before pruning."""
        return sum(m.dense_params for m in self.matrices)

    @property
    def remaining_params(self) -> int:
        """Non-zero (or still present) parameters after pruning."""
        return sum(m.remaining_params for m in self.matrices)

    @property
    def sparsity(self) -> float:
        """Overall fraction of the matrices' entries removed."""
        return 1.0 - self.remaining_params / max(1, self.dense_params)

    @property
    def role_sparsity(self) -> dict[str, float]:
        """Fraction removed per matrix role (``"attention.qkv"``, ..., over every layer's matrix of that role)."""
        dense, remaining = {}, {}
        for m in self.matrices:
            dense[m.role] = dense.get(m.role, 0) + m.dense_params
            remaining[m.role] = remaining.get(m.role, 0) + m.remaining_params
        return {role: 1.0 - remaining[role] / max(1, n) for role, n in dense.items()}

    @property
    def matrix_sparsity_range(self) -> tuple[float, float]:
        """The smallest and largest sparsity of any one matrix (an overall figure can hide a wiped matrix)."""
        values = [m.sparsity for m in self.matrices] or [0.0]
        return min(values), max(values)

    @property
    def pruned_whole(self) -> list[str]:
        """Names of the matrices that lost every weight (their projection is left with its bias only)."""
        return [m.name for m in self.matrices if m.remaining_params == 0]

    @property
    def flops_removed_per_token(self) -> int:
        """Projection FLOPs per token removed."""
        return 2 * (self.dense_params - self.remaining_params)

    @property
    def ideal_flop_ratio(self) -> float:
        """Dense / remaining projection FLOPs: ideal, not a measured speedup (see the class docstring)."""
        return self.dense_params / max(1, self.remaining_params)

    def to_dict(self) -> dict:
        """JSON-ready form with the derived totals."""
        d = asdict(self)
        for m, md in zip(self.matrices, d["matrices"]):
            md["sparsity"] = m.sparsity
        d.update(
            sparsity=self.sparsity,
            role_sparsity=self.role_sparsity,
            matrix_sparsity_range=list(self.matrix_sparsity_range),
            pruned_whole=self.pruned_whole,
            dense_params=self.dense_params,
            remaining_params=self.remaining_params,
            flops_removed_per_token=self.flops_removed_per_token,
            ideal_flop_ratio=self.ideal_flop_ratio,
        )
        return d

    def format(self) -> str:
        """A terminal table."""
        lines = [f"{'matrix':<28}{'role':<18}{'shape':>14}{'sparsity':>10}"]
        for m in self.matrices:
            lines.append(f"{m.name:<28}{m.role:<18}{str(m.shape):>14}{m.sparsity:>10.1%}")
        lines.append(
            f"total: {self.sparsity:.1%} of {self.dense_params:,} projection parameters removed "
            f"({self.dense_params - self.remaining_params:,}); {self.flops_removed_per_token:,} FLOPs/token removed "
            f"({self.pattern}, {self.method})"
        )
        low, high = self.matrix_sparsity_range
        lines.append(f"per matrix: {low:.1%} to {high:.1%} removed")
        if self.pruned_whole:
            lines.append(f"WARNING: {len(self.pruned_whole)} matrix(es) lost every weight: {', '.join(self.pruned_whole)}")
        lines.append(f"ideal projection FLOP ratio {self.ideal_flop_ratio:.2f}x (ideal: not a measured speedup)")
        lines.append(f"execution: {self.execution}")
        speed = "not measured" if self.measured_speedup is None else f"{self.measured_speedup:.2f}x (measured)"
        lines.append(f"speedup: {speed}")
        return "\n".join(lines)


def build_report(model, chosen, target: float, pattern: str, method: str) -> PruneReport:
    """A PruneReport of the current state of the chosen matrices (structured: vs the config's sizes)."""
    encoder = encoder_of(model)
    cfg = encoder.config
    dense_shapes = {
        "attention.qkv": (3 * cfg.hidden_size, cfg.hidden_size),
        "attention.output": (cfg.hidden_size, cfg.hidden_size),
        "ffn.in": (cfg.intermediate_size, cfg.hidden_size),
        "ffn.out": (cfg.hidden_size, cfg.intermediate_size),
    }
    report = PruneReport(pattern, method, target, execution=execution_of(pattern))
    for t in targets(model, sorted({t.layer for t in chosen})):
        rows, cols = dense_shapes[t.role]
        remaining = int(torch.count_nonzero(t.module.weight.detach()))
        report.matrices.append(MatrixReport(t.name, t.role, (rows, cols), rows * cols, remaining))
    return report
