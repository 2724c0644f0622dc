"""FastBertEncoder: a stack of FastBertLayers (optionally sharing weights, as ALBERT does)."""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
import torch.utils.checkpoint
from torch import nn

from fastbert.modules.compiling import branching_traceable
from fastbert.modules.config import FastBertConfig
from fastbert.modules.cuda_graphs import CudaGraphRunner, GraphBuckets, GraphMemory
from fastbert.modules.init import init_bert_weights
from fastbert.modules.layer import FastBertLayer
from fastbert.modules.masks import normalize_attention_mask
from fastbert.modules.unpad_policy import check_unpad_mode, plan_unpad, unpad_condition
from fastbert.ops.attention import packed_attention_args
from fastbert.ops.padding import check_cu_seqlens, pad, unpad


class EncoderOutput(NamedTuple):
    """What :class:`FastBertEncoder` returns."""

    last_hidden_state: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...] | None


class FastBertEncoder(nn.Module):
    """The transformer stack of a BERT-family model, as a plain ``nn.Module``.

    ``FastBertEncoder(config)`` builds randomly initialized layers;
    ``fastbert.encoder_from_hf(model)`` builds one holding a Hugging Face model's encoder weights.
    ``config.layer_schedule`` lets several applied layers share one set of weights.

    ``unpad`` (True, False or "auto"; default "auto") says when a batch with a padding mask
    runs on its packed real tokens. The packed path is taken only when it gives Hugging
    Face's numbers at every position a head reads: every row's first token must be real
    (the pooler and sequence-level heads read position 0, which with left padding is a pad
    token HF computes a value for). Left-padded batches, rows without real tokens and
    general 3D/4D masks run the padded path. "auto" also needs the padding fraction above
    a per-device threshold (:mod:`fastbert.modules.unpad_policy`); both facts, the token
    count and the longest row come from one host read per forward. Under
    ``torch.compile(fullgraph=True)`` the same decision is made on the device and
    ``torch.cond`` runs the chosen path (without ``fullgraph``, with ``dynamic=True``, or
    while a CUDA graph is captured around the encoder, the padded path runs).

    ``cuda_graphs`` (False, True or a :class:`~fastbert.modules.cuda_graphs.GraphBuckets`)
    replays inference forwards on CUDA from graphs captured per shape bucket
    (:mod:`fastbert.modules.cuda_graphs`); :meth:`cuda_graph_memory` says what they hold.
    """

    def __init__(self, config: FastBertConfig, device=None, dtype=None) -> None:
        super().__init__()
        self.config = config
        self.layers = nn.ModuleList(
            FastBertLayer(
                config.hidden_size,
                config.num_attention_heads,
                config.intermediate_size,
                config.hidden_act,
                config.layer_norm_eps,
                config.attention_probs_dropout_prob,
                config.attention_output_dropout,
                config.ffn_output_dropout,
                device=device,
                dtype=dtype,
                qkv_names=config.qkv_names,
            )
            for _ in range(config.num_unique_layers)
        )
        init_bert_weights(self, config.initializer_range)
        self.unpad = "auto"
        # Set by HF's gradient_checkpointing_enable() (it looks for this attribute), or by hand.
        self.gradient_checkpointing = False
        self._gradient_checkpointing_func = None
        self._graph_runner: CudaGraphRunner | None = None

    @property
    def cuda_graphs(self) -> CudaGraphRunner | None:
        """The CUDA-graph runner (None when graphs are off); set to True, False or a
        :class:`~fastbert.modules.cuda_graphs.GraphBuckets`."""
        return getattr(self, "_graph_runner", None)

    @cuda_graphs.setter
    def cuda_graphs(self, setting: bool | GraphBuckets) -> None:
        if setting is False:
            self._graph_runner = None
        elif setting is True or isinstance(setting, GraphBuckets):
            buckets = setting if isinstance(setting, GraphBuckets) else None
            runner = self.cuda_graphs
            if runner is None or buckets is not None and buckets != runner.buckets:
                self._graph_runner = CudaGraphRunner(buckets)
        else:
            raise ValueError(f"cuda_graphs must be True, False or a GraphBuckets, got {setting!r}")

    def cuda_graph_memory(self) -> GraphMemory:
        """How many CUDA graphs are captured and the bytes they hold (zeros when graphs are off)."""
        runner = self.cuda_graphs
        return runner.memory() if runner is not None else GraphMemory(0, 0, 0)

    def _apply(self, fn, *args, **kwargs):
        # .to()/.cuda()/.half() may move the parameters the graphs read: capture again on use.
        if self.cuda_graphs is not None:
            self.cuda_graphs.reset()
        return super()._apply(fn, *args, **kwargs)

    @property
    def unpad(self) -> bool | str:
        """When padded batches run on packed tokens: True, False or "auto" (see the class docs)."""
        return self._unpad

    @unpad.setter
    def unpad(self, mode: bool | str) -> None:
        check_unpad_mode(mode)
        self._unpad = mode

    def head_counts(self) -> tuple[int, ...]:
        """The distinct attention-head counts of the layers (one value unless heads were pruned)."""
        return tuple(sorted({layer.num_attention_heads for layer in self.layers}))

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        cu_seqlens: torch.Tensor | None = None,
        max_seqlen: int | None = None,
    ) -> EncoderOutput:
        """Run every layer on ``(batch, seq, hidden)`` hidden states.

        ``attention_mask``: None, a 2D ``(batch, seq)`` padding mask (nonzero = token), or a
        3D/4D mask (bool/integer: True = attend; float: additive). When it is a padding
        mask and ``self.unpad`` allows it (see the class docs), the layers run on the packed
        real tokens and padded positions of the outputs are zeros.
        Packed input: ``hidden_states`` ``(tokens, hidden)`` with ``cu_seqlens`` (int32/int64
        offsets from 0 to ``tokens``, non-decreasing) and ``max_seqlen`` (at least the longest
        sequence), no mask; outputs stay packed.
        With ``output_hidden_states`` the input and every layer's output are returned too.
        """
        if cu_seqlens is not None:
            if attention_mask is not None:
                raise ValueError("packed input (cu_seqlens) takes no attention_mask: the lengths are the mask")
            self._check_hidden(hidden_states, 2, "(tokens, hidden)")
            check_cu_seqlens(cu_seqlens, hidden_states.shape[0], max_seqlen)
            tokens = hidden_states.shape[0]
            return self._run(hidden_states, output_hidden_states, **packed_attention_args(cu_seqlens, max_seqlen, tokens))
        self._check_hidden(hidden_states, 3, "(batch, seq, hidden)")
        batch, seq = hidden_states.shape[:2]
        if batch == 0 or seq == 0:
            raise ValueError(f"the batch is empty: (batch, seq) = {(batch, seq)}; need at least one token")
        mask = normalize_attention_mask(attention_mask, batch, seq, self.head_counts())
        if self.cuda_graphs is not None and not output_hidden_states:
            out = self.cuda_graphs.run(self, hidden_states, mask)
            if out is not None:
                return EncoderOutput(out, None)
        if torch.compiler.is_compiling():
            return self._compiled_forward(hidden_states, mask, output_hidden_states)
        plan = plan_unpad(self.unpad, mask, batch)
        if plan is None:
            return self._run(hidden_states, output_hidden_states, attn_mask=mask)
        return self._run_packed(hidden_states, plan.keep, output_hidden_states, plan.tokens, plan.max_seqlen)

    def _run_packed(self, hidden_states, keep, output_hidden_states, tokens, max_seqlen) -> EncoderOutput:
        """Unpad once, run every layer on the packed tokens, pad once. ``tokens`` and
        ``max_seqlen`` come from the plan's host read (eager), or are an unbacked size and the
        padded length, a bound (under ``torch.compile``)."""
        batch, seq = keep.shape
        packed = unpad(hidden_states, keep, max_seqlen, tokens)
        args = packed_attention_args(packed.cu_seqlens, packed.max_seqlen, packed.packed.shape[0])
        out = self._run(packed.packed, output_hidden_states, **args)
        if out.hidden_states is None:
            return EncoderOutput(pad(out.last_hidden_state, packed.indices, batch, seq), None)
        hidden = tuple(pad(h, packed.indices, batch, seq) for h in out.hidden_states)
        return EncoderOutput(hidden[-1], hidden)

    def _compiled_forward(self, hidden_states, mask, output_hidden_states) -> EncoderOutput:
        """The forward under ``torch.compile``: the unpad decision (same rule as eagerly) is
        computed on the device and ``torch.cond`` chooses the packed or the padded path at run
        time, both compiled into one graph; the packed token count is an unbacked size and
        ``max_seqlen`` the padded length. Where the trace cannot hold that branch
        (:func:`~fastbert.modules.compiling.branching_traceable`: without ``fullgraph=True``,
        with ``dynamic=True``, or once a float attribute changed between calls) the padded
        path is compiled alone."""
        condition = unpad_condition(self.unpad, mask, hidden_states.shape[0])
        if condition is None or not branching_traceable(self):
            return self._run(hidden_states, output_hidden_states, attn_mask=mask)
        keep, take_packed = condition

        def packed(h, k):
            return _tensors(self._run_packed(h, k, output_hidden_states, None, h.shape[1]))

        def padded(h, k):
            out = _tensors(self._run(h, output_hidden_states, attn_mask=mask))
            # torch.cond's branches may not return their inputs: the input hidden state is copied.
            return (h.clone(), *out[1:]) if output_hidden_states else out

        # keep is a view of the mask, which the padded branch reads: operands may not alias.
        outs = torch.cond(take_packed, packed, padded, (hidden_states, keep.clone()))
        return EncoderOutput(outs[-1], tuple(outs) if output_hidden_states else None)

    def _run(self, hidden_states, output_hidden_states, **attention_args) -> EncoderOutput:
        all_hidden = (hidden_states,) if output_hidden_states else None
        checkpointing = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for index in self.config.schedule:
            layer = self.layers[index]
            if checkpointing:
                hidden_states = self._checkpoint(layer, hidden_states, attention_args)
            else:
                hidden_states = layer(hidden_states, **attention_args)
            if all_hidden is not None:
                all_hidden = all_hidden + (hidden_states,)
        return EncoderOutput(hidden_states, all_hidden)

    def _checkpoint(self, layer, hidden_states, attention_args):
        """Run ``layer`` under activation checkpointing (recomputed in backward)."""
        fn = self._gradient_checkpointing_func
        if fn is None:
            fn = functools.partial(torch.utils.checkpoint.checkpoint, use_reentrant=False)
        a = attention_args
        return fn(
            layer.__call__, hidden_states, a.get("attn_mask"), None, a.get("cu_seqlens"), a.get("max_seqlen"),
            a.get("indices"),
        )

    def _check_hidden(self, hidden_states, dims: int, layout: str) -> None:
        if not isinstance(hidden_states, torch.Tensor) or hidden_states.dim() != dims:
            raise ValueError(f"hidden_states must be a {dims}D tensor {layout}, got {getattr(hidden_states, 'shape', None)}")
        if hidden_states.shape[-1] != self.config.hidden_size:
            raise ValueError(
                f"hidden_states' last dimension must be hidden_size={self.config.hidden_size}, "
                f"got {hidden_states.shape[-1]}"
            )


def _tensors(out: EncoderOutput) -> tuple[torch.Tensor, ...]:
    """The distinct tensors of an output, as ``torch.cond`` returns them (its branches may not
    return one tensor twice): every hidden state when they are kept (the last is
    ``last_hidden_state``), else ``(last_hidden_state,)``."""
    return out.hidden_states if out.hidden_states is not None else (out.last_hidden_state,)
