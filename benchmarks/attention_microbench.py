"""fastbert's fused attention vs PyTorch SDPA (flash backend), in TFLOP/s, forward and forward+backward.

    python benchmarks/attention_microbench.py --json attention.json            # on a GPU
    python benchmarks/attention_microbench.py --json attention.json --tiny     # dry run (CPU)

Shapes (batch, heads, seq, head_dim): (32, 16, 512, 64), (32, 16, 512, 128),
(8, 16, 2048, 128); no mask (both sides attend to every key); fp16 by default.

- ``fastbert``: ``fastbert.ops.attention`` on the fused ``(batch, seq, 3 * hidden)`` QKV
  tensor the encoder uses (its Triton kernels on a GPU), gradients through autograd
  into one fused dQKV tensor;
- ``sdpa_flash``: ``torch.nn.functional.scaled_dot_product_attention`` restricted to the
  flash backend (``sdpa_kernel(SDPBackend.FLASH_ATTENTION)``) on separate contiguous
  ``(batch, heads, seq, head_dim)`` Q, K, V: its own best layout.

FLOPs (the count FlashAttention's benchmarks use): forward ``4 * B * H * S^2 * D`` (the
two matmuls Q K^T and P V, 2 FLOPs per multiply-add); backward 2.5 times that (five
matmuls of the same size, the recomputed Q K^T included); forward+backward
``14 * B * H * S^2 * D``. TFLOP/s = FLOPs / median time. Softmax, scaling and masking
are not counted. Timing: ``triton.testing.do_bench`` median (CUDA events; every input
here is over 60 MB, larger than an H100/H200's L2, so no input rotation is needed).
Before timing, both outputs (and gradients) are compared: relative error over 1e-2
marks the row failed and the script exits 1.
"""

from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import microbench  # noqa: E402  (beside this file)

SHAPES = [(32, 16, 512, 64), (32, 16, 512, 128), (8, 16, 2048, 128)]
TINY_SHAPES = [(2, 2, 64, 32), (1, 2, 96, 64)]
MODES = ("fwd", "fwd+bwd")
TOLERANCE = 1e-2


def flops(batch: int, heads: int, seq: int, head_dim: int, mode: str) -> float:
    """Matmul FLOPs of attention (see the module docstring)."""
    forward = 4.0 * batch * heads * seq * seq * head_dim
    return forward if mode == "fwd" else 3.5 * forward


def _sdpa(q, k, v):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v)


def make_case(shape: tuple[int, int, int, int], dtype: torch.dtype, dev: torch.device, seed: int) -> dict:
    """Random inputs for both sides: the same Q, K, V values in each one's layout."""
    batch, heads, seq, head_dim = shape
    gen = torch.Generator(device=dev).manual_seed(seed)
    qkv = torch.randn(batch, seq, 3 * heads * head_dim, device=dev, dtype=dtype, generator=gen)
    q, k, v = (t.transpose(1, 2).contiguous() for t in qkv.view(batch, seq, 3, heads, head_dim).unbind(2))
    dout = torch.randn(batch, seq, heads * head_dim, device=dev, dtype=dtype, generator=gen)
    return {"qkv": qkv.requires_grad_(), "q": q.requires_grad_(), "k": k.requires_grad_(), "v": v.requires_grad_(),
            "dout": dout, "dout_heads": dout.view(batch, seq, heads, head_dim).transpose(1, 2).contiguous(),
            "heads": heads}  # fmt: skip


def runners(case: dict) -> dict[str, dict]:
    """Per side: forward, and forward+backward returning the gradients (not accumulated)."""
    import fastbert

    def fb_fwd():
        return fastbert.ops.attention(case["qkv"], case["heads"])

    def fb_both():
        return torch.autograd.grad(fb_fwd(), case["qkv"], case["dout"])[0]

    def sdpa_fwd():
        return _sdpa(case["q"], case["k"], case["v"])

    def sdpa_both():
        return torch.autograd.grad(sdpa_fwd(), (case["q"], case["k"], case["v"]), case["dout_heads"])

    return {"fastbert": {"fwd": fb_fwd, "fwd+bwd": fb_both}, "sdpa_flash": {"fwd": sdpa_fwd, "fwd+bwd": sdpa_both}}


def agreement(case: dict, fns: dict[str, dict]) -> dict[str, float]:
    """Relative error of fastbert against SDPA: output, and the Q, K, V gradients."""
    batch, seq, _ = case["qkv"].shape
    heads = case["heads"]
    with torch.no_grad():
        out_fb = fns["fastbert"]["fwd"]()
        out_ref = fns["sdpa_flash"]["fwd"]().transpose(1, 2).reshape(batch, seq, -1)
    grad_fb = fns["fastbert"]["fwd+bwd"]().view(batch, seq, 3, heads, -1)
    grads_ref = fns["sdpa_flash"]["fwd+bwd"]()
    errors = {"out": microbench.rel_err(out_fb, out_ref)}
    for i, name in enumerate("qkv"):
        errors[f"d{name}"] = microbench.rel_err(grad_fb[:, :, i].transpose(1, 2), grads_ref[i])
    return errors


def measure(shape: tuple[int, int, int, int], dtype_name: str, dev: torch.device) -> list[dict]:
    """Both passes of one shape: TFLOP/s of each side, after checking they agree."""
    case = make_case(shape, microbench.DTYPES[dtype_name], dev, seed=sum(shape))
    fns = runners(case)
    errors = agreement(case, fns)
    agrees = all(e < TOLERANCE for e in errors.values())  # NaN compares False: fails
    rows = []
    for mode in MODES:
        row = {"batch": shape[0], "heads": shape[1], "seq": shape[2], "head_dim": shape[3], "dtype": dtype_name,
               "mode": mode, "flops": flops(*shape, mode), "rel_err": errors, "agrees": agrees}  # fmt: skip
        microbench.time_sides(row, {side: by_mode[mode] for side, by_mode in fns.items()}, dev, row["flops"] / 1e12, "tflops")
        row["fastbert_over_sdpa"] = microbench.sig(row["sdpa_flash_ms"] / row["fastbert_ms"], 3)
        rows.append(row)
    return rows


def describe(row: dict) -> str:
    """One printed line per row."""
    return (f"{row['dtype']} B={row['batch']} H={row['heads']} S={row['seq']} D={row['head_dim']} {row['mode']:<8} "
            f"fastbert {row['fastbert_tflops']:8.4g} TFLOP/s  sdpa_flash {row['sdpa_flash_tflops']:8.4g} TFLOP/s  "
            f"x{row['fastbert_over_sdpa']:.2f}")


def main(argv: list[str] | None = None) -> int:
    return microbench.run(argv, __doc__.splitlines()[0], SHAPES, TINY_SHAPES, measure, describe,
                          flop_formula="fwd 4*B*H*S^2*D; fwd+bwd 14*B*H*S^2*D (bwd = 2.5 x fwd)",
                          baseline="torch scaled_dot_product_attention, SDPBackend.FLASH_ATTENTION only")


if __name__ == "__main__":
    sys.exit(main())
