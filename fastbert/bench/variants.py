"""The variants a benchmark compares, each built from the same HF model and fed the same inputs.

- ``hf_eager``: HF with ``attn_implementation="eager"``.
- ``hf_sdpa``: HF with ``attn_implementation="sdpa"``.
- ``hf_compile``: ``torch.compile`` of the HF SDPA model (default mode and dynamic-shape
  policy: the first shape compiles static, later shapes recompile once with dynamic sizes).
- ``fastbert``: ``fastbert.optimize`` on a copy of the HF model (padding-free ``unpad="auto"``).
- ``fastbert_cudagraph`` (GPU only): the fastbert model replayed from a CUDA graph captured
  by hand with ``torch.cuda.graph`` per input shape, on the padded path (``unpad=False``).
- ``fastbert_graphs`` (GPU only, on request): the user-facing mode,
  ``fastbert.optimize(model, cuda_graphs=True)``: graphs per shape bucket, packed or padded.
- ``hf_compile_ro`` (GPU only, on request): ``torch.compile(mode="reduce-overhead")`` of the
  HF SDPA model (Inductor with CUDA graphs), the baseline for the graph modes.

``DEFAULT_VARIANTS`` are the ones a sweep runs without ``--variants``; the on-request ones
are for the small-batch latency sweep (``benchmarks/gpu_suite.py``'s ``latency`` step).

A variant is how to build the module and how to call it on a batch; a future
``bench --train`` (training-step timing) would add its calls (forward, backward,
optimizer step) here as another ``make_forward``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

import fastbert

Forward = Callable[[], torch.Tensor]


@dataclass(frozen=True)
class Variant:
    """One way of running the model: how to build it and how to call it on a batch."""

    name: str
    description: str
    baseline: bool  # a baseline fastbert's speedup is measured against
    gpu_only: bool
    build: Callable[[nn.Module, torch.dtype, torch.device], nn.Module]
    make_forward: Callable[[nn.Module, dict], Forward]


def set_attention(model: nn.Module, attn: str) -> nn.Module:
    """Switch an HF model's attention implementation ("eager", "sdpa") in place."""
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(attn)
    else:  # older transformers: the attention interface reads the config at call time
        model.config._attn_implementation = attn
    return model


def _hf_copy(base: nn.Module, dtype: torch.dtype, device: torch.device, attn: str) -> nn.Module:
    return set_attention(copy.deepcopy(base).to(device=device, dtype=dtype).eval(), attn)


def _build_eager(base, dtype, device):
    return _hf_copy(base, dtype, device, "eager")


def _build_sdpa(base, dtype, device):
    return _hf_copy(base, dtype, device, "sdpa")


def _build_compile(base, dtype, device):
    return torch.compile(_hf_copy(base, dtype, device, "sdpa"))


def _build_compile_reduce_overhead(base, dtype, device):
    return torch.compile(_hf_copy(base, dtype, device, "sdpa"), mode="reduce-overhead")


def _build_fastbert(base, dtype, device):
    return fastbert.optimize(_hf_copy(base, dtype, device, "sdpa"))


def _build_fastbert_padded(base, dtype, device):
    return fastbert.optimize(_hf_copy(base, dtype, device, "sdpa"), unpad=False)


def _build_fastbert_graphs(base, dtype, device):
    return fastbert.optimize(_hf_copy(base, dtype, device, "sdpa"), cuda_graphs=True)


def plain_forward(model: nn.Module, inputs: dict) -> Forward:
    """A call of ``model(**inputs)`` returning ``last_hidden_state``."""

    def forward() -> torch.Tensor:
        return model(**inputs).last_hidden_state

    return forward


def cuda_graph_forward(model: nn.Module, inputs: dict, warmup: int = 3) -> Forward:
    """Capture one forward of ``model`` on ``inputs`` (static tensors) in a CUDA graph and
    return a call that replays it and returns the graph's static output."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up off the default stream, as graph capture requires
        for _ in range(warmup):
            model(**inputs)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = model(**inputs).last_hidden_state

    def replay() -> torch.Tensor:
        graph.replay()
        return static_out

    replay.graph = graph  # keep the graph (and its memory pool) alive with the call
    return replay


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in [
        Variant("hf_eager", "HF, attn_implementation='eager'", True, False, _build_eager, plain_forward),
        Variant("hf_sdpa", "HF, attn_implementation='sdpa'", True, False, _build_sdpa, plain_forward),
        Variant("hf_compile", "torch.compile(HF sdpa)", True, False, _build_compile, plain_forward),
        Variant("fastbert", "fastbert.optimize(HF)", False, False, _build_fastbert, plain_forward),
        Variant("fastbert_cudagraph", "fastbert.optimize(HF, unpad=False) in a CUDA graph", False, True,
                _build_fastbert_padded, cuda_graph_forward),
        Variant("fastbert_graphs", "fastbert.optimize(HF, cuda_graphs=True)", False, True, _build_fastbert_graphs,
                plain_forward),
        Variant("hf_compile_ro", "torch.compile(HF sdpa, mode='reduce-overhead')", True, True,
                _build_compile_reduce_overhead, plain_forward),
    ]
}
DEFAULT_VARIANTS = ("hf_eager", "hf_sdpa", "hf_compile", "fastbert", "fastbert_cudagraph")
COMPILED = ("hf_compile", "hf_compile_ro")  # slow to build: left out with --no-compile, and by default on the CPU
BASELINES = tuple(n for n, v in VARIANTS.items() if v.baseline)
