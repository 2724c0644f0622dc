"""Fused embeddings: gather word + token-type + position rows, sum, LayerNorm, dropout.

``y = dropout(LayerNorm(word[ids] + type[type_ids] + position[pos_ids]))`` in one kernel
(oracle: ``fastbert.ops.embeddings.embeddings_reference``). The three rows are summed
in fp32 in Hugging Face's order (word, type, position), normalized with fp32
statistics, and rounded once. ``inputs_embeds`` replaces the word gather.

Backward by recomputation (the gathers are cheap): dropout's mask is regenerated from
its seed (same Philox keying as :mod:`fastbert.kernels.layernorm`: row in the key,
column as counter), the LayerNorm backward gives ``dh``, which is scattered with
``tl.atomic_add`` into fp32 accumulators shaped like the tables (cast to the table
dtype afterwards), or written as the gradient of ``inputs_embeds``. dweight/dbias of
the LayerNorm use per-program partial sums and a second small reduction.

Atomics make the table gradients' summation order nondeterministic (fp32 rounding
only). Position and token-type rows are shared by many tokens, so their atomics
contend; a per-program pre-reduction for them is a measured-on-GPU follow-up.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from fastbert.kernels import launch, registry
from fastbert.kernels.dtypes import TRITON_NAMES
from fastbert.kernels.layernorm import MAX_HIDDEN, column_sums, dropout_keep, layernorm_configs
from fastbert.kernels.registry import Variant



# The backward keeps three row-index vectors live and issues atomics: more registers
# than the LayerNorm backward, so its own (BLOCK_M, num_warps) table per row-width
# bucket (the LayerNorm one spills on sm_90 at BLOCK_M=16 x 128 and 4 x 1024 on 8 warps).
_BWD_TABLE = {128: [(8, 4), (4, 4), (16, 8)], 1024: [(2, 4), (1, 4), (2, 8)], 4096: [(1, 8), (1, 16)]}


def embeddings_configs(kernel: str, arch: int, *, block_n: int) -> list[triton.Config]:
    """The forward reuses the LayerNorm forward's row-tile configs; the backward has its own."""
    if kernel == "embeddings_fwd":
        return layernorm_configs("layernorm_fwd", arch, block_n=block_n)
    bucket = next(b for b in _BWD_TABLE if block_n <= b)
    return [triton.Config({"BLOCK_M": m}, num_warps=w, num_stages=1) for m, w in _BWD_TABLE[bucket]]


_INTERPRETER_CONFIGS = {
    "embeddings_fwd": triton.Config({"BLOCK_M": 8}, num_warps=4, num_stages=1),
    "embeddings_bwd": triton.Config({"BLOCK_M": 4}, num_warps=4, num_stages=1),
}

_GATE_CASES = [("fp32", 96, False), ("fp16", 768, True), ("bf16", 1024, True), ("bf16", 4096, True)]


def _gate_variants(kernel: str) -> list[Variant]:
    variants = []
    for dtype, hidden, ids in _GATE_CASES:
        t = f"*{dtype}"
        args = {"Ids": "*i64", "PosIds": "*i64", "TypeIds": "*i64", "Word": t, "PosW": t, "TypeW": t, "Emb": t,
                "W": t, "Mean": "*fp32", "Rstd": "*fp32",
                "stride_ids_b": 512, "stride_ids_s": 1, "stride_pos_b": 0, "stride_pos_s": 1,
                "stride_type_b": 512, "stride_type_s": 1, "stride_emb_b": 512 * hidden, "stride_emb_s": hidden,
                "n_rows": "i32", "seq": 512, "n_cols": hidden, "dropout_p": "fp32", "seed": "i32",
                "HAS_IDS": ids, "HAS_TYPE": True, "HAS_TYPE_IDS": True, "HAS_DROPOUT": True,
                "BLOCK_N": triton.next_power_of_2(hidden)}  # fmt: skip
        if kernel == "embeddings_fwd":
            args |= {"B": t, "Out": t, "eps": "fp32"}
        else:
            args |= {"dY": t, "dWord": "*fp32", "dPos": "*fp32", "dType": "*fp32", "dEmb": t, "Partial": "*fp32"}
        label = f"{dtype} hidden={hidden} {'ids' if ids else 'inputs_embeds'}+types+dropout"
        variants.append(Variant(label, args, {"block_n": triton.next_power_of_2(hidden)}, False))
    return variants


def _register(name: str):
    return registry.kernel(name=name, variants=_gate_variants(name), configs=functools.partial(embeddings_configs, name))


@triton.jit
def _gather_sum(Ids, PosIds, TypeIds, Word, PosW, TypeW, Emb, rows, cols, mask,
                stride_ids_b, stride_ids_s, stride_pos_b, stride_pos_s, stride_type_b, stride_type_s,
                stride_emb_b, stride_emb_s, n_rows, seq, n_cols,
                HAS_IDS: tl.constexpr, HAS_TYPE: tl.constexpr, HAS_TYPE_IDS: tl.constexpr):  # fmt: skip
    """fp32 ``word + type + position`` for a (rows, cols) tile, and the (word, pos, type) row indices."""
    b = rows // seq
    s = rows % seq
    r_ok = rows < n_rows
    word_row = tl.zeros_like(rows).to(tl.int64)
    if HAS_IDS:
        word_row = tl.load(Ids + b.to(tl.int64) * stride_ids_b + s * stride_ids_s, mask=r_ok, other=0).to(tl.int64)
        h = tl.load(Word + word_row[:, None] * n_cols + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    else:
        emb = Emb + b.to(tl.int64)[:, None] * stride_emb_b + s[:, None] * stride_emb_s + cols[None, :]
        h = tl.load(emb, mask=mask, other=0.0).to(tl.float32)
    type_row = tl.zeros_like(rows).to(tl.int64)
    if HAS_TYPE:
        if HAS_TYPE_IDS:
            type_row = tl.load(TypeIds + b.to(tl.int64) * stride_type_b + s * stride_type_s, mask=r_ok, other=0).to(tl.int64)
        h += tl.load(TypeW + type_row[:, None] * n_cols + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    pos_row = tl.load(PosIds + b.to(tl.int64) * stride_pos_b + s * stride_pos_s, mask=r_ok, other=0).to(tl.int64)
    h += tl.load(PosW + pos_row[:, None] * n_cols + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    return h, word_row, pos_row, type_row


@_register("embeddings_fwd")
def _embeddings_fwd(
    Ids, PosIds, TypeIds, Word, PosW, TypeW, Emb, W, B, Out, Mean, Rstd,
    stride_ids_b, stride_ids_s, stride_pos_b, stride_pos_s, stride_type_b, stride_type_s,
    stride_emb_b, stride_emb_s,
    n_rows, seq, n_cols, eps, dropout_p, seed,
    HAS_IDS: tl.constexpr, HAS_TYPE: tl.constexpr, HAS_TYPE_IDS: tl.constexpr, HAS_DROPOUT: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_N)
    col_ok = cols < n_cols
    row_ok = rows < n_rows
    mask = row_ok[:, None] & col_ok[None, :]
    h, _, _, _ = _gather_sum(Ids, PosIds, TypeIds, Word, PosW, TypeW, Emb, rows, cols, mask,
                             stride_ids_b, stride_ids_s, stride_pos_b, stride_pos_s, stride_type_b, stride_type_s,
                             stride_emb_b, stride_emb_s, n_rows, seq, n_cols, HAS_IDS, HAS_TYPE, HAS_TYPE_IDS)  # fmt: skip
    mean = tl.sum(h, 1) / n_cols
    d = tl.where(mask, h - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(d * d, 1) / n_cols + eps)
    w = tl.load(W + cols, mask=col_ok, other=0.0).to(tl.float32)
    bias = tl.load(B + cols, mask=col_ok, other=0.0).to(tl.float32)
    y = d * rstd[:, None] * w[None, :] + bias[None, :]
    if HAS_DROPOUT:
        y = tl.where(dropout_keep(seed, rows, cols, dropout_p), y * (1.0 / (1.0 - dropout_p)), 0.0)
    tl.store(Out + rows.to(tl.int64)[:, None] * n_cols + cols[None, :], y.to(Out.dtype.element_ty), mask=mask)
    tl.store(Mean + rows, mean, mask=row_ok)
    tl.store(Rstd + rows, rstd, mask=row_ok)


@_register("embeddings_bwd")
def _embeddings_bwd(
    dY, Ids, PosIds, TypeIds, Word, PosW, TypeW, Emb, W, Mean, Rstd, dWord, dPos, dType, dEmb, Partial,
    stride_ids_b, stride_ids_s, stride_pos_b, stride_pos_s, stride_type_b, stride_type_s,
    stride_emb_b, stride_emb_s,
    n_rows, seq, n_cols, dropout_p, seed,
    HAS_IDS: tl.constexpr, HAS_TYPE: tl.constexpr, HAS_TYPE_IDS: tl.constexpr, HAS_DROPOUT: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr,
):  # fmt: skip
    # dY is contiguous (rows, n_cols); dWord/dPos/dType are fp32 accumulators shaped like
    # the tables; dEmb (rows, n_cols) gets the inputs_embeds gradient when not HAS_IDS.
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_N)
    col_ok = cols < n_cols
    w = tl.load(W + cols, mask=col_ok, other=0.0).to(tl.float32)
    acc_dw = tl.zeros([BLOCK_N], tl.float32)
    acc_db = tl.zeros([BLOCK_N], tl.float32)
    for start in range(pid * BLOCK_M, n_rows, tl.num_programs(0) * BLOCK_M):
        rows = start + tl.arange(0, BLOCK_M)
        row_ok = rows < n_rows
        mask = row_ok[:, None] & col_ok[None, :]
        h, word_row, pos_row, type_row = _gather_sum(
            Ids, PosIds, TypeIds, Word, PosW, TypeW, Emb, rows, cols, mask,
            stride_ids_b, stride_ids_s, stride_pos_b, stride_pos_s, stride_type_b, stride_type_s,
            stride_emb_b, stride_emb_s, n_rows, seq, n_cols, HAS_IDS, HAS_TYPE, HAS_TYPE_IDS,
        )  # fmt: skip
        mean = tl.load(Mean + rows, mask=row_ok, other=0.0)
        rstd = tl.load(Rstd + rows, mask=row_ok, other=0.0)
        flat = rows.to(tl.int64)[:, None] * n_cols + cols[None, :]
        dy = tl.load(dY + flat, mask=mask, other=0.0).to(tl.float32)
        if HAS_DROPOUT:
            dy = tl.where(dropout_keep(seed, rows, cols, dropout_p), dy * (1.0 / (1.0 - dropout_p)), 0.0)
        xhat = tl.where(mask, (h - mean[:, None]) * rstd[:, None], 0.0)
        wdy = dy * w[None, :]
        c1 = tl.sum(xhat * wdy, 1) / n_cols
        c2 = tl.sum(wdy, 1) / n_cols
        dh = (wdy - (xhat * c1[:, None] + c2[:, None])) * rstd[:, None]
        acc_dw += tl.sum(dy * xhat, 0)
        acc_db += tl.sum(dy, 0)
        if HAS_IDS:
            tl.atomic_add(dWord + word_row[:, None] * n_cols + cols[None, :], dh, mask=mask)
        else:
            tl.store(dEmb + flat, dh.to(dEmb.dtype.element_ty), mask=mask)
        tl.atomic_add(dPos + pos_row[:, None] * n_cols + cols[None, :], dh, mask=mask)
        if HAS_TYPE:
            tl.atomic_add(dType + type_row[:, None] * n_cols + cols[None, :], dh, mask=mask)
    base = Partial + pid.to(tl.int64) * 2 * n_cols + cols
    tl.store(base, acc_dw, mask=col_ok)
    tl.store(base + n_cols, acc_db, mask=col_ok)


# ---------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------

_TUNING_KEY = ["BLOCK_N", "HAS_IDS", "HAS_TYPE", "HAS_TYPE_IDS", "HAS_DROPOUT"]


@functools.lru_cache(maxsize=None)
def _tuned(name: str, arch: int, block_n: int):
    entry = registry.get(name)
    configs = [_INTERPRETER_CONFIGS[name]] if arch == 0 else entry.configs(arch, block_n=block_n)
    # The backward accumulates with atomics: every autotuning trial would add again, so
    # the accumulators are zeroed before each trial.
    reset = ["dWord", "dPos", "dType"] if name == "embeddings_bwd" else None
    return triton.autotune(configs=configs, key=_TUNING_KEY, reset_to_zero=reset)(entry.fn)


def _index_arg(name: str, ids: torch.Tensor | None, batch: int, seq: int, device) -> tuple:
    """(tensor, stride_b, stride_s) of integer ids broadcast to (batch, seq)."""
    if ids is None:
        return None, 0, 0
    if not isinstance(ids, torch.Tensor) or ids.dtype not in (torch.int32, torch.int64) or ids.device != device:
        raise TypeError(f"{name} must be an int32/int64 tensor on {device}, got {getattr(ids, 'dtype', type(ids).__name__)}")
    try:
        full = torch.broadcast_to(ids, (batch, seq))
    except RuntimeError:
        raise ValueError(f"{name} of shape {tuple(ids.shape)} does not broadcast to (batch, seq) = {(batch, seq)}") from None
    return full, full.stride(0), full.stride(1)


def _table(name: str, t: torch.Tensor | None, hidden: int, dtype: torch.dtype, device) -> torch.Tensor | None:
    if t is None:
        return None
    if not isinstance(t, torch.Tensor) or t.dim() != 2 or t.shape[1] != hidden or t.dtype != dtype or t.device != device:
        raise ValueError(f"{name} must be a {dtype} (rows, {hidden}) table on {device}, got "
                         f"{getattr(t, 'dtype', type(t).__name__)} {tuple(getattr(t, 'shape', ()))}")  # fmt: skip
    return t.contiguous()


def _prepare(input_ids, position_ids, token_type_ids, word_weight, position_weight, token_type_weight,
             norm_weight, norm_bias, inputs_embeds, dropout_p):  # fmt: skip
    """The kernel's tensor arguments, strides and flags, after the checks its indexing relies on
    (shapes, dtypes and devices of ids and tables: cheap, and a wrong one would read outside a
    tensor); ``dropout_p`` and the seed are the op's to check (the launchers trust their callers)."""
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("exactly one of input_ids and inputs_embeds must be given")
    if not isinstance(position_weight, torch.Tensor) or position_weight.dim() != 2:
        raise ValueError("position_weight must be a (positions, hidden) tensor")
    if position_weight.dtype not in TRITON_NAMES:
        raise TypeError(f"position_weight must be float16, bfloat16 or float32, got {position_weight.dtype}")
    device, hidden, dtype = position_weight.device, position_weight.shape[1], position_weight.dtype
    launch.check_device("position_weight", position_weight)
    if not 1 <= hidden <= MAX_HIDDEN:
        raise ValueError(f"hidden size must be in [1, {MAX_HIDDEN}] for the Triton embeddings, got {hidden}")
    if inputs_embeds is not None:
        if not isinstance(inputs_embeds, torch.Tensor) or inputs_embeds.dim() != 3 or inputs_embeds.shape[2] != hidden:
            raise ValueError(f"inputs_embeds must have shape (batch, seq, {hidden}), got {tuple(getattr(inputs_embeds, 'shape', ()))}")
        if inputs_embeds.dtype != dtype or inputs_embeds.device != device:
            raise ValueError(f"inputs_embeds must be {dtype} on {device}, got {inputs_embeds.dtype} on {inputs_embeds.device}")
        if inputs_embeds.stride(2) != 1:
            inputs_embeds = inputs_embeds.contiguous()
        batch, seq = inputs_embeds.shape[:2]
    else:
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
            raise ValueError(f"input_ids must have shape (batch, seq), got {tuple(getattr(input_ids, 'shape', ()))}")
        batch, seq = input_ids.shape
    ids, sib, sis = _index_arg("input_ids", input_ids, batch, seq, device)
    pos, spb, sps = _index_arg("position_ids", position_ids, batch, seq, device)
    if pos is None:
        raise ValueError("position_ids must be given")
    types, stb, sts = _index_arg("token_type_ids", token_type_ids, batch, seq, device)
    word = _table("word_weight", word_weight, hidden, dtype, device) if input_ids is not None else None
    posw = _table("position_weight", position_weight, hidden, dtype, device)
    typew = _table("token_type_weight", token_type_weight, hidden, dtype, device)
    for name, t in (("norm_weight", norm_weight), ("norm_bias", norm_bias)):
        if not isinstance(t, torch.Tensor) or t.shape != (hidden,) or t.dtype not in TRITON_NAMES or t.device != device:
            raise ValueError(f"{name} must be a float tensor of shape ({hidden},) on {device}")
    dummy = posw
    emb = inputs_embeds if inputs_embeds is not None else dummy
    tensors = (ids if ids is not None else pos, pos, types if types is not None else pos,
               word if word is not None else dummy, posw, typew if typew is not None else dummy, emb)  # fmt: skip
    strides = (sib, sis, spb, sps, stb, sts, emb.stride(0) if emb.dim() == 3 else 0, emb.stride(1) if emb.dim() == 3 else 0)
    flags = dict(HAS_IDS=input_ids is not None, HAS_TYPE=typew is not None, HAS_TYPE_IDS=types is not None,
                 HAS_DROPOUT=dropout_p > 0.0, BLOCK_N=triton.next_power_of_2(hidden))  # fmt: skip
    return tensors, strides, flags, (batch, seq, hidden, dtype, device)


def embeddings_forward(
    input_ids, position_ids, token_type_ids, word_weight, position_weight, token_type_weight,
    norm_weight, norm_bias, eps, inputs_embeds=None, dropout_p=0.0, seed=0,
):  # fmt: skip
    """``dropout(LayerNorm(word[input_ids] + type[token_type_ids] + position[position_ids]))``.

    Arguments as ``fastbert.ops.embeddings.embeddings`` (``position_ids`` and
    ``token_type_ids`` broadcast to (batch, seq); ``token_type_ids`` None means type 0;
    ``token_type_weight`` None means no token types), plus ``seed`` in ``[0, 2**31)``
    for the dropout mask. Returns ``(out, mean, rstd)``: ``out`` (batch, seq, hidden)
    contiguous in the tables' dtype, ``mean``/``rstd`` float32 per token.
    """
    tensors, strides, flags, (batch, seq, hidden, dtype, device) = _prepare(
        input_ids, position_ids, token_type_ids, word_weight, position_weight, token_type_weight,
        norm_weight, norm_bias, inputs_embeds, dropout_p,
    )  # fmt: skip
    n_rows = batch * seq
    out = launch.empty((batch, seq, hidden), dtype, device)
    mean = launch.empty((n_rows,), torch.float32, device)
    rstd = launch.empty((n_rows,), torch.float32, device)
    if n_rows == 0:
        return out, mean, rstd
    kernel = _tuned("embeddings_fwd", launch.arch(device), flags["BLOCK_N"])
    kernel[lambda meta: (triton.cdiv(n_rows, meta["BLOCK_M"]),)](
        *tensors, norm_weight, norm_bias, out, mean, rstd, *strides,
        n_rows, seq, hidden, float(eps), float(dropout_p), int(seed), **flags,
    )  # fmt: skip
    return out, mean, rstd


def embeddings_backward(
    dy, input_ids, position_ids, token_type_ids, word_weight, position_weight, token_type_weight,
    norm_weight, mean, rstd, inputs_embeds=None, dropout_p=0.0, seed=0,
):  # fmt: skip
    """Gradients of :func:`embeddings_forward` (same inputs, ``dropout_p`` and ``seed``).

    Returns ``(d_word, d_position, d_token_type, d_inputs_embeds, d_norm_weight,
    d_norm_bias)``: table gradients in the tables' dtype (None for an absent table; a
    ``d_word`` of None with ``inputs_embeds``), ``d_inputs_embeds`` (None with ids),
    and the LayerNorm's parameter gradients in float32.
    """
    tensors, strides, flags, (batch, seq, hidden, dtype, device) = _prepare(
        input_ids, position_ids, token_type_ids, word_weight, position_weight, token_type_weight,
        norm_weight, norm_weight, inputs_embeds, dropout_p,
    )  # fmt: skip
    n_rows = batch * seq
    if not isinstance(dy, torch.Tensor) or dy.shape != (batch, seq, hidden) or dy.device != device:
        raise ValueError(f"dy must be a tensor of shape {(batch, seq, hidden)} on {device}")
    for name, t in (("mean", mean), ("rstd", rstd)):
        if not isinstance(t, torch.Tensor) or t.shape != (n_rows,) or t.dtype != torch.float32 or t.stride(0) != 1:
            raise ValueError(f"{name} must be the forward's contiguous float32 tensor of shape ({n_rows},)")
    dy = dy.contiguous()
    accum = lambda t: torch.zeros(t.shape, dtype=torch.float32, device=device) if t is not None else None  # noqa: E731
    d_word = accum(word_weight) if input_ids is not None else None
    d_pos = accum(position_weight)
    d_type = accum(token_type_weight)
    d_emb = launch.empty((batch, seq, hidden), dtype, device) if input_ids is None else None
    programs = launch.persistent_programs(device, n_rows)
    partial = torch.empty((programs, 2 * hidden), dtype=torch.float32, device=device)
    if n_rows == 0:
        partial.zero_()
    else:
        kernel = _tuned("embeddings_bwd", launch.arch(device), flags["BLOCK_N"])
        kernel[(programs,)](
            dy, *tensors, norm_weight, mean, rstd,
            d_word if d_word is not None else d_pos, d_pos, d_type if d_type is not None else d_pos,
            d_emb if d_emb is not None else dy, partial, *strides,
            n_rows, seq, hidden, float(dropout_p), int(seed), **flags,
        )  # fmt: skip
    sums = column_sums(partial).view(2, hidden)
    cast = lambda t: t.to(dtype) if t is not None else None  # noqa: E731
    return cast(d_word), cast(d_pos), cast(d_type), d_emb, sums[0], sums[1]
