"""Weight mapping between fastbert modules and Hugging Face checkpoints, both ways.

A *weight map* is ``{fastbert_name: (hf_name, ...)}`` with names relative to the base
model. One HF name means a rename; several mean the fastbert tensor is their
concatenation along dim 0 in that order (the fused QKV projection).
"""

from __future__ import annotations

import functools
from typing import Mapping

import torch
from torch import nn

WeightMap = Mapping[str, tuple[str, ...]]


def hf_to_fast(state: dict, weight_map: WeightMap, prefix: str = "") -> None:
    """Rewrite ``state`` in place: HF-named entries under ``prefix`` become fastbert entries."""
    for fast, hf in weight_map.items():
        keys = [prefix + k for k in hf]
        if not all(k in state for k in keys):
            continue
        parts = [state.pop(k) for k in keys]
        state[prefix + fast] = parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)


def fast_to_hf(state: dict, weight_map: WeightMap, prefix: str = "") -> None:
    """Rewrite ``state`` in place: fastbert-named entries under ``prefix`` become HF entries.

    Split tensors are copies: views of one fused tensor would share storage, which
    safetensors (and so ``save_pretrained``) refuses.
    """
    for fast, hf in weight_map.items():
        key = prefix + fast
        if key not in state:
            continue
        tensor = state.pop(key)
        if len(hf) == 1:
            state[prefix + hf[0]] = tensor
            continue
        for name, part in zip(hf, tensor.chunk(len(hf), dim=0)):
            state[prefix + name] = part.detach().clone()


def install_state_dict_hooks(module: nn.Module, weight_map: WeightMap) -> None:
    """Make ``module.state_dict()`` speak HF names and ``load_state_dict`` accept them.

    ``save_pretrained`` on an optimized model then writes a checkpoint that plain
    ``transformers`` loads; fastbert-named state dicts still load too. The hooks are
    ``functools.partial`` objects of module-level functions, so the module still pickles
    (``torch.save``, multiprocessing) and deep-copies.
    """
    weight_map = {fast: tuple(hf) for fast, hf in weight_map.items()}
    module.register_state_dict_post_hook(functools.partial(_state_dict_to_hf, weight_map))
    module.register_load_state_dict_pre_hook(functools.partial(_load_state_dict_from_hf, weight_map))


def _state_dict_to_hf(weight_map: WeightMap, module, state_dict, prefix, local_metadata) -> None:
    """State-dict post-hook: fastbert names under ``prefix`` become HF names."""
    fast_to_hf(state_dict, weight_map, prefix)


def _load_state_dict_from_hf(weight_map: WeightMap, module, state_dict, prefix, *unused) -> None:
    """Load-state-dict pre-hook: HF names under ``prefix`` become fastbert names."""
    hf_to_fast(state_dict, weight_map, prefix)


@torch.no_grad()
def load_fast_weights(module: nn.Module, hf_state: dict, weight_map: WeightMap, prefix: str = "") -> None:
    """Copy weights named as in an HF base model's state dict into ``module`` (a fastbert
    submodule whose names, prefixed with ``prefix``, appear in the weight map's keys)."""
    state = dict(hf_state)
    hf_to_fast(state, weight_map)
    missing = []
    for name, param in module.state_dict(keep_vars=True).items():
        key = prefix + name
        if key not in state:
            missing.append(key)
            continue
        src = state[key]
        if src.shape != param.shape:
            raise ValueError(f"weight {key}: HF shape {tuple(src.shape)} does not match fastbert {tuple(param.shape)}")
        param.copy_(src)
    if missing:
        raise ValueError(f"the HF model has no weights for {missing[:5]}{' ...' if len(missing) > 5 else ''}")
