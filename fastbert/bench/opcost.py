"""Counted FLOPs and bytes of one encoder forward, per class of work.

Counted analytically from the HF config for a batch of ``batch`` rows of ``seq_len`` real
tokens each (T = batch * seq_len tokens), hidden size H, intermediate size I, L layers,
element size e bytes. A multiply-add counts as 2 FLOPs. Bytes are the *minimum* traffic:
every input read once and every output written once (an implementation that materializes
intermediates, such as eager attention's score matrix, moves more; its achieved GB/s is
then an underestimate of its real traffic).

- matmul, per layer: QKV (T x H) @ (H x 3H), output projection H x H, FFN H x I and I x H:
  FLOPs 2 T (3H^2 + H^2 + 2 H I); bytes e (A + W + C) per GEMM. Plus the pooler
  (B x H) @ (H x H) when the model has one. Biases and activations are not counted.
- attention, per layer: Q K^T and P V over full (non-causal) rows: FLOPs 4 B S^2 H;
  bytes e * 4 T H (read Q, K, V, write the output).
- layernorm, per layer: two residual-add + LayerNorms, each reading x and the residual and
  writing the output: bytes 2 * 3 e T H; FLOPs not counted (memory-bound).
- embedding: word, position and token-type rows read and the normalized sum written:
  bytes 4 e T H; FLOPs not counted.
ALBERT's embedding projection and DistilBERT's missing token types are not modelled.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Cost:
    """Counted work of one class for one forward (flops None where not counted)."""

    flops: float | None
    bytes: float


def encoder_dims(config) -> tuple[int, int, int]:
    """(layers, hidden, intermediate) from an HF config of any supported family."""
    layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layers")
    hidden = getattr(config, "hidden_size", None) or getattr(config, "dim")
    inter = getattr(config, "intermediate_size", None) or getattr(config, "hidden_dim")
    return int(layers), int(hidden), int(inter)


def forward_costs(config, batch: int, seq_len: int, elem_bytes: int, pooler: bool) -> dict[str, Cost]:
    """``{class: Cost}`` for one forward (see the module docstring for the formulas)."""
    layers, h, inter = encoder_dims(config)
    t, e = batch * seq_len, elem_bytes

    def gemm_bytes(m, k, n):
        return e * (m * k + k * n + m * n)

    mm_flops = layers * 2 * t * (4 * h * h + 2 * h * inter)
    mm_bytes = layers * (gemm_bytes(t, h, 3 * h) + gemm_bytes(t, h, h) + gemm_bytes(t, h, inter) + gemm_bytes(t, inter, h))
    if pooler:
        mm_flops += 2 * batch * h * h
        mm_bytes += gemm_bytes(batch, h, h)
    return {
        "matmul": Cost(float(mm_flops), float(mm_bytes)),
        "attention": Cost(float(layers * 4 * batch * seq_len * seq_len * h), float(layers * e * 4 * t * h)),
        "layernorm": Cost(None, float(layers * 2 * 3 * e * t * h)),
        "embedding": Cost(None, float(4 * e * t * h)),
    }
