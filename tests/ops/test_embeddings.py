"""fastbert.ops.embeddings against explicit lookups in float64."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fastbert.ops import embeddings
from tests.helpers import rel_err


def _tables(vocab=50, pos=20, types=3, dim=24, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(n, dim, generator=gen) for n in (vocab, pos, types)] + [
        torch.randn(dim, generator=gen) + 1,
        torch.randn(dim, generator=gen),
    ]


@pytest.mark.parametrize("with_types", [True, False])
def test_matches_float64(with_types):
    word, pos, typ, w, b = _tables()
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 50, (3, 7), generator=gen)
    types = torch.randint(0, 3, (3, 7), generator=gen) if with_types else None
    positions = torch.arange(7)[None]
    h = word.double()[ids] + pos.double()[positions]
    if with_types:
        h = h + typ.double()[types]
    ref = F.layer_norm(h, (24,), w.double(), b.double(), 1e-12)
    out = embeddings(ids, positions, types, word, pos, typ if with_types else None, w, b, 1e-12)
    assert rel_err(out, ref) < 1e-6


def test_inputs_embeds_and_default_token_type():
    word, pos, typ, w, b = _tables()
    embeds = torch.randn(2, 5, 24)
    positions = torch.arange(5)[None]
    ref = F.layer_norm((embeds + typ[0] + pos[:5]).double(), (24,), w.double(), b.double(), 1e-12)
    out = embeddings(None, positions, None, word, pos, typ, w, b, 1e-12, inputs_embeds=embeds)
    assert rel_err(out, ref) < 1e-6


def test_exactly_one_input():
    word, pos, typ, w, b = _tables()
    with pytest.raises(ValueError, match="exactly one"):
        embeddings(None, torch.arange(3)[None], None, word, pos, typ, w, b, 1e-12)
