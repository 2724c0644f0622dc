"""What an optimized model keeps of the HF modules it replaces: the modules users reach into.

``fastbert.optimize`` swaps an HF base model's layer stack for fastbert's. Users and tools
hold on to some of the HF modules inside it: PEFT wraps the projections in LoRA layers
(``get_peft_model`` before ``optimize``, or ``PeftModel.from_pretrained``), forward hooks
sit on them, recipes set ``p`` on the ``nn.Dropout`` modules. :func:`carry_modules` puts
those objects into the fastbert layers, so they still act:

- ``attention_output``, ``intermediate``, ``output`` (and the embedding projection, which
  the embeddings keep anyway) become the HF module objects themselves: plain linears run
  fused, wrapped or hooked ones are called (:mod:`fastbert.modules.projection`);
- a wrapper around HF's query/key/value (a PEFT layer: ``get_base_layer()``) moves to the
  fastbert slot of that name, its innermost ``base_layer`` now the
  :class:`~fastbert.modules.qkv_slices.QKVSlice` of the fused ``qkv``;
- the layers' and embeddings' ``nn.Dropout`` modules are HF's (None where HF applies none).

:func:`check_carriable` refuses, before any work, what cannot be carried: hooks on the
query/key/value linears (fused away), anything other than a plain ``nn.Linear`` under a
q/k/v wrapper, and hooks or wrappers on any other module of the replaced subtrees
(LayerNorms, attention containers).
"""

from __future__ import annotations

from torch import nn

from fastbert.models.adapter import FamilyAdapter
from fastbert.modules.config import FastBertConfig
from fastbert.modules.encoder import FastBertEncoder
from fastbert.modules.embeddings import FastBertEmbeddings
from fastbert.modules.qkv_slices import unwrapped


def is_wrapper(module: nn.Module) -> bool:
    """Whether ``module`` wraps another one PEFT-style (``get_base_layer()`` returns a different module)."""
    get_base = getattr(module, "get_base_layer", None)
    return callable(get_base) and get_base() is not module


def _own_hooks(module: nn.Module) -> bool:
    """Whether ``module`` has hooks of its own, other than transformers' output-capturing ones
    (installed on its layer containers by a forward with ``output_hidden_states``; they go with them)."""
    hooks = (*module._forward_hooks.values(), *module._forward_pre_hooks.values(),
             *module._backward_hooks.values(), *module._backward_pre_hooks.values())
    return any(not getattr(getattr(h, "func", h), "__module__", "").startswith("transformers.") for h in hooks)


def _innermost_wrapper(module: nn.Module) -> nn.Module:
    """The wrapper whose ``base_layer`` is the innermost module."""
    while is_wrapper(module.base_layer):
        module = module.base_layer
    return module


def check_carriable(base: nn.Module, adapter: FamilyAdapter, config: FastBertConfig) -> None:
    """ValueError naming the module if ``base`` holds a wrapper or hook that optimizing would drop."""
    hf_config = base.config
    carried = set()  # module paths (relative to base) whose subtrees travel as they are
    for i in range(config.num_unique_layers):
        prefix = adapter.hf_layer_prefix_for(i, hf_config)
        for slot, hf_path in adapter.layer_module_map().items():
            path = prefix + hf_path
            module = base.get_submodule(path)
            if slot in config.qkv_names:
                inner = unwrapped(module)
                if type(inner) is not nn.Linear or _own_hooks(inner):
                    raise ValueError(
                        f"{path} is {type(inner).__name__}{' with hooks' if _own_hooks(inner) else ''}: fastbert "
                        "fuses the query, key and value linears into one and can carry only plain nn.Linear ones "
                        "(or PEFT wrappers around them); register hooks on the optimized layer's "
                        f"{slot!r} module after fastbert.optimize instead"
                    )
            carried.add(path)
        for hf_path in adapter.layer_dropouts.values():
            if hf_path is not None:
                carried.add(prefix + hf_path)
    for name in ("word_embeddings", "position_embeddings", "token_type_embeddings", "LayerNorm", "dropout"):
        carried.add(f"embeddings.{name}")
    if config.has_projection:
        carried.add(adapter.hf_projection)
    for attr in adapter.replaced_attrs(config):
        root = getattr(base, attr, None)
        if root is None:
            continue
        for name, module in root.named_modules(prefix=attr):
            if any(name == c or name.startswith(c + ".") for c in carried):
                continue
            if is_wrapper(module) or _own_hooks(module):
                raise ValueError(
                    f"{name} ({type(module).__name__}) is wrapped or has hooks, and fastbert.optimize replaces it: "
                    "adapters and hooks are carried over on the attention and feed-forward projections, the "
                    "embedding tables and the dropout modules only"
                )


def carry_modules(base: nn.Module, encoder: FastBertEncoder, embeddings: FastBertEmbeddings,
                  adapter: FamilyAdapter, config: FastBertConfig) -> None:
    """Move the HF modules users reach into (projections with their wrappers and hooks, dropouts)
    from ``base``'s layers into ``encoder``'s (after :func:`check_carriable`)."""
    hf_config = base.config
    for i, layer in enumerate(encoder.layers):
        prefix = adapter.hf_layer_prefix_for(i, hf_config)
        for slot, hf_path in adapter.layer_module_map().items():
            module = base.get_submodule(prefix + hf_path)
            if slot in config.qkv_names:
                if is_wrapper(module):
                    _innermost_wrapper(module).base_layer = getattr(layer, slot)
                    setattr(layer, slot, module)
            else:
                setattr(layer, slot, module)
        for slot, hf_path in adapter.layer_dropouts.items():
            setattr(layer, slot, None if hf_path is None else base.get_submodule(prefix + hf_path))
    dropout = getattr(base.embeddings, "dropout", None)
    if isinstance(dropout, nn.Dropout):
        embeddings.dropout = dropout


def retarget_peft_adapters(model: nn.Module) -> None:
    """After :func:`carry_modules`, point every PEFT adapter config of ``model`` (an HF model
    PEFT has injected into, or a ``PeftModel``) at the modules that now hold its layers.

    PEFT matches ``target_modules`` against module names and saves adapter weights under
    them. The carried layers sit under fastbert's names (``encoder.layers.0.attention_output``
    for HF's ``encoder.layer.0.attention.output.dense``), so the config lists their full
    names: an adapter saved from the optimized model then loads onto an optimized model
    exactly, and onto the plain HF model PEFT refuses it (targets not found) instead of
    leaving modules out.
    """
    configs = getattr(model, "peft_config", None)
    if not isinstance(configs, dict):
        return
    get_base = getattr(model, "get_base_model", None)
    task = get_base() if callable(get_base) else model
    for adapter_name, config in configs.items():
        if not hasattr(config, "target_modules"):
            continue
        names = sorted(name for name, module in task.named_modules() if _holds_adapter(module, adapter_name))
        if names:
            config.target_modules = names


def _holds_adapter(module: nn.Module, adapter_name: str) -> bool:
    """Whether ``module`` is a PEFT layer with weights of the adapter ``adapter_name``."""
    if not is_wrapper(module):
        return False
    return any(adapter_name in getattr(module, attr, {}) for attr in getattr(module, "adapter_layer_names", ()))
