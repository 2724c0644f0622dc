"""``fastbert check``: Hugging Face and fastbert side by side on the same inputs, per layer.

:func:`run_check` is the library function (a :class:`CheckReport`), :func:`format_report`
its terminal table and :func:`run_check_command` the command. How outputs are compared
(reference dtype, error measure, targets): :mod:`fastbert.numerics`.
"""

from __future__ import annotations

import copy
import json
import sys
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch

import fastbert
from fastbert.cli_args import load_checkpoint, output_file, resolve_device
from fastbert.configs import random_hf_model
from fastbert.data import sentences
from fastbert.models import max_sequence_length
from fastbert.numerics import DTYPES, TARGETS, compare, reference_dtype
from fastbert.ops import dispatch


@dataclass
class Row:
    """Error of one compared tensor."""

    name: str
    max_abs: float
    rel: float
    passed: bool


@dataclass
class CheckReport:
    """Everything ``fastbert check`` measured."""

    model: str
    dtype: str
    device: str
    backend: str
    reference: str
    target: float
    inputs: str
    shape: tuple[int, int]
    rows: list[Row] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """True when every row is within the target and finite."""
        return bool(self.rows) and all(r.passed for r in self.rows)

    def to_dict(self) -> dict:
        """JSON-ready form."""
        d = asdict(self)
        d["passed"] = self.passed
        return d


def make_inputs(model, model_dir: str | None, batch: int, seq_len: int, seed: int):
    """Tokenized real sentences when ``model_dir`` has a tokenizer, else seeded random ids
    with mixed lengths (one full-length row, others padded). Returns (inputs, description)."""
    if model_dir is not None:
        try:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(model_dir)
        except Exception:
            tokenizer = None
        if tokenizer is not None:
            enc = tokenizer(sentences()[:batch], padding=True, truncation=True, max_length=seq_len, return_tensors="pt")
            return dict(enc), f"{len(enc['input_ids'])} real sentences through the checkpoint's tokenizer"
    cfg = model.config
    gen = torch.Generator().manual_seed(seed)
    low = 3 if getattr(cfg, "pad_token_id", 0) in (0, 1, 2) else 0
    vocab = cfg.vocab_size
    ids = torch.randint(low, vocab, (batch, seq_len), generator=gen)
    lengths = torch.randint(1, seq_len + 1, (batch,), generator=gen)
    lengths[0] = seq_len
    mask = (torch.arange(seq_len)[None, :] < lengths[:, None]).long()
    pad = getattr(cfg, "pad_token_id", 0) or 0
    ids = ids.masked_fill(mask == 0, pad)
    return {"input_ids": ids, "attention_mask": mask}, f"random ids, batch {batch}, lengths {lengths.tolist()}"


def run_check(
    model_dir: str | None = None,
    arch: str | None = None,
    dtype: str = "float32",
    device: str | None = None,
    batch: int = 8,
    seq_len: int = 64,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> CheckReport:
    """Compare fastbert against HF on a local checkpoint (``model_dir``) or a named ``arch``;
    ``progress`` (e.g. print to stderr) hears when the arguments are checked and the models run."""
    if (model_dir is None) == (arch is None):
        raise ValueError("give exactly one of model_dir (a local HF checkpoint) and arch (e.g. 'bert-base')")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {list(DTYPES)}, got {dtype!r}")
    if batch < 1 or seq_len < 1:
        raise ValueError(f"batch and seq_len must be positive, got {batch} and {seq_len}")
    torch_dtype = DTYPES[dtype]
    device = resolve_device(device)
    if model_dir is not None:
        hf = load_checkpoint(model_dir, "model_dir").eval()
        name = str(model_dir)
    else:
        hf = random_hf_model(arch, seed)
        name = f"{arch} (random weights, seed {seed})"
    limit = max_sequence_length(hf.config)
    if seq_len > limit:
        raise ValueError(f"seq_len {seq_len} exceeds the model's position table: at most {limit} tokens")

    inputs, description = make_inputs(hf, model_dir, batch, seq_len, seed)
    ref_dtype = reference_dtype(device)
    if progress is not None:
        progress(f"running HF in {str(ref_dtype).replace('torch.', '')} and fastbert in {dtype} on {device}, "
                 f"batch {batch} x seq {seq_len}")
    reference = copy.deepcopy(hf).to(device=device, dtype=ref_dtype)
    candidate = fastbert.optimize(copy.deepcopy(hf).to(device=device, dtype=torch_dtype))
    inputs = {k: v.to(device) for k, v in inputs.items()}
    with torch.no_grad():
        ref_out = reference(**inputs, output_hidden_states=True)
        with dispatch.record_dispatch() as log:
            out = candidate(**inputs, output_hidden_states=True)
    backends = sorted({b for _, b in log})
    token_mask = inputs.get("attention_mask")
    report = CheckReport(
        model=name,
        dtype=dtype,
        device=device,
        backend="+".join(backends),
        reference=f"HF {type(hf).__name__} in {str(ref_dtype).replace('torch.', '')}",
        target=TARGETS[torch_dtype],
        inputs=description,
        shape=tuple(inputs["input_ids"].shape),
    )
    pairs = [("embeddings" if i == 0 else f"layer {i}", o, r) for i, (o, r) in enumerate(zip(out.hidden_states, ref_out.hidden_states))]
    pairs.append(("last_hidden_state", out.last_hidden_state, ref_out.last_hidden_state))
    if getattr(ref_out, "pooler_output", None) is not None:
        pairs.append(("pooler_output", out.pooler_output, ref_out.pooler_output))
    for label, o, r in pairs:
        max_abs, rel = compare(o, r, token_mask)
        finite = bool(torch.isfinite(o).all())
        report.rows.append(Row(label, max_abs, rel, finite and rel < report.target))
    return report


def format_report(report: CheckReport) -> str:
    """The report as a terminal table."""
    lines = [
        f"model:     {report.model}",
        f"inputs:    {report.inputs} -> (batch, seq) = {report.shape}",
        f"reference: {report.reference}",
        f"fastbert:  dtype {report.dtype}, device {report.device}, backend {report.backend}",
        f"target:    relative error < {report.target:g} on real tokens, finite",
        "",
        f"{'tensor':<20}{'max abs err':>14}{'rel err':>14}  verdict",
    ]
    for r in report.rows:
        lines.append(f"{r.name:<20}{r.max_abs:>14.3e}{r.rel:>14.3e}  {'pass' if r.passed else 'FAIL'}")
    lines.append("")
    lines.append("PASS" if report.passed else "FAIL: fastbert differs from HF beyond the target")
    return "\n".join(lines)


def run_check_command(args) -> int:
    """Run ``fastbert check`` for parsed CLI ``args``: print the report, write ``--json``;
    exit code 0 when every row passes, 1 otherwise (bad arguments raise ValueError: exit 2)."""
    if (args.model_dir is None) == (args.arch is None):
        raise ValueError("give a MODEL_DIR or --arch NAME (not both)")
    json_path = output_file(args.json, "--json") if args.json else None  # before the check runs
    report = run_check(args.model_dir, args.arch, args.dtype, args.device, args.batch, args.seq_len, args.seed,
                       progress=lambda line: print(f"fastbert check: {line}", file=sys.stderr, flush=True))
    print(format_report(report))
    if json_path is not None:
        json_path.write_text(json.dumps(report.to_dict(), indent=2), encoding="utf-8")
    return 0 if report.passed else 1
