"""Padding-free execution on the CPU: fastbert packed vs fastbert padded vs HF, one process.

    python benchmarks/unpad_cpu.py                              # BERT-base, batch 16 x 128, ~50 % padding
    python benchmarks/unpad_cpu.py --threshold                  # also sweep the padding fraction near zero
    python benchmarks/unpad_cpu.py --threshold --write-table    # and write the CPU's "auto" threshold into
                                                                # fastbert/data/unpad_threshold.json
    python benchmarks/unpad_cpu.py --layers 4 --hidden 256 --seq 256   # a smaller BERT (heads of 64, FFN 4x hidden)

All variants run on the same inputs, interleaved round by round, after warm-up; the median
and the minimum of ``--repeats`` wall-clock times (time.perf_counter) are reported with ratios. The threshold
written is the largest measured padding fraction below the first one at which packed
beats padded by more than ``--margin`` (``fastbert.modules.unpad_policy`` unpads above it).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time

import torch

import fastbert
from fastbert.configs import hf_config
from fastbert.data.tables import write_table


def interleaved_times(fns: dict, repeats: int) -> dict[str, list[float]]:
    """Seconds of each ``fns[name]()`` over ``repeats`` rounds, the variants interleaved within
    each round (after one warm-up call each), so a busy machine slows them alike."""
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def batch_with_padding(vocab: int, batch: int, seq: int, min_len: int, seed: int):
    """Ids and mask with lengths drawn uniformly from [min_len, seq]."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(min_len, seq + 1, (batch,), generator=gen)
    ids = torch.randint(1000, vocab, (batch, seq), generator=gen)
    mask = (torch.arange(seq)[None, :] < lengths[:, None]).long()
    return ids.masked_fill(mask == 0, 0), mask


def compare(arch: str, batch: int, seq: int, min_len: int, repeats: int, seed: int = 0,
            layers: int | None = None, hidden: int | None = None) -> dict:
    """Times HF eager, HF SDPA, fastbert padded and fastbert packed on one padded batch
    (``layers``/``hidden`` override the named architecture: heads of 64, FFN 4x hidden)."""
    from transformers import AutoModel

    torch.manual_seed(seed)
    config = hf_config(arch)
    if layers is not None:
        config.num_hidden_layers = layers
    if hidden is not None:
        config.hidden_size, config.num_attention_heads, config.intermediate_size = hidden, max(1, hidden // 64), 4 * hidden
    variants = {}
    for impl in ("eager", "sdpa"):
        config._attn_implementation = impl
        variants[f"hf_{impl}"] = AutoModel.from_config(copy.deepcopy(config)).eval()
    base = variants["hf_sdpa"]
    variants["fastbert_padded"] = fastbert.optimize(copy.deepcopy(base), unpad=False)
    variants["fastbert_packed"] = fastbert.optimize(copy.deepcopy(base), unpad=True)
    variants["hf_eager"].load_state_dict(base.state_dict())
    ids, mask = batch_with_padding(config.vocab_size, batch, seq, min_len, seed)
    with torch.inference_mode():
        runs = interleaved_times({name: (lambda m=model: m(input_ids=ids, attention_mask=mask))
                                  for name, model in variants.items()}, repeats)
    times = {name: statistics.median(t) for name, t in runs.items()}
    best = {name: min(t) for name, t in runs.items()}
    padding = 1.0 - mask.float().mean().item()
    return {
        "arch": arch, "layers": config.num_hidden_layers, "hidden": config.hidden_size, "batch": batch, "seq": seq, "padding_fraction": round(padding, 4),
        "threads": torch.get_num_threads(), "median_s": times, "min_s": best,
        "min_speedup_packed_vs_hf_eager": best["hf_eager"] / best["fastbert_packed"],
        "min_speedup_packed_vs_hf_sdpa": best["hf_sdpa"] / best["fastbert_packed"],
        "speedup_packed_vs_hf_eager": times["hf_eager"] / times["fastbert_packed"],
        "speedup_packed_vs_hf_sdpa": times["hf_sdpa"] / times["fastbert_packed"],
        "speedup_packed_vs_padded": times["fastbert_padded"] / times["fastbert_packed"],
    }


def threshold(results: list[dict], margin: float) -> float:
    """The padding fraction above which packed pays: the largest measured fraction below the
    first one where packed beats padded by more than ``margin`` (0.0 when the lowest does)."""
    below = 0.0
    for r in sorted(results, key=lambda r: r["padding_fraction"]):
        if r["speedup_packed_vs_padded"] > 1.0 + margin:
            return below
        below = r["padding_fraction"]
    return below


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="bert-base")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--layers", type=int, help="override the architecture's layer count")
    p.add_argument("--hidden", type=int, help="override its hidden size (heads of 64, FFN 4x hidden)")
    p.add_argument("--threshold", action="store_true", help="sweep padding fractions near zero")
    p.add_argument("--margin", type=float, default=0.03, help="packed must be faster by this fraction to pay")
    p.add_argument("--write-table", action="store_true",
                   help="write the measured CPU threshold into fastbert/data/unpad_threshold.json (needs --threshold)")
    p.add_argument("--json", help="write results here")
    args = p.parse_args(argv)
    if args.write_table and not args.threshold:
        p.error("--write-table needs the --threshold sweep")
    shape = {"layers": args.layers, "hidden": args.hidden}
    results = [compare(args.arch, args.batch, args.seq, 1, args.repeats, **shape)]
    if args.threshold:
        for min_len in (args.seq, args.seq - 4, args.seq - 12, args.seq - 24):
            results.append(compare(args.arch, args.batch, args.seq, min_len, args.repeats, **shape))
    for r in results:
        t = r["median_s"]
        print(
            f"{r['arch']} L{r['layers']} H{r['hidden']} b{r['batch']} s{r['seq']} padding {r['padding_fraction']:.1%}: "
            + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in t.items())
            + f" | packed vs HF eager {r['speedup_packed_vs_hf_eager']:.2f}x, vs HF SDPA "
            f"{r['speedup_packed_vs_hf_sdpa']:.2f}x, vs padded {r['speedup_packed_vs_padded']:.2f}x (medians); "
            f"minimums: vs HF eager {r['min_speedup_packed_vs_hf_eager']:.2f}x, vs HF SDPA {r['min_speedup_packed_vs_hf_sdpa']:.2f}x"
        )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"torch": torch.__version__, "results": results}, fh, indent=2)
    if args.write_table:
        value = round(threshold(results, args.margin), 4)
        path = write_table("unpad_threshold", "cpu", value)
        print(f"wrote the CPU threshold {value} into {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
