"""A training bench run's results: the terminal tables, ``train.json``, ``train.csv`` and plots.

JSON schema (``TRAIN_SCHEMA``): the forward bench's document (:mod:`fastbert.bench.report`)
with ``"schema": "fastbert-bench-train/1"``, and in it:

- every result entry's ``config`` also holds ``task``; the entry also holds
  ``speedup_min`` (as ``speedup``, from the minima), ``loss_reference`` (the variant the
  losses are held against), ``loss_tolerance`` and ``loss_ok`` (every measured variant
  within it);
- every variant's record also holds ``steps`` (taken before the final loss),
  ``first_loss`` (the first step's, at the initial weights), ``final_loss`` (after the
  timed steps), ``loss_rel_diff`` and ``loss_ok``; ``rel_error``/``max_abs_error`` are null;
- ``max_batch``: the largest-batch searches (GPU; :func:`fastbert.bench.max_batch.run_max_batch`),
  or null when not run (the settings' notes say why).

The CSV has one row per (configuration, variant): ``TRAIN_CSV_COLUMNS``. The plots are
the forward bench's (real tokens per second of a training step, fastbert's speedup), per
model and dtype.
"""

from __future__ import annotations

import time
from pathlib import Path

from fastbert.bench import report
from fastbert.bench.train import LOSS_COLUMNS
from fastbert.bench.variants import BASELINES

TRAIN_SCHEMA = "fastbert-bench-train/1"
TRAIN_CONFIG_COLUMNS = report.CONFIG_COLUMNS + ["task"]
TRAIN_VARIANT_COLUMNS = [c for c in report.VARIANT_COLUMNS if c not in ("rel_error", "max_abs_error")] + LOSS_COLUMNS
TRAIN_CSV_COLUMNS = report.csv_columns(TRAIN_CONFIG_COLUMNS, TRAIN_VARIANT_COLUMNS)
MIB = 2**20


def _ms(result: dict) -> str:
    if result["status"] != "ok":
        return result["status"]
    return report.spread_cell(result["median_ms"], result["min_ms"], result["p90_ms"], ".4g")


def _ratio(entry: dict, fb: str, base: str) -> str:
    median = entry["speedup"].get(fb, {}).get(base)
    low = entry.get("speedup_min", {}).get(fb, {}).get(base)
    if median is None or low is None:
        return "-"
    reliable = entry.get("speedup_reliable", {}).get(fb, {}).get(base, True)
    return f"{median:.2f}x/{low:.2f}x" + ("" if reliable else report.UNRELIABLE)


def _loss(entry: dict) -> str:
    diffs = {n: r["loss_rel_diff"] for n, r in entry["variants"].items() if r.get("loss_rel_diff") is not None}
    if not diffs:
        return "-"
    flagged = [n for n, r in entry["variants"].items() if r.get("loss_ok") is False]
    worst = max(diffs.values())
    return f"{worst:.1e} " + (f"FLAGGED: {','.join(flagged)}" if flagged else "ok")


def _memory(result: dict) -> str:
    peak = result.get("peak_memory_bytes")
    return "-" if peak is None else f"{peak / MIB:.0f}"


def format_train_table(entries: list[dict], variants: list[str]) -> str:
    """One row per configuration: median (min-p90) step ms per variant, each fastbert variant's
    speedups (median/min) over each baseline (marked unreliable where the two timing ranges
    overlap), peak MiB per variant (where measured) and the loss check (largest relative
    difference from the reference, "ok" or the flagged variants); a warning line when any
    ratio is unreliable."""
    baselines = [v for v in variants if v in BASELINES]
    fb_variants = [v for v in variants if v not in BASELINES]
    with_memory = any(r.get("peak_memory_bytes") is not None for e in entries for r in e["variants"].values())
    head = ["model", "task", "dtype", "batch", "seq", "pad%"] + [f"{v} ms" for v in variants]
    head += [f"{fb}/{b}" for fb in fb_variants for b in baselines]
    head += [f"{v} MiB" for v in variants] if with_memory else []
    head.append("loss check")
    rows = []
    for e in entries:
        c = e["config"]
        row = [c["model"], c.get("task", "-"), c["dtype"], str(c["batch"]), f"{c['seq_len']}{'v' if c['varlen'] else ''}",
               f"{100 * e['padding_fraction']:.0f}"]
        row += [_ms(e["variants"][v]) for v in variants]
        row += [_ratio(e, fb, b) for fb in fb_variants for b in baselines]
        row += [_memory(e["variants"][v]) for v in variants] if with_memory else []
        row.append(_loss(e))
        rows.append(row)
    lines = _aligned(head, rows)
    legend = ("ms = median (fastest-90th percentile) of the timed training steps (forward + backward + AdamW), "
              "interleaved across variants; a/b = b's step time / a's (median/min); " + report.SPREAD_RULE + "; "
              "seq 'v' = variable-length rows (uniform in [16, seq]); loss check = largest relative difference of a "
              "variant's loss after the timed steps from the reference's")
    warning = report.noise_warning(entries)
    return "\n".join(lines + ["", legend] + ([warning] if warning else []))


def format_max_batch(entries: list[dict]) -> str:
    """One row per searched shape: each variant's largest trainable batch ('>=' at the size
    limit) and each fastbert variant's ratio over each baseline."""
    if not entries:
        return ""
    variants = list(entries[0]["variants"])
    ratios = sorted({(fb, b) for e in entries for fb, per in e["ratio"].items() for b in per})
    head = ["seq", "dtype"] + variants + [f"{fb}/{b}" for fb, b in ratios]
    rows = []
    for e in entries:
        row = [f"{e['seq_len']}{'v' if e['varlen'] else ''}", e["dtype"]]
        for v in variants:
            r = e["variants"][v]
            row.append(r["status"] if r["status"] != "ok" else f"{'>=' if r['at_limit'] else ''}{r['largest']}")
        row += [f"{e['ratio'].get(fb, {}).get(b, float('nan')):.2f}x" for fb, b in ratios]
        rows.append(row)
    return "\n".join(["largest batch that trains (two steps without running out of memory):"] + _aligned(head, rows))


def _aligned(head: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(head, widths)), "  ".join("-" * w for w in widths)]
    return lines + ["  ".join(x.rjust(w) for x, w in zip(r, widths)) for r in rows]


def loss_failures(entries: list[dict]) -> list[str]:
    """``"<label>: <variant>"`` for every variant whose loss disagreed with its reference."""
    return [f"{e['label']}: {n}" for e in entries for n, r in e["variants"].items() if r.get("loss_ok") is False]


class TrainRecord:
    """The files of one training bench run in ``out_dir``: ``train.json`` and ``train.csv``,
    saved after every configuration (``"complete": false``) and at the end; then the tables,
    the plots and a footer."""

    def __init__(self, device: str, settings: dict, out_dir: Path, started: float):
        """``started``: the run's start on ``time.perf_counter``'s clock (for ``wall_time_s``)."""
        self.metadata = report.collect_metadata(device)
        self.settings, self.out_dir, self.started = settings, out_dir, started
        self.max_batch: list[dict] | None = None

    def document(self, entries: list[dict], complete: bool) -> dict:
        """The JSON document of ``entries`` (and the largest-batch searches, once set)."""
        doc = report.document(self.metadata, self.settings, entries, time.perf_counter() - self.started, complete,
                              schema=TRAIN_SCHEMA)
        doc["max_batch"] = self.max_batch
        return doc

    def save(self, entries: list[dict], complete: bool = False) -> dict:
        """Write the JSON and CSV of ``entries`` (all configurations so far); returns the document."""
        doc = self.document(entries, complete)
        report.write_json(doc, self.out_dir / "train.json")
        report.write_csv(entries, self.out_dir / "train.csv", TRAIN_CONFIG_COLUMNS, TRAIN_VARIANT_COLUMNS)
        return doc

    def finish(self, entries: list[dict], plots: bool = True) -> dict:
        """Print the tables, write the plots (when ``plots``), save the complete files and print
        the footer; returns the document."""
        print(format_train_table(entries, self.settings["variants"]))
        if self.max_batch:
            print("\n" + format_max_batch(self.max_batch))
        written = report.write_plots(self.document(entries, True), self.out_dir, "training step") if plots else None
        doc = self.save(entries, complete=True)
        for note in self.settings["notes"]:
            print(f"note: {note}")
        refs = sorted({e["loss_reference"] for e in entries if e.get("loss_reference")})
        if refs:
            print(f"loss check: every variant's loss after the timed steps against {', '.join(refs)}'s "
                  f"(same initial weights and batches, dropout off); relative tolerance "
                  + "/".join(f"{t:g}" for t in sorted({e["loss_tolerance"] for e in entries if "loss_tolerance" in e}))
                  + "".join(f"; DISAGREES: {f}" for f in loss_failures(entries)))
        print("plots: " + ("skipped (--no-plots)" if not plots else "skipped (matplotlib is not installed)"
                           if written is None else ", ".join(p.name for p in written)))
        print(f"wrote {self.out_dir / 'train.json'} and {self.out_dir / 'train.csv'}; wall time {doc['wall_time_s']:.1f} s")
        return doc
