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


def install_state_dict_hooks(module: nn.Module, weight_map: WeightMap, projection_paths=()) -> None:
    """Make ``module.state_dict()`` speak HF names and ``load_state_dict`` accept them.

    ``save_pretrained`` on an optimized model then writes a checkpoint that plain
    ``transformers`` loads; fastbert-named state dicts still load too. What PEFT adds to a
    projection keeps fastbert's module names (PEFT names adapter weights after the modules
    it finds); entries that an adapter saved on the plain HF model would put under HF's
    projections (``projection_paths``: HF module paths) are refused with a ValueError
    instead of being dropped (:func:`check_no_hf_adapter_entries`). The hooks are
    ``functools.partial`` objects of module-level functions, so the module still pickles
    (``torch.save``, multiprocessing) and deep-copies.
    """
    weight_map = {fast: tuple(hf) for fast, hf in weight_map.items()}
    module.register_state_dict_post_hook(functools.partial(_state_dict_to_hf, weight_map))
    module.register_load_state_dict_pre_hook(
        functools.partial(_load_state_dict_from_hf, weight_map, tuple(sorted(projection_paths)))
    )


def _state_dict_to_hf(weight_map: WeightMap, module, state_dict, prefix, local_metadata) -> None:
    """State-dict post-hook: fastbert names under ``prefix`` become HF names."""
    fast_to_hf(state_dict, weight_map, prefix)


def _load_state_dict_from_hf(weight_map: WeightMap, projection_paths, module, state_dict, prefix, *unused) -> None:
    """Load-state-dict pre-hook: HF names under ``prefix`` become fastbert names."""
    check_no_hf_adapter_entries(state_dict, projection_paths, prefix)
    hf_to_fast(state_dict, weight_map, prefix)


def check_no_hf_adapter_entries(state: Mapping, projection_paths, prefix: str = "") -> None:
    """ValueError if ``state`` holds entries nested under an HF projection module (``...query.lora_A.weight``,
    ``...dense.base_layer.weight``): an adapter saved on the plain HF model, which the optimized
    model's modules (fastbert names) would silently leave out."""
    paths = {prefix + p + "." for p in projection_paths}
    for key in state:
        if key.rpartition(".")[0] + "." in paths:
            continue  # the projection's own weight or bias
        if any(key.startswith(p) for p in paths):
            raise ValueError(
                f"{key!r} belongs to an adapter or wrapper on the plain HF model's module "
                f"{next(p for p in paths if key.startswith(p))[len(prefix):-1]!r}, which fastbert.optimize fuses or "
                "renames: load the adapter on the HF model first (peft.PeftModel.from_pretrained(hf_model, path)), "
                "then call fastbert.optimize on the result"
            )


@torch.no_grad()
def load_fast_weights(module: nn.Module, hf_state: dict, weight_map: WeightMap, prefix: str = "",
                      requires_grad: Mapping[str, bool] | None = None) -> None:
    """Copy weights named as in an HF base model's state dict into ``module`` (a fastbert
    submodule whose names, prefixed with ``prefix``, appear in the weight map's keys).

    ``requires_grad`` (HF name -> flag, e.g. after PEFT froze the base model) sets each
    fastbert parameter's flag from the HF parameters it is made of; a fused parameter whose
    parts disagree (only ``key`` frozen, say) is refused with a ValueError: one tensor
    cannot be partly trainable.
    """
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
        sources = weight_map.get(key, ())
        flags = {requires_grad[h] for h in sources if h in requires_grad} if requires_grad is not None else set()
        if len(flags) > 1:
            raise ValueError(
                f"{', '.join(sources)}: some are trainable and some frozen (requires_grad), but fastbert fuses them "
                f"into one parameter ({key}); freeze or unfreeze them together"
            )
        if flags and isinstance(param, nn.Parameter):
            param.requires_grad_(flags.pop())
    if missing:
        raise ValueError(f"the HF model has no weights for {missing[:5]}{' ...' if len(missing) > 5 else ''}")
