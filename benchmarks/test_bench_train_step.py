"""Training step (forward + backward + AdamW): fastbert.optimize(model) against HF eager and
HF SDPA on the same batch, the sequence-classification model of ``fastbert bench --train``.

GPU: BERT-base, batch 32 x 128 tokens, bf16 autocast (float32 weights), plus a
variable-length batch. CPU: bert-tiny, float32. The step is
:class:`fastbert.bench.train.TrainStep`, the one the command times.
"""

from __future__ import annotations

import pytest
import torch

from fastbert.bench import train

_MODELS: dict = {}


def _variants(arch: str, device) -> train.TrainVariants:
    """The task model's variants, built once per arch for the whole session."""
    if arch not in _MODELS:
        _MODELS[arch] = train.TrainVariants(train.load_task_model(arch, "cls", seed=0), device)
    return _MODELS[arch]


@pytest.mark.parametrize("varlen", [False, True], ids=["full", "varlen"])
@pytest.mark.parametrize("variant", ["hf_eager", "hf_sdpa", "fastbert"])
def test_train_step(timed, shape, device, variant, varlen):
    models = _variants(shape["arch"], device)
    module = models.fresh(variant)
    feed = train.training_batch(models.task_model.config, "cls", shape["batch"], shape["seq"], varlen, seed=0, device=device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    step = train.TrainStep(module, feed, dtype, device)
    try:
        timed(step)
    finally:
        step.release()
