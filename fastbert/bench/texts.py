"""``fastbert bench --model PATH [--texts FILE]``: the user's checkpoint on the user's texts,
plain against fastbert, at the user's batch sizes.

Each configuration (dtype, batch size) times whole passes over every text, the way the
user's code would make them (:mod:`fastbert.bench.user_model`: sentence-transformers'
``encode``, or tokenization, model and pooling per batch): tokenization and pooling are
part of what the user waits for, so they are part of the time. The plain and the fastbert
pass alternate, round after round (which goes first alternates too), so that the shared
machine's drifts touch both alike; the figure is the fastest pass of each (the least
disturbed), with the median and 90th percentile beside it. A pass's output is held against the plain one:
max abs difference and the smallest cosine between matching rows.

JSON schema (``SCHEMA``, in ``bench.json``; ``bench.csv`` has one row per configuration and
variant)::

    {"schema": "fastbert-bench-texts/1", "metadata": {...as in fastbert.bench.report...},
     "settings": {"model", "kind", "runner", "texts", "sentences", "device", "dtypes", "batches",
                  "warmup", "repeats", "time_budget_s", "notes", "arguments"},
     "wall_time_s", "complete",
     "results": [{"dtype", "batch", "sentences", "real_tokens", "padded_tokens", "padding_fraction",
                  "variants": {"plain"|"fastbert": {"status": "ok"|"error"|"skipped", "min_s",
                               "median_s", "p90_s", "repeats", "sentences_per_s", "tokens_per_s",
                               "median_sentences_per_s", "error"}},
                  "speedup" (plain's fastest pass / fastbert's), "speedup_reliable" (false when the two
                  variants' [min_s, p90_s] ranges overlap), "max_abs_diff", "min_cosine"}]}

``sentences_per_s`` and ``tokens_per_s`` (real tokens, after truncation) come from the
fastest pass.
"""

from __future__ import annotations

import csv
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from fastbert.bench import measure, report
from fastbert.bench.user_model import UserModel, load_runner, padded_tokens
from fastbert.numerics import DTYPES

SCHEMA = "fastbert-bench-texts/1"
VARIANTS = ("plain", "fastbert")
CSV_COLUMNS = ["dtype", "batch", "sentences", "real_tokens", "padded_tokens", "padding_fraction", "variant", "status",
               "min_s", "median_s", "p90_s", "repeats", "sentences_per_s", "tokens_per_s", "median_sentences_per_s",
               "speedup", "speedup_reliable", "max_abs_diff", "min_cosine", "error"]


@dataclass
class TextBenchPlan:
    """What ``fastbert bench --model`` runs, resolved from its arguments."""

    user: UserModel
    texts: list[str]
    texts_source: str
    device: str
    dtypes: list[str]
    batches: list[int]
    warmup: int
    repeats: int
    time_budget_s: float | None
    out_dir: Path
    notes: list[str]


def _variant(status: str, error: str | None = None, **values) -> dict:
    result = {"status": status, "min_s": None, "median_s": None, "p90_s": None, "repeats": 0, "sentences_per_s": None,
              "tokens_per_s": None, "median_sentences_per_s": None, "error": error}
    result.update(values)
    return result


def _timed(seconds: list[float], sentences: int, real_tokens: int) -> dict:
    t = measure.summarize(seconds, 0.0, "")
    return _variant("ok", min_s=t.min_s, median_s=t.median_s, p90_s=t.p90_s, repeats=t.repeats,
                    sentences_per_s=sentences / t.min_s,
                    tokens_per_s=real_tokens / t.min_s, median_sentences_per_s=sentences / t.median_s)


def agreement(out: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    """(max abs difference, smallest cosine similarity between matching rows), in float64."""
    out, ref = out.detach().double().cpu(), ref.detach().double().cpu()
    if not bool(torch.isfinite(out).all()):
        return float("inf"), float("-inf")
    return (out - ref).abs().max().item(), F.cosine_similarity(out, ref, dim=-1).min().item()


class _Progress:
    """A tqdm bar on stderr (when tqdm is installed and stderr is a terminal) and one line per
    configuration; without the bar, a line on the passes done once
    :data:`fastbert.bench.measure.PROGRESS_EVERY_S` seconds have passed since the last line."""

    def __init__(self, total: int):
        self.bar, self.total, self.done = None, total, 0
        self.start = self.last = time.perf_counter()
        try:
            from tqdm.auto import tqdm
        except ImportError:
            tqdm = None
        if tqdm is not None and sys.stderr.isatty():
            self.bar = tqdm(total=total, unit="pass", file=sys.stderr, desc="fastbert bench", leave=False)

    def step(self, n: int = 1) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif time.perf_counter() - self.last >= measure.PROGRESS_EVERY_S:
            self.line(f"  {self.done}/{self.total} passes ({time.perf_counter() - self.start:.0f} s)")

    def line(self, text: str) -> None:
        self.last = time.perf_counter()
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _measure_config(fns: dict[str, Callable], plan: TextBenchPlan, progress: _Progress) -> tuple[dict, dict, dict]:
    """Warm up, then time alternating passes: (seconds per variant, last output, failures)."""
    device = torch.device(plan.device)
    failed: dict[str, BaseException] = {}
    outputs: dict[str, torch.Tensor] = {}
    for _ in range(plan.warmup):
        _, outs, errs = measure.interleaved({n: f for n, f in fns.items() if n not in failed}, dict.fromkeys(fns, 1), device)
        outputs.update(outs)
        failed.update(errs)
        progress.step(len(fns))
    seconds = {n: [] for n in fns}
    for round_index in range(plan.repeats):
        names = [n for n in (VARIANTS if round_index % 2 == 0 else VARIANTS[::-1]) if n not in failed]
        times, outs, errs = measure.interleaved({n: fns[n] for n in names}, dict.fromkeys(names, 1), device)
        for name, t in times.items():
            seconds[name].extend(t)
        outputs.update(outs)
        failed.update(errs)
        progress.step(len(fns))
    return seconds, outputs, failed


def run_text_bench(plan: TextBenchPlan, on_entry: Callable[[list[dict]], None] | None = None) -> list[dict]:
    """Measure every (dtype, batch size) of ``plan``; returns one entry per configuration
    (schema above). A failing variant is recorded, never raised; once the time budget is
    spent, the remaining configurations are recorded as skipped."""
    start, entries = time.perf_counter(), []
    n = len(plan.texts)
    progress = _Progress(len(plan.dtypes) * len(plan.batches) * (plan.warmup + plan.repeats) * len(VARIANTS))
    try:
        for dtype in plan.dtypes:
            plain = load_runner(plan.user, plan.device, DTYPES[dtype])
            fast = plain.optimized()
            lengths = plain.token_lengths(plan.texts)
            for batch in plan.batches:
                padded = padded_tokens(lengths, plan.texts, batch)
                entry = {"dtype": dtype, "batch": batch, "sentences": n, "real_tokens": sum(lengths),
                         "padded_tokens": padded, "padding_fraction": 1.0 - sum(lengths) / padded,
                         "speedup": None, "speedup_reliable": None, "max_abs_diff": None, "min_cosine": None}
                if plan.time_budget_s is not None and time.perf_counter() - start > plan.time_budget_s:
                    msg = f"skipped: the time budget of {plan.time_budget_s:g} s was spent"
                    entry["variants"] = {v: _variant("skipped", msg) for v in VARIANTS}
                else:
                    fns = {"plain": lambda b=batch: plain.encode(plan.texts, b),
                           "fastbert": lambda b=batch: fast.encode(plan.texts, b)}
                    _fill_entry(entry, *_measure_config(fns, plan, progress))
                entries.append(entry)
                progress.line(_progress_line(entry, time.perf_counter() - start))
                if on_entry is not None:
                    on_entry(entries)
            del plain, fast
    finally:
        progress.close()
    return entries


def _fill_entry(entry: dict, seconds: dict, outputs: dict, failed: dict) -> None:
    variants = {}
    for name in VARIANTS:
        if name in failed:
            variants[name] = _variant("error", measure.failure_message(failed[name]))
        else:
            variants[name] = _timed(seconds[name], entry["sentences"], entry["real_tokens"])
    entry["variants"] = variants
    if all(v["status"] == "ok" for v in variants.values()):
        plain, fast = variants["plain"], variants["fastbert"]
        entry["speedup"] = plain["min_s"] / fast["min_s"]
        overlap = measure.ranges_overlap(plain["min_s"], plain["p90_s"], fast["min_s"], fast["p90_s"])
        entry["speedup_reliable"] = not overlap
        entry["max_abs_diff"], entry["min_cosine"] = agreement(outputs["fastbert"], outputs["plain"])


def _progress_line(entry: dict, elapsed: float) -> str:
    parts = []
    for name, r in entry["variants"].items():
        parts.append(f"{name} {r['sentences_per_s']:.1f} sent/s" if r["status"] == "ok" else f"{name} {r['status']}")
    speedup = f" | fastbert/plain {_speedup(entry)}" if entry["speedup"] is not None else ""
    return f"[{elapsed:6.1f}s] {entry['dtype']} batch {entry['batch']}: " + " | ".join(parts) + speedup


# ---------------------------------------------------------------------------
# Table, JSON, CSV
# ---------------------------------------------------------------------------


def _speedup(entry: dict) -> str:
    if entry["speedup"] is None:
        return "-"
    return f"{entry['speedup']:.2f}x" + ("" if entry.get("speedup_reliable", True) else report.UNRELIABLE)


def _seconds(result: dict) -> str:
    if result["status"] != "ok":
        return result["status"]
    return report.spread_cell(result["median_s"], result["min_s"], result["p90_s"])


def format_table(entries: list[dict]) -> str:
    """One row per configuration: each variant's pass time (median, fastest-p90), sentences/s
    and tokens/s, the speedup (marked unreliable where the two timing ranges overlap) and the
    agreement; a warning line when a speedup is unreliable."""
    head = ["dtype", "batch", "pad%", "plain s", "fastbert s", "plain sent/s", "fastbert sent/s", "speedup",
            "plain tok/s", "fastbert tok/s", "max|diff|", "min cos"]
    rows = []
    for e in entries:
        p, f = e["variants"]["plain"], e["variants"]["fastbert"]
        rows.append([
            e["dtype"], str(e["batch"]), f"{100 * e['padding_fraction']:.0f}", _seconds(p), _seconds(f),
            _rate(p, "sentences_per_s"), _rate(f, "sentences_per_s"), _speedup(e),
            _rate(p, "tokens_per_s"), _rate(f, "tokens_per_s"),
            f"{e['max_abs_diff']:.1e}" if e["max_abs_diff"] is not None else "-",
            f"{e['min_cosine']:.6f}" if e["min_cosine"] is not None else "-",
        ])
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(head, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(x.rjust(w) for x, w in zip(r, widths)) for r in rows]
    legend = ("s = seconds per pass over all texts (tokenization and pooling included), median (fastest-90th "
              "percentile); sent/s and tok/s from each variant's fastest pass; tok/s counts real tokens; speedup = "
              "plain's fastest pass / fastbert's; " + report.SPREAD_RULE + "; max|diff| and min cos: fastbert's "
              "output against plain's")
    bad = [e for e in entries if e.get("speedup_reliable") is False]
    warning = (f"warning: {len(bad)} of {sum(e['speedup'] is not None for e in entries)} speedups are marked "
               f"'{report.UNRELIABLE}' (timing ranges overlap): rerun with more --repeats on a quieter machine "
               "before reading them") if bad else None
    return "\n".join(lines + ["", legend] + ([warning] if warning else []))


def _rate(result: dict, key: str) -> str:
    return f"{result[key]:.1f}" if result["status"] == "ok" else result["status"]


def csv_rows(entries: list[dict]) -> list[dict]:
    """One flat row per (configuration, variant); speedup and agreement on the fastbert rows."""
    rows = []
    for e in entries:
        for name, r in e["variants"].items():
            row = {k: e[k] for k in ("dtype", "batch", "sentences", "real_tokens", "padded_tokens", "padding_fraction")}
            row.update(variant=name, **{k: r[k] for k in ("status", "min_s", "median_s", "p90_s", "repeats",
                                                          "sentences_per_s", "tokens_per_s", "median_sentences_per_s",
                                                          "error")})
            fastbert_row = name == "fastbert"
            row.update({k: e[k] if fastbert_row else None
                        for k in ("speedup", "speedup_reliable", "max_abs_diff", "min_cosine")})
            rows.append(row)
    return rows


class TextBenchRecord:
    """``bench.json`` and ``bench.csv`` of one run in ``plan.out_dir``, saved after every
    configuration (``"complete": false``) and at the end."""

    def __init__(self, plan: TextBenchPlan, settings: dict, started: float):
        self.metadata = report.collect_metadata(plan.device)
        self.settings, self.out_dir, self.started = settings, plan.out_dir, started

    def save(self, entries: list[dict], complete: bool = False) -> dict:
        """Write both files; returns the JSON document."""
        doc = {"schema": SCHEMA, "metadata": self.metadata, "settings": self.settings,
               "wall_time_s": time.perf_counter() - self.started, "complete": complete, "results": entries}
        report.write_json(doc, self.out_dir / "bench.json")
        with (self.out_dir / "bench.csv").open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=CSV_COLUMNS)
            writer.writeheader()
            for row in csv_rows(entries):
                writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
        return doc

    def finish(self, entries: list[dict]) -> dict:
        """Print the table and notes, save the complete files; returns the document."""
        print(format_table(entries))
        for note in self.settings["notes"]:
            print(f"note: {note}")
        doc = self.save(entries, complete=True)
        print(f"wrote {self.out_dir / 'bench.json'} and {self.out_dir / 'bench.csv'}; wall time {doc['wall_time_s']:.1f} s")
        return doc
