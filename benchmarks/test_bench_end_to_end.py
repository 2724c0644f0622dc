"""End-to-end forward: fastbert.optimize(model) against HF eager and HF SDPA, same inputs.

GPU: BERT-base, batch 32 x 128 tokens, fp16, plus a variable-length batch. CPU: bert-tiny.
"""

from __future__ import annotations

import pytest
import torch

from fastbert.bench.sweep import load_base_model, make_batch
from fastbert.bench.variants import VARIANTS

_MODELS: dict = {}


def _model(arch: str, variant: str, dtype, device):
    """Built once per (arch, variant, dtype) for the whole session."""
    key = (arch, variant, dtype)
    if key not in _MODELS:
        _MODELS[key] = VARIANTS[variant].build(load_base_model(arch, seed=0), dtype, device)
    return _MODELS[key]


@pytest.mark.parametrize("varlen", [False, True], ids=["full", "varlen"])
@pytest.mark.parametrize("variant", ["hf_eager", "hf_sdpa", "fastbert"])
def test_forward(timed, shape, device, variant, varlen):
    model = _model(shape["arch"], variant, shape["dtype"], device)
    feed = make_batch(model.config, shape["batch"], shape["seq"], varlen, seed=0, device=device)
    with torch.no_grad():
        timed(lambda: model(**feed).last_hidden_state)
