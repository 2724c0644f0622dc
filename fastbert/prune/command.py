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
from fastbert.pretrained import task_model_class
from fastbert.prune.checks import CALIBRATED, check_options, default_scope
from fastbert.prune.roles import check_role_sparsity, parse_sparsity
from fastbert.prune.structure import STRUCTURE_KEY


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


def read_calibration_texts(path: str | None, method: str) -> list[str] | None:
    """The lines of ``--calibration FILE`` (blank lines skipped); ValueError when a calibrated
    method has no file, the file is unreadable or empty, or magnitude pruning is given one."""
    if method not in CALIBRATED:
        if path is not None:
            raise ValueError(f"--calibration is for the calibrated methods {', '.join(CALIBRATED)}, not --method {method}")
        return None
    if path is None:
        raise ValueError(f"--method {method} needs --calibration FILE (one text per line)")
    from fastbert.data import read_text_lines

    try:
        texts = read_text_lines(path)
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"--calibration {path!r} cannot be read: {e}") from e
    if not texts:
        raise ValueError(f"--calibration {path!r} holds no text (one text per line)")
    return texts


def calibration_batches(model_dir: str, texts: list[str], batch_size: int) -> list[dict]:
    """``texts`` tokenized with the checkpoint's tokenizer, ``batch_size`` per batch, padded and
    truncated to the model's longest sequence."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    except Exception as e:  # noqa: BLE001 - any failure means the same to the user
        raise ValueError(f"--calibration needs the checkpoint's tokenizer, and MODEL_DIR {model_dir!r} has none "
                         f"that loads ({type(e).__name__})") from e
    longest = min(512, int(getattr(tokenizer, "model_max_length", 512) or 512))
    return [tokenizer(texts[i : i + batch_size], padding=True, truncation=True, max_length=longest,
                      return_tensors="pt") for i in range(0, len(texts), batch_size)]


def run_prune_command(args) -> int:
    """Run ``fastbert prune`` for parsed CLI ``args``; exit code 0 on success (bad input raises
    ValueError/TypeError: exit 2)."""
    source = checkpoint_dir(args.model_dir, "MODEL_DIR")
    out = _out_dir(args, source)  # before any work
    sparsity = parse_sparsity(args.sparsity)
    scope = args.scope or default_scope(args.method)
    check_options(sparsity, args.pattern, args.method, scope, args.block_size)
    if isinstance(sparsity, dict):
        check_role_sparsity(sparsity, args.pattern, scope)
    texts = read_calibration_texts(args.calibration, args.method)
    if args.calibration_batch_size < 1:
        raise ValueError(f"--calibration-batch-size must be at least 1, got {args.calibration_batch_size}")
    model, unused = load_task_model(args.model_dir)
    if unused:
        print(f"note: {len(unused)} checkpoint weight(s) are not used by {type(model).__name__} and are not "
              f"written: {', '.join(unused[:4])}{', ...' if len(unused) > 4 else ''}", file=sys.stderr)
    batches = None if texts is None else calibration_batches(args.model_dir, texts, args.calibration_batch_size)
    fastbert.optimize(model)
    report = fastbert.prune(model, sparsity, pattern=args.pattern, method=args.method, scope=args.scope,
                            layers=args.layers, block_size=args.block_size, calibration=batches,
                            progress=not args.quiet)
    print(report.format())
    if out is None:
        print("no --out given: nothing was written")
        return 0
    out.mkdir(parents=True, exist_ok=True)
    with quiet_transformers():
        model.save_pretrained(out)
        _copy_tokenizer(args.model_dir, out)
    (out / "prune_report.json").write_text(json.dumps(report.to_dict(), indent=2))
    note = ""
    if hasattr(model.config, STRUCTURE_KEY):
        note = " (heads or per-layer neuron counts recorded in config.json: load it with fastbert.from_pretrained)"
    print(f"pruned {type(model).__name__} and prune_report.json written to {out}{note}")
    return 0


def _copy_tokenizer(model_dir: str, out: Path) -> None:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    except Exception:  # a checkpoint without a tokenizer is fine
        return
    tokenizer.save_pretrained(out)
