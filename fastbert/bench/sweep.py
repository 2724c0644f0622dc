"""What a ``fastbert bench`` run measures: the models, the shapes, and the batches every
variant is fed.

A model is a named architecture with seeded random weights (:mod:`fastbert.configs`) or a
local checkpoint folder. A shape is a :class:`BenchConfig`; :func:`build_sweep` orders
them so one reference output serves every dtype. The batches are seeded random token ids
with a padding mask (:func:`make_batch`); a future ``--texts FILE`` option would build
its batches from real text here, beside them.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import asdict, dataclass

import torch

from fastbert.cli_args import checkpoint_config, checkpoint_dir, checkpoint_weights, load_checkpoint
from fastbert.configs import ARCH_NAMES, hf_config, random_hf_model
from fastbert.models import max_sequence_length
from fastbert.numerics import canonical_dtype

# Default sweeps. GPU: the baselines' shapes of docs/ARCHITECTURE.md (BERT-base/large).
# CPU: small enough that the whole run takes well under two minutes on a 2-core machine.
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


def resolve_sweep(device: str, quick: bool, archs, model_dirs, batches, seq_lens, dtypes, varlen: bool) -> list[BenchConfig]:
    """The sweep ``fastbert bench`` was asked for: ``device``'s defaults (``"cpu"``/``"cuda"``,
    smaller with ``quick``) where an option is None or empty. ValueError before any model is
    loaded for a folder that is not a checkpoint, an unknown arch, a non-positive size, an
    unknown dtype, or a length beyond a model's position table."""
    chosen = defaults(device, quick)
    models = list(dict.fromkeys((archs or []) + (model_dirs or []))) or chosen["models"]
    for d in model_dirs or []:
        checkpoint_dir(d, "--model-dir")
        checkpoint_config(d, "--model-dir")
        checkpoint_weights(d, "--model-dir")
    seq_lens = seq_lens or chosen["seq_lens"]
    configs = build_sweep(models, batches or chosen["batches"], seq_lens, dtypes or chosen["dtypes"], varlen=varlen)
    for model in models:  # every model is known and takes every length before anything runs
        check_seq_len(model, max(seq_lens))
    return configs


# ---------------------------------------------------------------------------
# Models: a named architecture or a checkpoint folder
# ---------------------------------------------------------------------------


def load_base_model(model: str, seed: int) -> torch.nn.Module:
    """The HF base model (float32, CPU, eval) for a named arch from :mod:`fastbert.configs`
    with seeded random weights, or for a local checkpoint directory."""
    if os.path.isdir(model):
        return load_checkpoint(model, "--model-dir").eval()
    return random_hf_model(model, seed)


def model_config(model: str):
    """The HF config of a named arch or a checkpoint folder; ValueError naming the choices otherwise."""
    if os.path.isdir(model):
        return checkpoint_config(model, "--model-dir")
    if model not in ARCH_NAMES:
        raise ValueError(f"unknown arch {model!r}; expected one of {list(ARCH_NAMES)} or a checkpoint folder (--model-dir)")
    return hf_config(model)


def check_seq_len(model: str, seq_len: int) -> None:
    """ValueError unless ``model`` (a named arch or a checkpoint folder) is one fastbert runs
    and its position table numbers ``seq_len`` tokens."""
    limit = max_sequence_length(model_config(model))
    if seq_len > limit:
        raise ValueError(f"--seq-len {seq_len} exceeds {model}'s position table: at most {limit} tokens")


# ---------------------------------------------------------------------------
# Batches
# ---------------------------------------------------------------------------


def row_lengths(batch: int, seq_len: int, varlen: bool, seed: int) -> torch.Tensor:
    """Real tokens per row: all ``seq_len``, or drawn uniformly from
    ``[min(VARLEN_MIN_LENGTH, seq_len), seq_len]`` with a generator seeded by ``seed``."""
    if not varlen:
        return torch.full((batch,), seq_len, dtype=torch.long)
    gen = torch.Generator().manual_seed(seed)
    low = min(VARLEN_MIN_LENGTH, seq_len)
    return torch.randint(low, seq_len + 1, (batch,), generator=gen)


def make_batch(config, batch: int, seq_len: int, varlen: bool, seed: int, device) -> dict[str, torch.Tensor]:
    """``{"input_ids", "attention_mask"}`` on ``device`` for an HF ``config``: random ids
    (avoiding the special ids 0-2), right padding with the model's pad id."""
    lengths = row_lengths(batch, seq_len, varlen, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    ids = torch.randint(3, config.vocab_size, (batch, seq_len), generator=gen)
    mask = (torch.arange(seq_len)[None, :] < lengths[:, None]).long()
    pad = getattr(config, "pad_token_id", 0) or 0
    ids = ids.masked_fill(mask == 0, pad)
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}


def token_counts(inputs: dict[str, torch.Tensor]) -> tuple[int, int]:
    """(real tokens, padded tokens = batch * seq_len) of a batch."""
    mask = inputs["attention_mask"]
    return int(mask.sum().item()), int(mask.numel())
