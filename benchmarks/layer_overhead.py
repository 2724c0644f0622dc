"""Host-side (Python) overhead of one FastBertLayer forward, on tiny tensors, on the CPU.

    python benchmarks/layer_overhead.py                  # torch backend, padded and packed
    python benchmarks/layer_overhead.py --triton         # also the Triton dispatch path, kernels stubbed out

With hidden 64 and 2 x 8 tokens the arithmetic is negligible, so the time of a call is
what the layer costs the host: argument checks, backend dispatch, custom-op wrappers,
launcher bookkeeping. ``--triton`` runs the Triton path (``TRITON_INTERPRET=1`` selects it
on the CPU) with every kernel launch replaced by a no-op, so the interpreter's run time
is excluded and what remains is fastbert's own Python between the layer and the launch
(outputs are left unwritten: this mode measures time, not results). Each figure is the
median over ``--calls`` calls, the minimum over ``--repeats`` interleaved repeats (a
shared, noisy machine); microseconds per layer forward.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from unittest import mock

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from fastbert.modules.layer import FastBertLayer  # noqa: E402
from fastbert.ops import padding  # noqa: E402

HIDDEN, HEADS, INTER, BATCH, SEQ = 64, 2, 128, 2, 8


def layer_inputs() -> dict[str, tuple]:
    """Padded ``(2, 8, 64)`` input, and the same rows packed (lengths 8 and 5)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, SEQ, HIDDEN, generator=gen)
    keep = torch.arange(SEQ)[None, :] < torch.tensor([SEQ, 5])[:, None]
    packed = padding.unpad(x, keep)
    indices = padding.varlen_indices(packed.cu_seqlens, packed.max_seqlen, packed.packed.shape[0])
    return {
        "padded": (x, {}),
        "packed": (packed.packed, {"cu_seqlens": packed.cu_seqlens, "max_seqlen": packed.max_seqlen, "indices": indices}),
    }


def median_us(fn, calls: int) -> float:
    """Median microseconds of ``fn()`` over ``calls`` calls (after a few warm-up calls)."""
    for _ in range(10):
        fn()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


class _NoKernel:
    """Stands in for an autotuned Triton kernel: ``kernel[grid](*args)`` does nothing."""

    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


@contextlib.contextmanager
def stubbed_kernels():
    """The Triton path with every kernel launch a no-op (``TRITON_INTERPRET=1`` selects it on the CPU)."""
    from fastbert.kernels import attention, layernorm, linear

    with mock.patch.dict(os.environ, {"TRITON_INTERPRET": "1", "FASTBERT_BACKEND": "triton"}), \
            mock.patch.object(attention, "_tuned", lambda *a: _NoKernel()), \
            mock.patch.object(layernorm, "_tuned", lambda *a: _NoKernel()), \
            mock.patch.object(linear, "_tuned", lambda *a: _NoKernel()):  # fmt: skip
        yield


def measure(calls: int, repeats: int, triton: bool) -> dict[str, float]:
    """``{path: microseconds per layer forward}`` for the torch backend (and the stubbed Triton path)."""
    torch.manual_seed(0)
    layer = FastBertLayer(HIDDEN, HEADS, INTER).eval()
    cases = layer_inputs()
    modes = {"torch": lambda: mock.patch.dict(os.environ, {"FASTBERT_BACKEND": "torch"})}
    if triton:
        modes["triton (kernels stubbed)"] = stubbed_kernels
    best: dict[str, float] = {}
    with torch.inference_mode():
        for _ in range(repeats):
            for mode, context in modes.items():
                with context():
                    for case, (x, kwargs) in cases.items():
                        us = median_us(lambda: layer(x, **kwargs), calls)
                        key = f"{mode}, {case}"
                        best[key] = min(best.get(key, float("inf")), us)
    return best


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calls", type=int, default=2000, help="timed calls per figure (median)")
    p.add_argument("--repeats", type=int, default=3, help="interleaved repeats (minimum)")
    p.add_argument("--triton", action="store_true", help="also the Triton dispatch path with kernels stubbed out")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    for key, us in measure(args.calls, args.repeats, args.triton).items():
        print(f"{key:<36} {us:8.1f} us per layer forward")
    return 0


if __name__ == "__main__":
    sys.exit(main())
