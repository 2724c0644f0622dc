"""A bench run's results: the terminal table, the JSON document and CSV file, the PNG
plots, and where the numbers were measured (device, versions, commit, date).

JSON schema (``SCHEMA``)::

    {"schema": "fastbert-bench/1",
     "metadata": {...see collect_metadata...},
     "settings": {"device", "variants", "baselines", "warmup", "repeats",
                  "max_seconds_per_variant", "time_budget_s", "seed", "quick", "notes": [...],
                  "arguments": {the command's arguments}},
     "wall_time_s": float, "complete": bool (False in the partial file saved during the sweep),
     "results": [{"config": {"model", "batch", "seq_len", "dtype", "varlen"}, "label",
                  "real_tokens", "padded_tokens", "padding_fraction", "reference",
                  "variants": {name: {"status": "ok"|"oom"|"error"|"skipped", "median_ms",
                                      "p90_ms", "min_ms", "repeats", "first_call_ms", "timer",
                                      "real_tokens_per_s", "padded_tokens_per_s",
                                      "peak_memory_bytes", "memory_kind", "rel_error",
                                      "max_abs_error", "backends" (fastbert variants: op=backend
                                      pairs its dispatch chose), "error"}},
                  "speedup": {fastbert variant: {baseline: baseline median_ms / its median_ms}},
                  "speedup_reliable": {fastbert variant: {baseline: false when the two variants'
                                       [min_ms, p90_ms] ranges overlap}}}]}

The CSV has one row per (configuration, variant) with the same numbers (``CSV_COLUMNS``).
Plots: one figure pair per (model, dtype), throughput and fastbert's speedup against batch
size, one line per sequence length. matplotlib is imported lazily: without it no plot is
written (:func:`pyplot` returns None). The metadata names no host.
"""

from __future__ import annotations

import csv
import datetime
import json
import os
import platform
import subprocess
import time
from collections import defaultdict
from pathlib import Path

import torch

import fastbert
from fastbert.bench.variants import BASELINES


# ---------------------------------------------------------------------------
# Table, JSON, CSV
# ---------------------------------------------------------------------------


SCHEMA = "fastbert-bench/1"
CONFIG_COLUMNS = ["model", "batch", "seq_len", "dtype", "varlen"]
VARIANT_COLUMNS = ["status", "median_ms", "p90_ms", "min_ms", "repeats", "first_call_ms", "real_tokens_per_s",
                   "padded_tokens_per_s", "peak_memory_bytes", "rel_error", "max_abs_error", "backends", "error"]


def csv_columns(config_columns: list[str] = CONFIG_COLUMNS, variant_columns: list[str] = VARIANT_COLUMNS) -> list[str]:
    """The CSV header: configuration, token counts, variant, its numbers, speedups."""
    return (config_columns + ["real_tokens", "padded_tokens", "padding_fraction", "variant"] + variant_columns
            + [f"speedup_vs_{b}" for b in BASELINES] + [f"speedup_reliable_vs_{b}" for b in BASELINES])


CSV_COLUMNS = csv_columns()


def document(metadata: dict, settings: dict, entries: list[dict], wall_time_s: float, complete: bool,
             schema: str = SCHEMA) -> dict:
    """The JSON document of one bench run (``complete`` False while the sweep is still running)."""
    return {"schema": schema, "metadata": metadata, "settings": settings, "wall_time_s": wall_time_s,
            "complete": complete, "results": entries}


def csv_rows(entries: list[dict], config_columns: list[str] = CONFIG_COLUMNS,
             variant_columns: list[str] = VARIANT_COLUMNS) -> list[dict]:
    """One flat row per (configuration, variant); ``speedup_vs_*`` and ``speedup_reliable_vs_*``
    only on fastbert rows."""
    rows = []
    for e in entries:
        for name, r in e["variants"].items():
            row = {k: e["config"][k] for k in config_columns}
            row.update(real_tokens=e["real_tokens"], padded_tokens=e["padded_tokens"],
                       padding_fraction=e["padding_fraction"], variant=name)
            row.update({k: r.get(k) for k in variant_columns})
            for base in BASELINES:
                row[f"speedup_vs_{base}"] = e["speedup"].get(name, {}).get(base)
            for base in BASELINES:
                row[f"speedup_reliable_vs_{base}"] = e.get("speedup_reliable", {}).get(name, {}).get(base)
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


def write_csv(entries: list[dict], path: Path, config_columns: list[str] = CONFIG_COLUMNS,
              variant_columns: list[str] = VARIANT_COLUMNS) -> None:
    """Write :func:`csv_rows` with a header; empty cells for missing values."""
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=csv_columns(config_columns, variant_columns))
        writer.writeheader()
        for row in csv_rows(entries, config_columns, variant_columns):
            writer.writerow({k: ("" if v is None else v) for k, v in row.items()})


UNRELIABLE = "?"
"""Mark after a ratio whose two variants' timing ranges overlap (:func:`fastbert.bench.measure.ranges_overlap`)."""
SPREAD_RULE = ("'?' after a ratio: unreliable, the two variants' ranges (fastest call to 90th percentile) overlap, "
               "so which is faster depends on the calls compared")


def spread_cell(median: float, low: float, high: float, fmt: str = ".3g") -> str:
    """``median (low-high)``: a timing with its spread, e.g. ``12.3 (11.9-14.1)``."""
    return f"{median:{fmt}} ({low:{fmt}}-{high:{fmt}})"


def _cell(result: dict) -> str:
    if result["status"] == "ok":
        return spread_cell(result["median_ms"], result["min_ms"], result["p90_ms"])
    return result["status"]


def unreliable_count(entries: list[dict]) -> tuple[int, int]:
    """(ratios marked unreliable, ratios) over ``entries``' ``speedup_reliable``."""
    flags = [ok for e in entries for per in e.get("speedup_reliable", {}).values() for ok in per.values()]
    return flags.count(False), len(flags)


def noise_warning(entries: list[dict]) -> str | None:
    """A line saying how many ratios are unreliable (None when none is)."""
    bad, total = unreliable_count(entries)
    if not bad:
        return None
    return (f"warning: {bad} of {total} ratios are marked '{UNRELIABLE}' (timing ranges overlap): the machine was too "
            "noisy to tell them apart; rerun with more --repeats on a quieter machine before reading them")


def format_table(entries: list[dict], variants: list[str]) -> str:
    """One row per configuration: median (min-p90) ms per variant, fastbert's speedups over
    each baseline (marked unreliable where the two timing ranges overlap), fastbert's real
    tokens/s and relative error; a warning line when any ratio is unreliable."""
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
    legend = ("ms = median (fastest-90th percentile) of the timed calls; seq 'v' = variable-length rows (uniform in "
              "[16, seq]); a/b = speedup of a over b = b's median / a's median; " + SPREAD_RULE + "; 'fb' = fastbert; "
              "tok/s counts real (non-padded) tokens")
    warning = noise_warning(entries)
    return "\n".join(lines + ["", legend] + ([warning] if warning else []))


def _speedup_cell(entry: dict, fb: str, base: str) -> str:
    value = entry["speedup"].get(fb, {}).get(base)
    if value is None:
        return "-"
    reliable = entry.get("speedup_reliable", {}).get(fb, {}).get(base, True)
    return f"{value:.2f}x" + ("" if reliable else UNRELIABLE)


class BenchRecord:
    """The files of one bench run in ``out_dir``: ``bench.json`` and ``bench.csv``, saved after
    every configuration (``"complete": false``) and at the end, with the run's metadata and
    settings; then the terminal table, the plots and a footer."""

    def __init__(self, device: str, settings: dict, out_dir: Path, started: float):
        """``started``: the run's start on ``time.perf_counter``'s clock (for ``wall_time_s``)."""
        self.metadata = collect_metadata(device)
        self.settings, self.out_dir, self.started = settings, out_dir, started

    def save(self, entries: list[dict], complete: bool = False) -> dict:
        """Write the JSON and CSV of ``entries`` (all configurations so far); returns the document."""
        doc = document(self.metadata, self.settings, entries, time.perf_counter() - self.started, complete)
        write_json(doc, self.out_dir / "bench.json")
        write_csv(entries, self.out_dir / "bench.csv")
        return doc

    def finish(self, entries: list[dict], plots: bool = True) -> dict:
        """Print the table, write the plots (when ``plots``), save the complete files and print
        the footer; returns the document."""
        print(format_table(entries, self.settings["variants"]))
        written = write_plots(document(self.metadata, self.settings, entries, 0.0, True), self.out_dir) if plots else None
        doc = self.save(entries, complete=True)
        _print_footer(doc, self.out_dir, written, no_plots=not plots)
        return doc


def _print_footer(doc: dict, out_dir: Path, written, no_plots: bool) -> None:
    statuses = [r["status"] for e in doc["results"] for r in e["variants"].values()]
    failed = {s: statuses.count(s) for s in ("oom", "error", "skipped") if s in statuses}
    for note in doc["settings"]["notes"]:
        print(f"note: {note}")
    if doc["results"]:
        print(f"rel err: against {doc['results'][0]['reference']}, on real (non-padded) tokens, last hidden state")
    if failed:
        print("not measured: " + ", ".join(f"{n} {s}" for s, n in failed.items()) + " (see bench.json for messages)")
    plots_line = ("plots: skipped (--no-plots)" if no_plots else
                  "plots: skipped (matplotlib is not installed)" if written is None else
                  f"plots: {', '.join(p.name for p in written)}")
    print(plots_line)
    print(f"wrote {out_dir / 'bench.json'} and {out_dir / 'bench.csv'}; wall time {doc['wall_time_s']:.1f} s")


# ---------------------------------------------------------------------------
# Where it was measured
# ---------------------------------------------------------------------------


def _run(cmd: list[str], cwd: str | None = None) -> str | None:
    try:
        out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except Exception:
        return None


def git_commit() -> dict:
    """``{"commit", "dirty"}`` of the checkout fastbert is imported from, or Nones."""
    repo = str(Path(__file__).resolve().parents[2])
    commit = _run(["git", "rev-parse", "HEAD"], cwd=repo)
    status = _run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo) if commit else None
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def cpu_name() -> str | None:
    """The CPU model from /proc/cpuinfo (Linux) or ``platform.processor()``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def gpu_info(device: torch.device) -> dict:
    """GPU name, compute capability, memory and driver version (via nvidia-smi, when present)."""
    props = torch.cuda.get_device_properties(device)
    index = device.index if device.index is not None else torch.cuda.current_device()
    driver = _run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader", f"--id={index}"])
    return {
        "gpu_name": props.name,
        "compute_capability": f"{props.major}.{props.minor}",
        "gpu_memory_bytes": props.total_memory,
        "driver_version": driver,
        "cuda_version": torch.version.cuda,
    }


def collect_metadata(device) -> dict:
    """Metadata for a results file. ``measured_on_gpu`` says whether the numbers are GPU numbers."""
    device = torch.device(device)
    meta = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": device.type,
        "measured_on_gpu": device.type == "cuda",
        "cpu_name": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": f"{platform.system()} {platform.machine()}",
        "torch": torch.__version__,
        "triton": _version("triton"),
        "transformers": _version("transformers"),
        "fastbert": fastbert.__version__,
        **git_commit(),
        # Settings that change what fastbert runs (backend forcing, the Triton interpreter, input checks).
        "env": {k: os.environ.get(k) for k in ("FASTBERT_BACKEND", "TRITON_INTERPRET", "FASTBERT_CHECK_INPUTS",
                                               "CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS")},
    }
    if device.type == "cuda":
        meta.update(gpu_info(device))
    else:
        meta.update({"gpu_name": None, "driver_version": None, "cuda_version": torch.version.cuda})
    return meta


# ---------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------


def _series(entries, model, dtype, value):
    """``{line label: [(batch, y), ...]}`` for one model and dtype."""
    lines = defaultdict(list)
    for e in entries:
        c = e["config"]
        if c["model"] != model or c["dtype"] != dtype:
            continue
        y = value(e)
        if y is not None:
            lines[f"seq {c['seq_len']}{' varlen' if c['varlen'] else ''}"].append((c["batch"], y))
    return {k: sorted(v) for k, v in lines.items()}


def _panel(ax, lines, title, ylabel):
    batches = sorted({p[0] for points in lines.values() for p in points})
    for label, points in sorted(lines.items()):
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
    ax.set_xscale("log", base=2)
    if batches:
        ax.set_xticks(batches, [str(b) for b in batches])
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("batch size")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    if lines:
        ax.legend(fontsize=7)


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)


def pyplot():
    """``matplotlib.pyplot`` on the file-only Agg backend, or None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def write_plots(doc: dict, out_dir: Path, what: str = "") -> list[Path] | None:
    """Write ``throughput-<model>-<dtype>.png`` and ``speedup-<model>-<dtype>.png`` into
    ``out_dir``; returns their paths, or None when matplotlib is not installed. ``what``
    (e.g. "training step") goes into the titles."""
    plt = pyplot()
    if plt is None:
        return None
    entries, meta = doc["results"], doc["metadata"]
    where = f"GPU: {meta['gpu_name']}" if meta.get("measured_on_gpu") else f"CPU (not a GPU result): {meta.get('cpu_name')}"
    variants = doc["settings"]["variants"]
    baselines = [v for v in variants if v in BASELINES]
    written = []
    for model, dtype in sorted({(e["config"]["model"], e["config"]["dtype"]) for e in entries}):
        suffix = f"{_safe(Path(model).name)}-{dtype}.png"
        fig, axes = plt.subplots(1, len(variants), figsize=(3.6 * len(variants), 3.4), squeeze=False)
        for ax, v in zip(axes[0], variants):
            lines = _series(entries, model, dtype, lambda e, v=v: e["variants"][v]["real_tokens_per_s"])
            _panel(ax, lines, v, "real tokens / s")
        fig.suptitle(f"{model} {dtype}: {what + ' ' if what else ''}throughput (median) — {where}", fontsize=10)
        fig.tight_layout()
        written.append(out_dir / f"throughput-{suffix}")
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)
        if baselines:
            fig, axes = plt.subplots(1, len(baselines), figsize=(3.6 * len(baselines), 3.4), squeeze=False)
            for ax, b in zip(axes[0], baselines):
                lines = _series(entries, model, dtype, lambda e, b=b: e["speedup"].get("fastbert", {}).get(b))
                _panel(ax, lines, f"fastbert vs {b}", "speedup (x)")
                ax.axhline(1.0, color="grey", linewidth=0.8)
            fig.suptitle(f"{model} {dtype}: fastbert {what + ' ' if what else ''}speedup — {where}", fontsize=10)
            fig.tight_layout()
            written.append(out_dir / f"speedup-{suffix}")
            fig.savefig(written[-1], dpi=110)
            plt.close(fig)
    return written
