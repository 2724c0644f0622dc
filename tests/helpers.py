"""Shared test helpers: error measures, the activations' oracle, small random HF models of every family."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

TORCH_ACTIVATIONS = {
    None: lambda z: z,
    "gelu": F.gelu,
    "gelu_tanh": lambda z: F.gelu(z, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
}
"""Canonical activation name (``fastbert.ops.linear.canonical_activation``) -> the PyTorch function."""


def rel_err(out: torch.Tensor, ref: torch.Tensor, token_mask: torch.Tensor | None = None) -> float:
    """``||out - ref|| / ||ref||`` in float64, over real tokens when ``token_mask`` is given.
    NaN anywhere gives inf, so NaN never passes a tolerance."""
    out, ref = out.detach().double(), ref.detach().double()
    if token_mask is not None:
        keep = token_mask.bool()
        out, ref = out[keep], ref[keep]
    if not torch.isfinite(out).all():
        return float("inf")
    return ((out - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def padded_batch(vocab: int, lengths: list[int], pad_id: int, seed: int, low: int = 3):
    """Random ids ``(batch, max(lengths))`` padded with ``pad_id`` and the matching 0/1 mask."""
    gen = torch.Generator().manual_seed(seed)
    seq = max(lengths)
    ids = torch.randint(low, vocab, (len(lengths), seq), generator=gen)
    mask = (torch.arange(seq)[None, :] < torch.tensor(lengths)[:, None]).long()
    return ids.masked_fill(mask == 0, pad_id), mask


# Unusual sizes on purpose: head dim 24, odd intermediate sizes, 1-3 layers.
def family_configs():
    """``{family: HF config}`` with odd sizes, one per supported family."""
    from transformers import (
        AlbertConfig,
        BertConfig,
        CamembertConfig,
        DistilBertConfig,
        ElectraConfig,
        RobertaConfig,
        XLMRobertaConfig,
    )

    common = dict(vocab_size=211, max_position_embeddings=80, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
    return {
        "bert": BertConfig(hidden_size=72, num_attention_heads=3, num_hidden_layers=2, intermediate_size=101, **common),
        "roberta": RobertaConfig(
            hidden_size=48, num_attention_heads=2, num_hidden_layers=3, intermediate_size=77, pad_token_id=1,
            type_vocab_size=1, **common,
        ),
        "xlm-roberta": XLMRobertaConfig(
            hidden_size=72, num_attention_heads=3, num_hidden_layers=1, intermediate_size=53, pad_token_id=1, **common
        ),
        "camembert": CamembertConfig(
            hidden_size=48, num_attention_heads=2, num_hidden_layers=1, intermediate_size=37, pad_token_id=1, **common
        ),
        "distilbert": DistilBertConfig(
            vocab_size=211, max_position_embeddings=80, dim=72, n_heads=3, n_layers=2, hidden_dim=101
        ),
        "albert": AlbertConfig(
            embedding_size=40, hidden_size=72, num_attention_heads=3, num_hidden_layers=3, intermediate_size=91,
            hidden_act="gelu_new", **common,
        ),
        "electra": ElectraConfig(
            embedding_size=40, hidden_size=72, num_attention_heads=3, num_hidden_layers=2, intermediate_size=67, **common
        ),
    }


def pad_id(config) -> int:
    """The padding token id of an HF config (0 when unset)."""
    return config.pad_token_id if config.pad_token_id is not None else 0


def build(model_class, config, seed: int = 0):
    """An HF model with seeded random weights in eval mode, and an optimized deep copy."""
    import fastbert

    torch.manual_seed(seed)
    hf = model_class(config).eval()
    with torch.no_grad():  # HF initializes biases to 0 and LayerNorms to 1: perturb all so mapping errors show
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return hf, fastbert.optimize(copy.deepcopy(hf))


def grads_in_hf_names(model) -> dict:
    """The gradients of an optimized model's parameters as a state dict with HF names (NaN where none)."""
    holder = copy.deepcopy(model)
    with torch.no_grad():
        for dst, src in zip(holder.parameters(), model.parameters()):
            dst.copy_(src.grad if src.grad is not None else torch.full_like(dst, float("nan")))
    return holder.state_dict()


aten = torch.ops.aten
SYNCING_OPS = {
    aten._local_scalar_dense.default, aten.nonzero.default, aten.masked_select.default, aten.is_nonzero.default,
    aten.repeat_interleave.Tensor, aten.equal.default, aten._unique2.default, aten.unique_consecutive.default,
    aten.unique_dim.default,
}  # fmt: skip


class HostSyncs(TorchDispatchMode):
    """Counts the operations of a block that make the host wait for a tensor's values (a GPU
    sync), by name, in ``self.ops``: the aten ops in :data:`SYNCING_OPS` (boolean indexing,
    ``repeat_interleave`` without ``output_size``), seen by a dispatch mode, and ``.tolist()``,
    which bypasses the dispatcher and is counted by patching it with ``monkeypatch``."""

    def __init__(self, monkeypatch):
        super().__init__()
        self.ops: list[str] = []
        tolist = torch.Tensor.tolist

        def counted(t):
            self.ops.append("tolist")
            return tolist(t)

        monkeypatch.setattr(torch.Tensor, "tolist", counted)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        syncs = func in SYNCING_OPS
        if func is aten.repeat_interleave.Tensor and kwargs.get("output_size") is not None:
            syncs = False
        if func in (aten.index.Tensor, aten.index_put.default, aten.index_put_.default):
            syncs = any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in args[1] if i is not None)
        if syncs:
            self.ops.append(str(func))
        return func(*args, **kwargs)


def hf_splits_flattened_rows() -> bool:
    """Whether the installed transformers attends within the sequences of a flattened row (restarting
    position ids, no mask): where its mask builder reads position ids (5.x after 5.17; not 4.x)."""
    import inspect

    try:
        from transformers.masking_utils import create_bidirectional_mask
    except ImportError:
        return False
    return "position_ids" in inspect.signature(create_bidirectional_mask).parameters
