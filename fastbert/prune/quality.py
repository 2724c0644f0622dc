"""How much of the dense model a pruned one keeps, on a few texts: the check ``fastbert prune`` prints.

The measure is the one of the README's "What pruning keeps" table: the cosine of each
text's embedding from the pruned model to the dense model's. An embedding is the mean of
the base model's last hidden states over the text's real tokens (what a sentence-embedding
model returns before normalizing), or, for a sentence-transformers folder, what its
``encode`` returns. :data:`DEFAULT_MIN_COSINE` is the threshold below which the command
refuses to save (see the README for why 0.5).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from torch import nn

from fastbert.models import hf_base_model

DEFAULT_MIN_COSINE = 0.5
CHECK_TEXTS = 16


@dataclass(frozen=True)
class QualityCheck:
    """Cosines of the pruned model's embeddings to the dense model's, over ``count`` inputs from ``source``."""

    mean: float
    min: float
    count: int
    source: str

    def passes(self, min_cosine: float) -> bool:
        """Whether the mean cosine reaches ``min_cosine``."""
        return self.mean >= min_cosine

    def format(self, min_cosine: float) -> str:
        """One line for the terminal."""
        verdict = "ok" if self.passes(min_cosine) else "BELOW"
        return (f"quality: mean cosine {self.mean:.3f} (min {self.min:.3f}) of the pruned model's embeddings to the "
                f"dense model's on {self.count} {self.source}; {verdict} --min-cosine {min_cosine:g}")

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return {"mean_cosine": self.mean, "min_cosine": self.min, "count": self.count, "source": self.source}


def compare(dense: torch.Tensor, pruned: torch.Tensor, source: str) -> QualityCheck:
    """The :class:`QualityCheck` of two ``(texts, dim)`` embedding matrices, row by row."""
    cos = nn.functional.cosine_similarity(dense.double(), pruned.double(), dim=-1)
    cos = torch.nan_to_num(cos, nan=0.0)  # a zero embedding keeps nothing
    return QualityCheck(float(cos.mean()), float(cos.min()), int(cos.numel()), source)


def spread(texts: list[str], count: int = CHECK_TEXTS) -> list[str]:
    """``count`` texts taken evenly across ``texts`` (all of them when there are fewer)."""
    if len(texts) <= count:
        return list(texts)
    return [texts[i * len(texts) // count] for i in range(count)]


def random_batch(vocab_size: int, count: int, length: int, seed: int = 0) -> dict:
    """``count`` rows of seeded random token ids (for a checkpoint without a tokenizer)."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab_size, (count, length), generator=gen)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


@torch.no_grad()
def mean_pooled(model: nn.Module, batches: list[dict]) -> torch.Tensor:
    """The base model's last hidden states, averaged over each row's real tokens (eval mode)."""
    base = hf_base_model(model)
    accepted = set(inspect.signature(base.forward).parameters)
    device = next(base.parameters()).device
    was_training = base.training
    base.eval()
    try:
        pooled = []
        for batch in batches:
            inputs = {k: v.to(device) for k, v in batch.items() if k in accepted}
            hidden = base(**inputs).last_hidden_state.double()
            mask = inputs.get("attention_mask", torch.ones(hidden.shape[:2], device=device)).to(hidden.dtype)
            pooled.append((hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp_min(1))
        return torch.cat(pooled).cpu()
    finally:
        base.train(was_training)
