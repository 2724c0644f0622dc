"""``fastbert prune``: prune a local HF checkpoint, write the report and the pruned model."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def add_parser(sub) -> None:
    """Register the ``prune`` subcommand."""
    p = sub.add_parser(
        "prune",
        help="prune a checkpoint's encoder (magnitude; block, 2:4, unstructured, heads, neurons)",
        description="Load a local Hugging Face checkpoint, switch it to fastbert, prune its encoder "
        "projections, print the report and save the pruned model and report.",
    )
    p.add_argument("model_dir", help="local Hugging Face checkpoint directory")
    p.add_argument("--sparsity", type=float, required=True, help="fraction to remove, in [0, 1)")
    p.add_argument("--pattern", default="block", choices=["unstructured", "block", "2:4", "heads", "neurons"])
    p.add_argument("--scope", default="global", choices=["global", "layer"])
    p.add_argument("--block-size", type=int, default=32, choices=[16, 32, 64])
    p.add_argument("--layers", type=int, nargs="*", help="only these layer indices")
    p.add_argument("--out", help="directory for the pruned model (save_pretrained) and prune_report.json")
    p.set_defaults(func=run)


def run(args) -> int:
    """Run the subcommand; exit code 0 on success, 2 on bad input."""
    import fastbert

    if not Path(args.model_dir).is_dir():
        print(f"fastbert prune: {args.model_dir!r} is not a checkpoint directory", file=sys.stderr)
        return 2
    from transformers import AutoModel, AutoTokenizer

    model = fastbert.optimize(AutoModel.from_pretrained(args.model_dir))
    try:
        report = fastbert.prune(model, args.sparsity, pattern=args.pattern, scope=args.scope,
                                layers=args.layers, block_size=args.block_size)
    except (ValueError, TypeError) as exc:
        print(f"fastbert prune: {exc}", file=sys.stderr)
        return 2
    print(report.format())
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out)
        try:
            AutoTokenizer.from_pretrained(args.model_dir).save_pretrained(out)
        except Exception:  # a checkpoint without a tokenizer is fine
            pass
        (out / "prune_report.json").write_text(json.dumps(report.to_dict(), indent=2))
        note = " (smaller matrices than the config: load it with fastbert, not plain transformers)" if args.pattern in (
            "heads", "neurons") else ""
        print(f"pruned model and prune_report.json written to {out}{note}")
    return 0
