"""``fastbert prune``: prune a local checkpoint, check what it keeps, write the report and the pruned model.

The folder is read and written by :mod:`fastbert.prune.folders`: a Hugging Face checkpoint
as its task model (its head kept; one missing weights that model needs is refused,
checkpoint weights the model does not use are listed on stderr), a sentence-transformers
folder as a ``SentenceTransformer`` (every module kept). Defaults: unstructured magnitude
pruning, each matrix to the target (``--scope layer``): the best setting the README
measured that needs no calibration. After pruning, the quality check
(:mod:`fastbert.prune.quality`) compares the pruned model's embeddings with the dense
model's on a few texts; below ``--min-cosine`` nothing is written and the exit code is 1,
unless ``--force``. ``--out`` must be a new or empty folder unless ``--force`` is given.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import fastbert
from fastbert.cli_args import checkpoint_dir, output_dir
from fastbert.prune.checks import CALIBRATED, check_options, default_scope
from fastbert.prune.folders import check_structure_loads, load_folder
from fastbert.prune.quality import DEFAULT_MIN_COSINE, compare
from fastbert.prune.roles import check_role_sparsity, parse_sparsity
from fastbert.prune.structure import STRUCTURE_KEY


def _out_dir(args, source: Path) -> Path | None:
    if not args.out:
        return None
    if Path(args.out).resolve() == source.resolve():
        raise ValueError("--out is the checkpoint being pruned; choose another folder")
    return output_dir(args.out, "--out", must_be_empty=not args.force, create=False)  # created when saving


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


def check_min_cosine(value) -> float:
    """``--min-cosine`` as a float in [-1, 1] (None: :data:`~fastbert.prune.quality.DEFAULT_MIN_COSINE`;
    ValueError otherwise)."""
    if value is None:
        return DEFAULT_MIN_COSINE
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not -1.0 <= value <= 1.0:
        raise ValueError(f"--min-cosine must be a cosine in [-1, 1], got {value!r}")
    return float(value)


def run_prune_command(args) -> int:
    """Run ``fastbert prune`` for parsed CLI ``args``: exit code 0 on success, 1 when the pruned
    model fails the quality check (and ``--force`` is not given; nothing is written then); bad
    input raises ValueError/TypeError before any work (exit 2)."""
    source = checkpoint_dir(args.model_dir, "MODEL_DIR")
    out = _out_dir(args, source)  # before any work
    sparsity = parse_sparsity(args.sparsity)
    scope = args.scope or default_scope(args.method)
    check_options(sparsity, args.pattern, args.method, scope, args.block_size)
    if isinstance(sparsity, dict):
        check_role_sparsity(sparsity, args.pattern, scope)
    if args.layers is not None and len(set(args.layers)) != len(args.layers):
        raise ValueError(f"--layers names an index more than once ({' '.join(map(str, args.layers))}): give each once")
    min_cosine = check_min_cosine(args.min_cosine)
    check_structure_loads(source, args.pattern, scope)
    texts = read_calibration_texts(args.calibration, args.method)
    if args.calibration_batch_size < 1:
        raise ValueError(f"--calibration-batch-size must be at least 1, got {args.calibration_batch_size}")
    folder = load_folder(source, args.model_dir)
    model = folder.model
    if folder.unused:
        print(f"note: {len(folder.unused)} checkpoint weight(s) are not used by {type(model).__name__} and are not "
              f"written: {', '.join(folder.unused[:4])}{', ...' if len(folder.unused) > 4 else ''}", file=sys.stderr)
    if texts is not None and folder.tokenizer is None:
        raise ValueError(f"--calibration needs the checkpoint's tokenizer, and MODEL_DIR {args.model_dir!r} has none "
                         "that loads")
    batches = None if texts is None else folder.tokenize(texts, args.calibration_batch_size)
    fastbert.optimize(model)
    embed, check_source = folder.probe(texts)
    dense = embed()
    report = fastbert.prune(model, sparsity, pattern=args.pattern, method=args.method, scope=scope,
                            layers=args.layers, block_size=args.block_size, calibration=batches,
                            progress=not args.quiet)
    quality = compare(dense, embed(), check_source)
    print(report.format())
    print(quality.format(min_cosine))
    failed = not quality.passes(min_cosine)
    if failed and not args.force:
        print(f"fastbert prune: the pruned model keeps mean cosine {quality.mean:.3f} < --min-cosine {min_cosine:g} "
              "to the dense model: not written (lower --sparsity, a finer --pattern, a calibrated --method, or "
              "--force to write it anyway)", file=sys.stderr)
        return 1
    if out is None:
        print("no --out given: nothing was written")
        return 0
    folder.save(out)
    (out / "prune_report.json").write_text(json.dumps(report.to_dict() | {"quality": quality.to_dict()}, indent=2))
    note = ""
    if hasattr(model.config, STRUCTURE_KEY):
        note = " (heads or per-layer neuron counts recorded in config.json: load it with fastbert.from_pretrained)"
    kind = "sentence-transformers model" if folder.kind == "sentence-transformers" else type(model).__name__
    print(f"pruned {kind} and prune_report.json written to {out}{note}")
    if failed:
        print("warning: written although it fails the quality check (--force)", file=sys.stderr)
    return 0
