"""Host synchronizations per encoder forward do not grow with depth.

A GPU stalls whenever the host waits for a tensor's value: ``.item()``/``int()``/``bool()``
(``aten._local_scalar_dense``), ``.tolist()``, ``nonzero``, boolean indexing and
``masked_select`` (their output size depends on values), ``repeat_interleave`` without
``output_size``, ``unique``, ``torch.equal``. On the CPU a ``TorchDispatchMode`` sees every
aten op a forward runs, so it counts them; ``.tolist()`` does not go through the
dispatcher and is counted by wrapping it. Value checks are switched off
(``FASTBERT_CHECK_INPUTS=0``, the latency setting): what remains is what the forward needs.
The padded path reads nothing; the packed path reads once (the decision, the token count
and the longest row in one transfer), however many layers run.
"""

from __future__ import annotations

import pytest
import torch

from fastbert import FastBertConfig, FastBertEncoder
from fastbert.ops import record_dispatch
from tests.helpers import HostSyncs

def _encoder(layers: int, mode) -> FastBertEncoder:
    torch.manual_seed(0)
    cfg = FastBertConfig(hidden_size=32, num_hidden_layers=layers, num_attention_heads=2, intermediate_size=37,
                         vocab_size=50, max_position_embeddings=64)
    enc = FastBertEncoder(cfg).eval()
    enc.unpad = mode
    return enc


def _batch():
    gen = torch.Generator().manual_seed(1)
    lengths = torch.tensor([32, 7, 19, 1])  # 4 x 32, about half padding, right-padded
    mask = (torch.arange(32)[None, :] < lengths[:, None]).long()
    return torch.randn(4, 32, 32, generator=gen), mask


@pytest.mark.parametrize("layers", [2, 8])
@pytest.mark.parametrize("path, mode, budget", [("padded", False, 0), ("packed", True, 1), ("packed", "auto", 1)])
def test_host_syncs_per_forward(layers, path, mode, budget, monkeypatch):
    monkeypatch.setenv("FASTBERT_CHECK_INPUTS", "0")
    enc = _encoder(layers, mode)
    x, mask = _batch()
    with torch.no_grad(), record_dispatch() as log, HostSyncs(monkeypatch) as syncs:
        enc(x, attention_mask=mask, output_hidden_states=True)
    assert (("gather_rows", "torch") in log) == (path == "packed")  # the path under test ran
    assert len(syncs.ops) == budget, syncs.ops


def test_the_counter_sees_every_kind_of_host_read(monkeypatch):
    """The counter is not blind: each way of reading values is counted, and sync-free ops are not."""
    x = torch.randn(6)
    with HostSyncs(monkeypatch) as syncs:
        x.sum().item()
        bool(x[0] > 0)
        x.tolist()
        torch.nonzero(x > 0)
        x[x > 0]
        x.masked_select(x > 0)
        torch.repeat_interleave(torch.tensor([1, 2]))
        torch.equal(x, x)
    assert len(syncs.ops) == 8, syncs.ops
    with HostSyncs(monkeypatch) as syncs:
        torch.nonzero_static(x > 0, size=3)
        torch.repeat_interleave(torch.tensor([1, 2]), output_size=3)
        x[torch.tensor([0, 2])]
        torch.cumsum(x, 0)
    assert syncs.ops == []
