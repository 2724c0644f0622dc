"""Prune a fine-tuned classifier to 50 % and recover it by distillation: held-out accuracy vs dense.

    python examples/prune_classification.py                      # fine-tunes first (a few minutes on a CPU)
    python examples/prune_classification.py --checkpoint DIR     # a checkpoint from finetune_classification.py
    python examples/prune_classification.py --checkpoint DIR --recovery-steps 2 --test-size 24 \
        --calibration-size 16 --pruning "neurons 50% (wanda)"    # smoke run

Starts from the classifier ``examples/finetune_classification.py`` trains (all-MiniLM-L6-v2
on the generated three-topic set), prunes copies of it one-shot with calibration on training
sentences (``fastbert.prune(..., method="sparsegpt" | "wanda", calibration=...)``), then
recovers each with :class:`fastbert.prune.Distiller` (the dense classifier as teacher:
hidden states and logits) for ``--recovery-steps`` steps on the training sentences, masks
kept. Prints held-out test accuracy of the dense model, each pruned model one-shot and
recovered, and writes them to ``OUT/prune_summary.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fastbert  # noqa: E402
import finetune_classification  # noqa: E402
from fastbert.prune import Distiller  # noqa: E402
from topic_data import LABELS, make_split  # noqa: E402

PRUNINGS = {  # name: fastbert.prune arguments
    "unstructured 50% (sparsegpt)": dict(sparsity=0.5, pattern="unstructured", method="sparsegpt"),
    "2:4 (sparsegpt)": dict(sparsity=0.5, pattern="2:4", method="sparsegpt"),
    "neurons 50% (wanda)": dict(sparsity=0.5, pattern="neurons", method="wanda"),
}


def recover(student, teacher, tokenizer, texts, steps: int, lr: float, device) -> None:
    """Distill ``teacher`` into ``student`` on ``texts`` (batches of 16), masks kept."""
    distiller = Distiller(student, teacher, hidden_weight=1.0, logits_weight=1.0)
    optimizer = torch.optim.AdamW(student.parameters(), lr=lr)
    student.train()
    for step in range(steps):
        start = (step * 16) % len(texts)
        batch = tokenizer(texts[start : start + 16], padding=True, return_tensors="pt").to(device)
        distiller.loss(batch).backward()
        optimizer.step()
        optimizer.zero_grad()
    student.eval()


def main(argv=None) -> int:
    """Fine-tune (unless given a checkpoint), prune, recover, compare; exit 0 when every recovered
    model is within ``--tolerance`` of the dense accuracy."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="fastbert-out/prune-classification")
    p.add_argument("--checkpoint", help="a fine-tuned classifier (default: run finetune_classification.py first)")
    p.add_argument("--recovery-steps", type=int, default=200)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--calibration-size", type=int, default=128)
    p.add_argument("--train-size", type=int, default=600, help="fine-tuning sentences (when fine-tuning here)")
    p.add_argument("--test-size", type=int, default=300, help="held-out test sentences scored (the first of "
                   "finetune_classification.py's 300)")
    p.add_argument("--max-steps", type=int, default=None, help="fine-tuning steps cap (smoke runs)")
    p.add_argument("--tolerance", type=float, default=0.01, help="accuracy drop allowed after recovery")
    p.add_argument("--pruning", nargs="+", choices=list(PRUNINGS), default=list(PRUNINGS), help="which prunings")
    args = p.parse_args(argv)

    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = Path(args.out)
    checkpoint = args.checkpoint
    if checkpoint is None:
        finetune = ["--out", str(out / "dense"), "--train-size", str(args.train_size)]
        finetune += [] if args.max_steps is None else ["--max-steps", str(args.max_steps)]
        finetune_classification.main(finetune)
        checkpoint = out / "dense" / "best"
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    dense = fastbert.optimize(AutoModelForSequenceClassification.from_pretrained(checkpoint, num_labels=len(LABELS))).to(device).eval()
    texts, labels = make_split(300, seed=2, held_out=True)  # finetune_classification.py's test split (seed 0 + 2)
    test = texts[: args.test_size], labels[: args.test_size]
    train_texts = make_split(4800, seed=21, held_out=False)[0]
    calibration_texts = make_split(args.calibration_size, seed=22, held_out=False)[0]
    calibration = [tokenizer(calibration_texts[i : i + 32], padding=True, return_tensors="pt").to(device)
                   for i in range(0, len(calibration_texts), 32)]
    _, dense_acc = finetune_classification.evaluate(dense, tokenizer, *test, device)
    print(f"dense: held-out accuracy {dense_acc:.3f}")
    rows = [{"model": "dense", "stage": "", "test_acc": dense_acc}]
    for name in args.pruning:
        options = PRUNINGS[name]
        model = copy.deepcopy(dense)
        start = time.perf_counter()
        fastbert.prune(model, calibration=calibration, progress=False, **options)
        _, acc = finetune_classification.evaluate(model, tokenizer, *test, device)
        rows.append({"model": name, "stage": "one-shot", "test_acc": acc, "seconds": time.perf_counter() - start})
        start = time.perf_counter()
        recover(model, dense, tokenizer, train_texts, args.recovery_steps, args.lr, device)
        _, recovered = finetune_classification.evaluate(model, tokenizer, *test, device)
        rows.append({"model": name, "stage": f"recovered ({args.recovery_steps} steps)", "test_acc": recovered,
                     "seconds": time.perf_counter() - start})
        print(f"{name}: one-shot {acc:.3f}, after {args.recovery_steps} recovery steps {recovered:.3f} "
              f"(dense {dense_acc:.3f})", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    summary = {"checkpoint": str(checkpoint), "device": device, "torch": torch.__version__,
               "date": time.strftime("%Y-%m-%d"), "test_sentences": len(test[0]), "results": rows,
               "command": "python " + " ".join(["examples/prune_classification.py",
                                               *(argv if argv is not None else sys.argv[1:])])}
    (out / "prune_summary.json").write_text(json.dumps(summary, indent=2))
    worst = min(r["test_acc"] for r in rows if r["stage"].startswith("recovered"))
    return 0 if worst >= dense_acc - args.tolerance else 1


if __name__ == "__main__":
    sys.exit(main())
