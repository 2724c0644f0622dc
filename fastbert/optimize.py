"""``fastbert.optimize(model)``: swap a Hugging Face model's encoder for fastbert's, in place."""

from __future__ import annotations

from torch import nn

from fastbert.models import adapter_for, hf_base_model, max_sequence_length
from fastbert.models.heads import convert_head_transforms
from fastbert.models.base import convert_base_model, is_optimized
from fastbert.models.carry import retarget_peft_adapters
from fastbert.modules.cuda_graphs import GraphBuckets, warn_without_cuda
from fastbert.modules.unpad_policy import check_unpad_mode
from fastbert.wrapped_models import wrapped_hf_models


def optimize(model: nn.Module, *, unpad: bool | str = "auto", cuda_graphs: bool | GraphBuckets = False) -> nn.Module:
    """Run ``model``'s embeddings and encoder on fastbert; returns the same object.

    ``model`` is an HF base model (``BertModel``, ``RobertaModel``, ...) or one of its
    task models (``...ForSequenceClassification``, ``ForMaskedLM``, ``ForPreTraining``,
    ``ForTokenClassification``, ``ForQuestionAnswering``, ``ForMultipleChoice``), or a
    sentence-transformers ``SentenceTransformer``, ``CrossEncoder`` or ``SparseEncoder``, whose
    HF models are optimized (:mod:`fastbert.wrapped_models`). Heads,
    pooler, embedding tables (and their ties), config, output classes and state-dict
    names stay as they were, so the rest of the user's code keeps working. MLM head
    transforms (dense + activation + LayerNorm) also run through fastbert ops. Calling it on
    an optimized model only updates ``unpad`` and ``cuda_graphs``. Raises TypeError for unsupported families
    and ValueError for unsupported options (decoders, relative positions, ...).

    ``unpad``: with a padding mask, run the encoder on the packed real tokens (True),
    never (False), or when the batch's padding fraction is above a per-device threshold
    ("auto", see :mod:`fastbert.modules.unpad_policy`). Results on real tokens are the
    same either way; hidden states at padded positions are zeros when unpadded.

    ``cuda_graphs``: replay inference forwards of the encoder on CUDA from CUDA graphs, one
    per shape bucket (True: the default :class:`~fastbert.modules.cuda_graphs.GraphBuckets`,
    or give one: ValueError for a sequence length past the model's position table), captured
    on first use; other calls run eagerly (a warning, once, where PyTorch sees no CUDA
    device). Returned tensors are the caller's (copied out of the graph).
    ``model.base_model.encoder.cuda_graph_memory()`` says what the graphs hold. See
    :mod:`fastbert.modules.cuda_graphs`.
    """
    check_unpad_mode(unpad)
    if not (cuda_graphs is True or cuda_graphs is False or isinstance(cuda_graphs, GraphBuckets)):
        raise ValueError(f"cuda_graphs must be True, False or a fastbert.GraphBuckets, got {cuda_graphs!r}")
    wrapped = wrapped_hf_models(model)
    if wrapped is not None:
        for inner in wrapped:
            optimize(inner, unpad=unpad, cuda_graphs=cuda_graphs)
        return model
    base = hf_base_model(model)
    if isinstance(cuda_graphs, GraphBuckets):
        cuda_graphs.check_positions(max_sequence_length(base.config))
    if not is_optimized(base):
        convert_base_model(base, adapter_for(base.config))
        retarget_peft_adapters(model)
        convert_head_transforms(model, base.config)
        # fastbert's encoder checkpoints every family, including those HF does not (ALBERT).
        for module in {id(m): m for m in (model, base)}.values():
            module.supports_gradient_checkpointing = True
    base.encoder.unpad = unpad
    base.encoder.cuda_graphs = cuda_graphs
    if cuda_graphs is not False:
        warn_without_cuda()
    return model
