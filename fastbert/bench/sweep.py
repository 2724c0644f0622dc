"""Which configurations a ``fastbert bench`` run measures."""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass

DTYPE_ALIASES = {
    "fp32": "float32", "float32": "float32",
    "fp16": "float16", "float16": "float16", "half": "float16",
    "bf16": "bfloat16", "bfloat16": "bfloat16",
}

# Default sweeps. GPU: DESIGN.md's baselines at BERT-base/large shapes. CPU: small enough
# that the whole run takes well under two minutes on a 2-core machine.
GPU_DEFAULTS = {"models": ["bert-base", "bert-large"], "batches": [1, 8, 32, 128, 256], "seq_lens": [128, 512],
                "dtypes": ["float16", "bfloat16"]}
CPU_DEFAULTS = {"models": ["bert-tiny", "minilm-l6"], "batches": [1, 8], "seq_lens": [32, 128], "dtypes": ["float32"]}
# --quick on a GPU: what fits beside the tests in benchmarks/gpu_suite.sh's eight minutes.
GPU_QUICK = {"models": ["bert-base"], "batches": [1, 32, 128], "seq_lens": [128, 512], "dtypes": ["float16", "bfloat16"]}
CPU_QUICK = {"models": ["bert-tiny"], "batches": [1, 8], "seq_lens": [32], "dtypes": ["float32"]}

VARLEN_MIN_LENGTH = 16
"""Variable-length rows draw their lengths uniformly from [VARLEN_MIN_LENGTH, seq_len]."""


@dataclass(frozen=True)
class BenchConfig:
    """One measured shape: a model at one batch size, sequence length and dtype.

    ``varlen`` False: every row is ``seq_len`` real tokens. True: row lengths are drawn
    uniformly from ``[min(16, seq_len), seq_len]`` with a fixed seed and the batch is padded
    to ``seq_len`` with an attention mask.
    """

    model: str
    batch: int
    seq_len: int
    dtype: str
    varlen: bool

    def label(self) -> str:
        """Short human-readable name, e.g. ``bert-base b=8 s=128 float16 varlen``."""
        return f"{self.model} b={self.batch} s={self.seq_len} {self.dtype}{' varlen' if self.varlen else ''}"

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return asdict(self)


def canonical_dtype(name: str) -> str:
    """``float32``/``float16``/``bfloat16`` for a dtype name or alias; ValueError otherwise."""
    key = name.strip().lower()
    if key not in DTYPE_ALIASES:
        raise ValueError(f"dtype must be one of fp32, fp16, bf16 (or float32, float16, bfloat16), got {name!r}")
    return DTYPE_ALIASES[key]


def defaults(device: str, quick: bool = False) -> dict:
    """Default models, batches, sequence lengths and dtypes for ``device`` ('cpu' or 'cuda')."""
    if device == "cuda":
        return dict(GPU_QUICK if quick else GPU_DEFAULTS)
    return dict(CPU_QUICK if quick else CPU_DEFAULTS)


def build_sweep(models, batches, seq_lens, dtypes, varlen: bool = True) -> list[BenchConfig]:
    """Every combination, grouped by model, then sequence length, fixed before variable
    length, then batch, with dtype innermost (so one fp32 reference serves every dtype)."""
    for b in batches:
        if b < 1:
            raise ValueError(f"batch sizes must be positive, got {b}")
    for s in seq_lens:
        if s < 1:
            raise ValueError(f"sequence lengths must be positive, got {s}")
    dtypes = [canonical_dtype(d) for d in dtypes]
    shapes = [False, True] if varlen else [False]
    return [
        BenchConfig(model, batch, seq, dtype, is_varlen)
        for model, seq, is_varlen, batch, dtype in itertools.product(models, seq_lens, shapes, batches, dtypes)
    ]
