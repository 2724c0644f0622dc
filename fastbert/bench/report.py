"""Bench results as a terminal table, a JSON document and a CSV file.

JSON schema (``SCHEMA``)::

    {"schema": "fastbert-bench/1",
     "metadata": {...see metadata.collect...},
     "settings": {"device", "variants", "baselines", "warmup", "repeats",
                  "max_seconds_per_variant", "time_budget_s", "seed", "notes": [...]},
     "wall_time_s": float, "complete": bool (False in the partial file saved during the sweep),
     "results": [{"config": {"model", "batch", "seq_len", "dtype", "varlen"}, "label",
                  "real_tokens", "padded_tokens", "padding_fraction", "reference",
                  "variants": {name: {"status": "ok"|"oom"|"error"|"skipped", "median_ms",
                                      "p90_ms", "min_ms", "repeats", "first_call_ms", "timer",
                                      "real_tokens_per_s", "padded_tokens_per_s",
                                      "peak_memory_bytes", "memory_kind", "rel_error",
                                      "max_abs_error", "backends" (fastbert variants: op=backend
                                      pairs its dispatch chose), "error"}},
                  "speedup": {fastbert variant: {baseline: baseline median_ms / its median_ms}}}]}

The CSV has one row per (configuration, variant) with the same numbers (``CSV_COLUMNS``).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from fastbert.bench.runners import BASELINES

SCHEMA = "fastbert-bench/1"
CONFIG_COLUMNS = ["model", "batch", "seq_len", "dtype", "varlen"]
VARIANT_COLUMNS = ["status", "median_ms", "p90_ms", "min_ms", "repeats", "first_call_ms", "real_tokens_per_s",
                   "padded_tokens_per_s", "peak_memory_bytes", "rel_error", "max_abs_error", "backends", "error"]
CSV_COLUMNS = (CONFIG_COLUMNS + ["real_tokens", "padded_tokens", "padding_fraction", "variant"] + VARIANT_COLUMNS
               + [f"speedup_vs_{b}" for b in BASELINES])


def document(metadata: dict, settings: dict, entries: list[dict], wall_time_s: float, complete: bool) -> dict:
    """The JSON document of one bench run (``complete`` False while the sweep is still running)."""
    return {"schema": SCHEMA, "metadata": metadata, "settings": settings, "wall_time_s": wall_time_s,
            "complete": complete, "results": entries}


def csv_rows(entries: list[dict]) -> list[dict]:
    """One flat row per (configuration, variant); ``speedup_vs_*`` only on fastbert rows."""
    rows = []
    for e in entries:
        for name, r in e["variants"].items():
            row = {k: e["config"][k] for k in CONFIG_COLUMNS}
            row.update(real_tokens=e["real_tokens"], padded_tokens=e["padded_tokens"],
                       padding_fraction=e["padding_fraction"], variant=name)
            row.update({k: r[k] for k in VARIANT_COLUMNS})
            for base in BASELINES:
                row[f"speedup_vs_{base}"] = e["speedup"].get(name, {}).get(base)
            rows.append(row)
    return rows


def write_json(doc: dict, path: Path) -> None:
    """Write the document (NaN/inf written as strings are avoided: they become null)."""
    path.write_text(json.dumps(_finite(doc), indent=1), encoding="utf-8")


def _finite(value):
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return None if value != value else str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def write_csv(entries: list[dict], path: Path) -> None:
    """Write :func:`csv_rows` with a header; empty cells for missing values."""
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for row in csv_rows(entries):
            writer.writerow({k: ("" if v is None else v) for k, v in row.items()})


def _cell(result: dict) -> str:
    if result["status"] == "ok":
        return f"{result['median_ms']:.3g}"
    return result["status"]


def format_table(entries: list[dict], variants: list[str]) -> str:
    """One row per configuration: median ms per variant, fastbert's speedups over each
    baseline, fastbert's real tokens/s and relative error."""
    baselines = [v for v in variants if v in BASELINES]
    fb_variants = [v for v in variants if v not in BASELINES]
    head = ["model", "dtype", "batch", "seq", "pad%"] + [f"{v} ms" for v in variants]
    head += [f"{fb}/{b}" for fb in fb_variants for b in baselines] + ["fb tok/s", "fb rel err"]
    rows = []
    for e in entries:
        c = e["config"]
        row = [c["model"], c["dtype"], str(c["batch"]), f"{c['seq_len']}{'v' if c['varlen'] else ''}",
               f"{100 * e['padding_fraction']:.0f}"]
        row += [_cell(e["variants"][v]) for v in variants]
        row += [_speedup_cell(e, fb, b) for fb in fb_variants for b in baselines]
        fb = e["variants"].get("fastbert", {})
        row.append(f"{fb['real_tokens_per_s']:.3g}" if fb.get("status") == "ok" else "-")
        row.append(f"{fb['rel_error']:.1e}" if fb.get("rel_error") is not None else "-")
        rows.append(row)
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(head, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(x.rjust(w) for x, w in zip(r, widths)) for r in rows]
    legend = ("seq 'v' = variable-length rows (uniform in [16, seq]); a/b = speedup of a over b = b's median / a's median; "
              "'fb' = fastbert; tok/s counts real (non-padded) tokens")
    return "\n".join(lines + ["", legend])


def _speedup_cell(entry: dict, fb: str, base: str) -> str:
    value = entry["speedup"].get(fb, {}).get(base)
    return f"{value:.2f}x" if value is not None else "-"
