"""``fastbert prune``: prune a local HF checkpoint, write the report and the pruned model.

The checkpoint is loaded as the task model its config names (``architectures``, e.g.
``BertForSequenceClassification``), so the pruned model keeps its head. A checkpoint
missing weights that model needs is refused (they would be saved as random values);
checkpoint weights the model does not use are listed on stderr. ``--out`` must be a new
or empty folder unless ``--force`` is given.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import fastbert
from fastbert.cli_args import checkpoint_config, checkpoint_dir, load_checkpoint, output_dir, quiet_transformers


def task_model_class(config):
    """The transformers class a checkpoint's config names in ``architectures`` (``AutoModel``
    when it names none); ValueError when it names several or one transformers lacks."""
    import transformers

    names = list(getattr(config, "architectures", None) or [])
    if not names:
        return transformers.AutoModel
    if len(names) > 1:
        raise ValueError(f"the checkpoint's config names several architectures {names}; expected one")
    cls = getattr(transformers, names[0], None)
    if cls is None:
        raise ValueError(f"the checkpoint's architecture {names[0]!r} is not a class of this transformers version")
    return cls


def _out_dir(args, source: Path) -> Path | None:
    if not args.out:
        return None
    if Path(args.out).resolve() == source.resolve():
        raise ValueError("--out is the checkpoint being pruned; choose another folder")
    return output_dir(args.out, "--out", must_be_empty=not args.force, create=False)  # created when saving


def load_task_model(model_dir: str):
    """The checkpoint as its task model; ValueError if it lacks weights the model needs.
    Returns (model, names of checkpoint weights the model does not use)."""
    cls = task_model_class(checkpoint_config(model_dir, "MODEL_DIR"))
    model, info = load_checkpoint(model_dir, "MODEL_DIR", cls, output_loading_info=True)
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        raise ValueError(
            f"MODEL_DIR {model_dir!r} lacks {len(missing)} weight(s) {cls.__name__} needs ({', '.join(missing[:4])}"
            f"{', ...' if len(missing) > 4 else ''}); they would be saved as random values"
        )
    return model.eval(), sorted(info.get("unexpected_keys") or [])


def run_prune_command(args) -> int:
    """Run ``fastbert prune`` for parsed CLI ``args``; exit code 0 on success (bad input raises
    ValueError/TypeError: exit 2)."""
    source = checkpoint_dir(args.model_dir, "MODEL_DIR")
    out = _out_dir(args, source)  # before any work
    model, unused = load_task_model(args.model_dir)
    if unused:
        print(f"note: {len(unused)} checkpoint weight(s) are not used by {type(model).__name__} and are not "
              f"written: {', '.join(unused[:4])}{', ...' if len(unused) > 4 else ''}", file=sys.stderr)
    fastbert.optimize(model)
    report = fastbert.prune(model, args.sparsity, pattern=args.pattern, scope=args.scope,
                            layers=args.layers, block_size=args.block_size)
    print(report.format())
    if out is None:
        print("no --out given: nothing was written")
        return 0
    out.mkdir(parents=True, exist_ok=True)
    with quiet_transformers():
        model.save_pretrained(out)
        _copy_tokenizer(args.model_dir, out)
    (out / "prune_report.json").write_text(json.dumps(report.to_dict(), indent=2))
    note = " (smaller matrices than the config: load it with fastbert, not plain transformers)" if args.pattern in (
        "heads", "neurons") else ""
    print(f"pruned {type(model).__name__} and prune_report.json written to {out}{note}")
    return 0


def _copy_tokenizer(model_dir: str, out: Path) -> None:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    except Exception:  # a checkpoint without a tokenizer is fine
        return
    tokenizer.save_pretrained(out)
