"""``fastbert.from_pretrained(path, cls)``: load a checkpoint, pruned or not, as an optimized model.

Which pruned checkpoints load where:

- unstructured, block, N:M (2:4) pruning and uniform neuron pruning (the same number of FFN
  neurons in every layer): plain ``transformers`` loads them (zeros are ordinary weights; the
  config's intermediate size is the pruned one);
- removed attention heads, or neuron counts that differ between layers: ``config.json``
  holds per-layer size lists (:mod:`fastbert.prune.structure`), which plain
  ``transformers`` refuses with its own error; this loader builds the dense model, shrinks
  its layers to the recorded shapes and loads the weights.

Works with transformers 4.48 and 5.x (no ``prune_heads`` is needed).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from fastbert.optimize import optimize
from fastbert.prune.structure import apply_structure, read_config


def task_model_class(config):
    """The transformers class a checkpoint's config names in ``architectures`` (``AutoModel``
    when it names none); ValueError when it names several or one transformers lacks."""
    import transformers

    names = list(getattr(config, "architectures", None) or [])
    if not names:
        return transformers.AutoModel
    if len(names) > 1:
        raise ValueError(f"the checkpoint's config names several architectures {names}; expected one")
    cls = getattr(transformers, names[0], None)
    if cls is None:
        raise ValueError(f"the checkpoint's architecture {names[0]!r} is not a class of this transformers version")
    return cls


def from_pretrained(path, cls=None, *, unpad: bool | str = "auto") -> nn.Module:
    """The checkpoint in folder ``path`` as ``cls`` (a transformers model class or Auto class;
    default: the class its config names), optimized by :func:`fastbert.optimize` and in eval mode.

    Checkpoints whose config records pruned heads or per-layer neuron counts are rebuilt at
    those shapes; others load through ``cls.from_pretrained``.
    ValueError when ``path`` is not a checkpoint folder or its weights do not fit.
    """
    from transformers import PreTrainedModel

    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise ValueError(f"path must be a checkpoint folder with a config.json, got {str(path)!r}")
    config, structure = read_config(folder)
    cls = cls or task_model_class(config)
    if structure is None:
        return optimize(cls.from_pretrained(folder), unpad=unpad).eval()
    is_concrete = isinstance(cls, type) and issubclass(cls, PreTrainedModel)
    model = cls(config) if is_concrete else cls.from_config(config)
    optimize(model, unpad=unpad)
    apply_structure(model, structure)
    _load_weights(model, read_state_dict(folder))
    return model.eval()


def read_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a ``save_pretrained`` folder (safetensors, sharded or not, or pytorch_model.bin)."""
    index = folder / "model.safetensors.index.json"
    if (folder / "model.safetensors").is_file() or index.is_file():
        from safetensors.torch import load_file

        files = ["model.safetensors"] if not index.is_file() else sorted(
            set(json.loads(index.read_text())["weight_map"].values()))
        state = {}
        for name in files:
            state.update(load_file(str(folder / name)))
        return state
    if (folder / "pytorch_model.bin").is_file():
        return torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise ValueError(f"{str(folder)!r} holds no model weights (model.safetensors or pytorch_model.bin)")


@torch.no_grad()
def _load_weights(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    expected = model.state_dict()
    prefix = getattr(model, "base_model_prefix", "") + "."
    if not set(state) & set(expected) and any(k.startswith(prefix) for k in state):
        # a task checkpoint loaded as its base model: the head's weights are not used
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    for key, value in state.items():
        if key in expected and expected[key].shape != value.shape:
            raise ValueError(f"checkpoint weight {key} has shape {tuple(value.shape)}, the model expects "
                             f"{tuple(expected[key].shape)}")
    result = model.load_state_dict(state, strict=False)
    loaded = {expected[k].data_ptr() for k in state if k in expected}
    missing = [k for k in result.missing_keys if k not in expected or expected[k].data_ptr() not in loaded]  # tied: loaded
    if missing:
        raise ValueError(f"the checkpoint lacks {len(missing)} weight(s) the model needs: {', '.join(missing[:4])}"
                         f"{', ...' if len(missing) > 4 else ''}")
