"""The batches a benchmark feeds every variant: seeded random token ids and a padding mask."""

from __future__ import annotations

import torch

from fastbert.bench.sweep import VARLEN_MIN_LENGTH


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
