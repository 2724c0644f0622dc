"""CUDA-graph execution of a FastBertEncoder: one graph per shape bucket, replayed.

At small batches a GPU forward is launch-bound: a BERT layer is a dozen kernels of a
few microseconds each, and the host needs longer to launch them than the GPU to run
them. A CUDA graph records the launches once and replays them in one call. Its shapes
are fixed, so batches are padded up to a **bucket**: the batch size to the next entry of
``GraphBuckets.batches``, the sequence length to the next of ``seq_lens``; a packed
(padding-free) batch also rounds its real-token count up to a power of two (at least
16, at most the bucket's ``batch * seq``). One graph is captured, on first use, per
bucket and path (padded, or packed at each token count), all in one memory pool.

A call, eagerly around the replay:

1. the usual unpad decision (:func:`fastbert.modules.unpad_policy.plan_unpad`, one host
   read), which also gives the real-token count;
2. the hidden states and the padding mask are copied into the bucket's static input
   buffers; positions the bucket adds are masked out (rows without tokens, keys never
   attended), so they do not change any real position's result;
3. replay; the graph holds the whole encoder, and on the packed path also the unpad and
   the pad (:func:`fastbert.ops.padding.bucket_layout`: the extra tokens form
   sequences of their own);
4. the real ``(batch, seq)`` part of the static output is **copied** out: a returned
   tensor is the caller's, never overwritten by a later replay.

Graphs are used for CUDA inputs in inference (``eval()`` and no gradient needed, e.g.
under ``torch.no_grad()``/``torch.inference_mode()``) with a padding mask (or none);
everything else runs the eager encoder: batches or sequences past the largest bucket,
``output_hidden_states``, general 3D/4D masks, training, ``torch.compile``. Changing the
model's device or dtype drops the graphs (they are captured again on use);
``load_state_dict`` copies into the same tensors, which the graphs keep reading.
:meth:`CudaGraphRunner.memory` reports what the graphs hold, and each capture logs it
(logger ``fastbert.cuda_graphs``, level INFO).

On the CPU, ``replay_eagerly=True`` runs the very same bucketed steps (static buffers,
bucket layout, masking) without a graph: how the tests check them without a GPU.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import logging
import time
import warnings
from typing import Callable, NamedTuple

import torch

from fastbert.modules.unpad_policy import plan_unpad
from fastbert.ops import padding
from fastbert.ops.attention import packed_attention_args

logger = logging.getLogger("fastbert.cuda_graphs")

MIN_TOKEN_BUCKET = 16


def _check_sizes(name: str, sizes) -> tuple[int, ...]:
    """``sizes`` as a tuple; TypeError unless it is a sequence (a tuple, a list, ...), ValueError
    unless its entries are increasing positive ints."""
    if isinstance(sizes, (str, bytes)) or not isinstance(sizes, collections.abc.Iterable):
        raise TypeError(
            f"{name} must be a sequence of increasing positive ints such as (1, 2, 4), got {sizes!r} "
            f"({type(sizes).__name__})"
        )
    sizes = tuple(sizes)
    if not sizes or any(type(s) is not int or s < 1 for s in sizes) or list(sizes) != sorted(set(sizes)):
        raise ValueError(f"{name} must be increasing positive ints, got {sizes!r}")
    return sizes


@dataclasses.dataclass(frozen=True)
class GraphBuckets:
    """The shapes graphs are captured for: batch sizes and sequence lengths (increasing).

    A batch runs in the graph of the smallest bucket that holds it; past the largest
    batch or sequence length it runs eagerly.
    """

    batches: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    seq_lens: tuple[int, ...] = (16, 32, 64, 128, 256, 512)

    def __post_init__(self) -> None:
        object.__setattr__(self, "batches", _check_sizes("batches", self.batches))
        object.__setattr__(self, "seq_lens", _check_sizes("seq_lens", self.seq_lens))

    def check_positions(self, max_sequence_length: int) -> None:
        """ValueError if a sequence length is longer than the model numbers positions for
        (``max_sequence_length``): no batch can reach that bucket, and one past every shorter
        bucket would be padded up to it."""
        too_long = [s for s in self.seq_lens if s > max_sequence_length]
        if too_long:
            raise ValueError(
                f"GraphBuckets seq_lens {too_long} exceed the model's position table "
                f"(at most {max_sequence_length} tokens); give sequence lengths up to {max_sequence_length}"
            )

    def batch_bucket(self, batch: int) -> int | None:
        """The smallest bucket batch size ``>= batch``; None past the largest."""
        return next((b for b in self.batches if b >= batch), None)

    def seq_bucket(self, seq: int) -> int | None:
        """The smallest bucket sequence length ``>= seq``; None past the largest."""
        return next((s for s in self.seq_lens if s >= seq), None)

    @staticmethod
    def token_bucket(tokens: int, batch_bucket: int, seq_bucket: int) -> int:
        """Packed rows a graph computes for ``tokens`` real tokens: the next power of two
        (at least ``MIN_TOKEN_BUCKET``), at most ``batch_bucket * seq_bucket``."""
        return min(max(MIN_TOKEN_BUCKET, 1 << max(tokens - 1, 0).bit_length()), batch_bucket * seq_bucket)


_warned_without_cuda = False


def warn_without_cuda() -> None:
    """Warn, once per process, when CUDA graphs are switched on where PyTorch sees no CUDA
    device: every call then runs the eager encoder (graphs need CUDA inputs)."""
    global _warned_without_cuda
    if _warned_without_cuda or torch.cuda.is_available():
        return
    _warned_without_cuda = True
    warnings.warn(
        "cuda_graphs: no CUDA device is available, so every forward runs eagerly (no graph) "
        "until the model and its inputs are on CUDA",
        UserWarning,
        stacklevel=3,
    )


class GraphMemory(NamedTuple):
    """What a runner's graphs hold (:meth:`CudaGraphRunner.memory`)."""

    graphs: int  # captured graphs
    input_bytes: int  # static input buffers (hidden states and masks of each bucket shape)
    pool_bytes: int  # the graphs' memory pool: growth of reserved CUDA memory during the captures (0 on the CPU)

    @property
    def total_bytes(self) -> int:
        """Input buffers and pool together."""
        return self.input_bytes + self.pool_bytes


class _Inputs(NamedTuple):
    hidden: torch.Tensor  # (batch_bucket, seq_bucket, hidden)
    keep: torch.Tensor  # (batch_bucket, seq_bucket) bool: real tokens


class _Graph(NamedTuple):
    replay: Callable[[], torch.Tensor]  # returns the static output (batch_bucket, seq_bucket, hidden)
    graph: object  # the torch.cuda.CUDAGraph (None when replayed eagerly), kept alive with its output


class CudaGraphRunner:
    """Runs a :class:`~fastbert.modules.encoder.FastBertEncoder` from CUDA graphs per shape
    bucket (see the module docstring); the encoder calls :meth:`run` on every forward.

    Holds no reference to the encoder (it is passed to each call), and copies or pickles
    as its settings only: captured graphs stay with the object that captured them.
    """

    def __init__(self, buckets: GraphBuckets | None = None, replay_eagerly: bool = False) -> None:
        self.buckets = buckets or GraphBuckets()
        self.replay_eagerly = replay_eagerly
        self.eager_calls = 0  # calls :meth:`run` left to the eager encoder
        self._inputs: dict[tuple, _Inputs] = {}
        self._graphs: dict[tuple, _Graph] = {}
        self._pool = None
        self._pool_bytes = 0

    def __getstate__(self) -> dict:
        return {"buckets": self.buckets, "replay_eagerly": self.replay_eagerly}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["buckets"], state["replay_eagerly"])

    def __deepcopy__(self, memo) -> CudaGraphRunner:
        return CudaGraphRunner(self.buckets, self.replay_eagerly)

    def reset(self) -> None:
        """Drop every graph and buffer (the next calls capture again)."""
        self.__init__(self.buckets, self.replay_eagerly)

    def memory(self) -> GraphMemory:
        """The number of captured graphs and the bytes they hold."""
        inputs = sum(t.numel() * t.element_size() for buf in self._inputs.values() for t in buf)
        return GraphMemory(len(self._graphs), inputs, self._pool_bytes)

    def run(self, encoder, hidden_states: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor | None:
        """The encoder's ``last_hidden_state`` for ``(batch, seq, hidden)`` states and a
        normalized mask, from a graph; None when this call must run eagerly (module docstring)."""
        keep = self._padding_keep(hidden_states, mask)
        batch, seq = hidden_states.shape[:2]
        batch_bucket, seq_bucket = self.buckets.batch_bucket(batch), self.buckets.seq_bucket(seq)
        if keep is None or batch_bucket is None or seq_bucket is None or not self._applies(encoder, hidden_states):
            self.eager_calls += 1
            return None
        plan = plan_unpad(encoder.unpad, mask, batch)
        shape = (batch_bucket, seq_bucket, hidden_states.shape[2], hidden_states.dtype, hidden_states.device)
        inputs = self._inputs.get(shape) or self._new_inputs(shape)
        tokens = None if plan is None else GraphBuckets.token_bucket(plan.tokens, batch_bucket, seq_bucket)
        graph = self._graphs.get((shape, tokens)) or self._capture(encoder, shape, tokens, inputs)
        inputs.hidden[:batch, :seq].copy_(hidden_states)
        inputs.keep.zero_()
        inputs.keep[:batch, :seq] = True if keep is True else keep
        return graph.replay()[:batch, :seq].clone()

    # --- when a graph applies --------------------------------------------------------

    def _applies(self, encoder, hidden_states: torch.Tensor) -> bool:
        if torch.compiler.is_compiling() or encoder.training:
            return False
        if not (hidden_states.is_cuda or self.replay_eagerly):
            return False
        if torch.is_grad_enabled() and (hidden_states.requires_grad or any(p.requires_grad for p in encoder.parameters())):
            return False
        return True

    @staticmethod
    def _padding_keep(hidden_states: torch.Tensor, mask: torch.Tensor | None):
        """The ``(batch, seq)`` real-token mask of a padding mask (True without a mask); None for
        masks a graph does not take (3D/4D masks that differ per query or head, additive ones)."""
        if mask is None:
            return True
        if mask.dtype != torch.bool or mask.shape[1] != 1 or mask.shape[2] != 1:
            return None
        return mask[:, 0, 0, :].expand(hidden_states.shape[0], -1)

    # --- buffers and capture ---------------------------------------------------------

    def _new_inputs(self, shape: tuple) -> _Inputs:
        batch, seq, width, dtype, device = shape
        with torch.inference_mode(False):  # plain tensors: written in place under any grad mode
            inputs = _Inputs(
                torch.zeros(batch, seq, width, dtype=dtype, device=device),
                torch.zeros(batch, seq, dtype=torch.bool, device=device),
            )
        self._inputs[shape] = inputs
        return inputs

    def _capture(self, encoder, shape: tuple, tokens: int | None, inputs: _Inputs) -> _Graph:
        batch, seq = shape[:2]
        if tokens is None:
            def step() -> torch.Tensor:
                return encoder._run(inputs.hidden, False, attn_mask=inputs.keep[:, None, None, :]).last_hidden_state
        else:
            def step() -> torch.Tensor:
                layout = padding.bucket_layout(inputs.keep, tokens, seq)
                packed = padding.gather_bucket(inputs.hidden, layout)
                args = packed_attention_args(layout.cu_seqlens, seq, tokens)
                out = encoder._run(packed, False, **args).last_hidden_state
                return padding.pad_bucket(out, layout, batch, seq)

        started = time.perf_counter()
        graph = _Graph(step, None) if self.replay_eagerly else self._record(step, shape[4])
        self._graphs[(shape, tokens)] = graph
        memory = self.memory()
        path = "padded" if tokens is None else f"packed, {tokens} tokens"
        logger.info(
            "fastbert: captured a CUDA graph for batch %d x seq %d (%s) in %.0f ms; %d graph(s) hold %.1f MiB "
            "(pool %.1f MiB, inputs %.1f MiB)", batch, seq, path, (time.perf_counter() - started) * 1e3,
            memory.graphs, memory.total_bytes / 2**20, memory.pool_bytes / 2**20, memory.input_bytes / 2**20,
        )  # fmt: skip
        return graph

    def _record(self, step: Callable[[], torch.Tensor], device: torch.device) -> _Graph:
        """Warm ``step`` up on a side stream (autotuning, lazy initialization), then capture it
        into this runner's memory pool."""
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream):
            for _ in range(2):
                step()
        torch.cuda.current_stream(device).wait_stream(stream)
        torch.cuda.synchronize(device)
        reserved = torch.cuda.memory_reserved(device)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            out = step()
        if self._pool is None:
            self._pool = graph.pool()
        self._pool_bytes += max(0, torch.cuda.memory_reserved(device) - reserved)

        def replay() -> torch.Tensor:
            graph.replay()
            return out

        return _Graph(replay, graph)
