"""Turn one GPU suite run's output into committed results and the README's performance table.

    python benchmarks/ingest_gpu_results.py OUT_DIR                 # a GPU run's files (summary.json, results.tar.gz, ...)
    python benchmarks/ingest_gpu_results.py OUT_DIR --apply-tables  # also copy the measured dispatch tables in

``OUT_DIR`` is what ``benchmarks/gpu_suite.sh OUT_DIR`` wrote (on the GPU machine:
``$OUT``, fetched back). This writes ``benchmarks/results/<gpu>-<date>/``: the suite's
summary, environment, microbenchmark, gate, bench, profile and crossover JSONs,
PNG charts of the microbenchmarks (and the bench/profile PNGs), the step logs, and a
README.md naming the GPU, driver, versions, date and commit; then it replaces the
block between ``<!-- BEGIN GPU RESULTS -->`` and ``<!-- END GPU RESULTS -->`` in the
repository's README.md with a table of the headline numbers and where they came from.

It refuses a CPU dry run's output (any file saying ``measured_on_gpu: false``) unless
``--allow-cpu``; then the folder is named ``cpu-dry-run-<date>`` and every title and
table says "CPU dry run: not GPU results". ``--apply-tables`` copies the
entries the crossover steps measured on the GPU (the measured architecture's key of
``fastbert/data/linear_crossover.json`` and ``sparse_crossover.json``, as the run rewrote
them) into this checkout's tables, keeping every other architecture's entries (never
from a CPU run).
Exit codes: 0 done, 2 refused or bad input (one-line message).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- BEGIN GPU RESULTS -->", "<!-- END GPU RESULTS -->"
CPU_LABEL = "CPU dry run: not GPU results"
# Files kept from the tarball (relative paths); profiler traces are left out (large: regenerate them).
KEEP = ("env.json", "attention.json", "elementwise.json", "compile-check.json", "gpu-tests.xml",
        "bench/bench.json", "bench/bench.csv", "profile/profile.json", "linear_crossover.json", "sparse_crossover.json",
        "prune_speed.json")
KEEP_GLOBS = ("bench/*.png", "profile/*.png", "logs/*.log")
MEASUREMENTS = ("attention.json", "elementwise.json", "bench/bench.json", "profile/profile.json", "prune_speed.json")


class Refused(Exception):
    """The input cannot be ingested (the message says why)."""


def load_run(out_dir: Path, scratch: Path) -> tuple[dict, Path]:
    """The suite's summary and the folder its tarball was unpacked into."""
    summary_path, tar_path = out_dir / "summary.json", out_dir / "results.tar.gz"
    for path in (summary_path, tar_path):
        if not path.is_file():
            raise Refused(f"{path} is missing: OUT_DIR must be what benchmarks/gpu_suite.sh wrote")
    summary = json.loads(summary_path.read_text())
    with tarfile.open(tar_path) as tar:
        tar.extractall(scratch, filter="data")
    return summary, scratch


def gpu_flags(summary: dict, run: Path) -> dict[str, bool | None]:
    """``measured_on_gpu`` as each file states it (None where a file is absent)."""
    flags: dict[str, bool | None] = {"summary.json": summary.get("measured_on_gpu")}
    flags["env.json"] = (summary.get("env") or {}).get("measured_on_gpu")
    for name in MEASUREMENTS:
        path = run / name
        if path.is_file():
            doc = json.loads(path.read_text())
            flags[name] = (doc.get("meta") or doc.get("metadata") or {}).get("measured_on_gpu")
    return flags


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def folder_name(summary: dict, on_gpu: bool) -> str:
    """``h200-2026-12-01`` (the GPU's name without 'NVIDIA'), or ``cpu-dry-run-<date>``."""
    date = summary["started_utc"][:10]
    if not on_gpu:
        return f"cpu-dry-run-{date}"
    gpu = (summary.get("env") or {}).get("gpu_name") or "unknown-gpu"
    return f"{_slug(gpu.replace('NVIDIA', ''))}-{date}"


def copy_results(run: Path, dest: Path) -> list[str]:
    """The kept files of the run into ``dest``, same relative paths; returns them."""
    kept = [name for name in KEEP if (run / name).is_file()]
    kept += sorted(str(p.relative_to(run)) for pattern in KEEP_GLOBS for p in run.glob(pattern))
    for name in kept:
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(run / name, dest / name)
    return kept


def _json(run: Path, name: str) -> dict | None:
    path = run / name
    return json.loads(path.read_text()) if path.is_file() else None


def attention_table(doc: dict | None) -> list[str]:
    """Markdown rows: fastbert vs SDPA flash, TFLOP/s, per shape and pass."""
    if not doc:
        return ["(attention microbenchmark: no results)"]
    lines = ["| attention (B, H, S, D) | dtype | pass | fastbert TFLOP/s | SDPA flash TFLOP/s | fastbert / SDPA |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in doc["rows"]:
        agrees = "" if r.get("agrees", True) else " (outputs disagree)"
        lines.append(f"| ({r['batch']}, {r['heads']}, {r['seq']}, {r['head_dim']}) | {r['dtype']} | {r['mode']} | "
                     f"{r['fastbert_tflops']:.4g} | {r['sdpa_flash_tflops']:.4g} | {r['fastbert_over_sdpa']:.3g}x{agrees} |")
    return lines


def elementwise_table(doc: dict | None) -> list[str]:
    """Markdown rows: fastbert and PyTorch GB/s against the copy ceiling."""
    if not doc:
        return ["(elementwise microbenchmark: no results)"]
    lines = ["| op | tokens x hidden | dtype | fastbert GB/s | PyTorch GB/s | copy GB/s | fastbert / copy |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in doc["rows"]:
        lines.append(f"| {r['op']} | {r['tokens']} x {r['hidden']} | {r['dtype']} | {r['fastbert_gbps']:.4g} | "
                     f"{r['torch_gbps']:.4g} | {r['copy_gbps']:.4g} | {r['fastbert_of_copy']:.0%} |")
    return lines


def steps_table(summary: dict) -> list[str]:
    """Markdown rows: each suite step's exit code, seconds and limit."""
    lines = ["| step | exit | seconds | limit (s) | files written |", "| --- | --- | --- | --- | --- |"]
    for s in summary["steps"]:
        files = ", ".join(f"{n}{'' if ok else ' (missing)'}" for n, ok in s["outputs"].items())
        lines.append(f"| {s['name']} | {s['exit_code']}{' (timed out)' if s['timed_out'] else ''} | {s['seconds']} | "
                     f"{s['limit_s']} | {files} |")
    return lines


def gate_line(doc: dict | None) -> str:
    """One line: the build gate's counts per architecture on this run's Triton."""
    if not doc:
        return "Build gate: no results."
    counts = "; ".join(f"{arch}: {c['ok']} ok, {c['failed']} failed" for arch, c in doc["summary"].items())
    return f"Build gate (Triton {doc['triton']}): {counts}."


def environment_lines(summary: dict) -> list[str]:
    """GPU, driver, CUDA and library versions, date and commit, as a bullet list."""
    env = summary.get("env") or {}
    dirty = " (uncommitted changes)" if env.get("dirty") else ""
    return [
        f"- GPU: {env.get('gpu_name') or 'none (CPU)'} (compute capability {env.get('compute_capability')}), "
        f"driver {env.get('driver_version')}, CUDA {env.get('cuda_version')}",
        f"- Python {env.get('python')}, torch {env.get('torch')}, triton {env.get('triton')}, "
        f"transformers {env.get('transformers')}, numpy {env.get('numpy')}",
        f"- Date (UTC): {summary['started_utc']}; fastbert commit {env.get('commit')}{dirty}",
        f"- Command: `benchmarks/gpu_suite.sh OUT_DIR` ({summary['seconds']} s of a {summary['budget_s']:.0f} s budget), "
        "then `python benchmarks/ingest_gpu_results.py OUT_DIR`",
    ]


def write_charts(run: Path, dest: Path) -> list[str]:
    """attention.png and elementwise.png (bar charts); none without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    written = []
    charts = (("attention.json", "attention.png", "TFLOP/s", ("fastbert_tflops", "sdpa_flash_tflops"),
               lambda r: f"{r['batch']}x{r['heads']}x{r['seq']}x{r['head_dim']}\n{r['dtype']} {r['mode']}"),
              ("elementwise.json", "elementwise.png", "GB/s", ("fastbert_gbps", "torch_gbps", "copy_gbps"),
               lambda r: f"{r['op']}\n{r['tokens']}x{r['hidden']} {r['dtype']}"))  # fmt: skip
    for source, target, unit, keys, label in charts:
        doc = _json(run, source)
        if not doc or not doc["rows"]:
            continue
        fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(doc["rows"])), 4))
        width = 0.8 / len(keys)
        for i, key in enumerate(keys):
            xs = [j + i * width for j in range(len(doc["rows"]))]
            ax.bar(xs, [r[key] for r in doc["rows"]], width, label=key.rsplit("_", 1)[0])
        ax.set_xticks([j + width * (len(keys) - 1) / 2 for j in range(len(doc["rows"]))])
        ax.set_xticklabels([label(r) for r in doc["rows"]], fontsize=7)
        ax.set_ylabel(unit)
        meta = doc["meta"]
        where = meta.get("gpu_name") if meta.get("measured_on_gpu") else CPU_LABEL
        ax.set_title(f"{Path(source).stem} ({where})", fontsize=9)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(dest / target, dpi=110)
        plt.close(fig)
        written.append(target)
    return written


def prune_table(doc: dict | None) -> list[str]:
    """Dense vs 2:4 vs block-sparse FFN rows of ``prune_speed.json`` as a Markdown table."""
    if not doc or not doc.get("results"):
        return ["(not measured in this run)"]
    lines = ["| what | tokens | ms (median) | vs dense |", "| --- | --- | --- | --- |"]
    for row in doc["results"]:
        lines.append(f"| {row['what']} | {row.get('tokens', '')} | {row['seconds_median'] * 1e3:.3f} | "
                     f"{row['speedup_vs_dense']:.2f}x |")
    return lines


def results_readme(summary: dict, run: Path, name: str, on_gpu: bool, files: list[str]) -> str:
    """The README.md of one results folder."""
    title = f"# {name}: fastbert GPU suite results" if on_gpu else f"# {name}: {CPU_LABEL.upper()}"
    lines = [title, ""]
    if not on_gpu:
        lines += [f"**{CPU_LABEL}.** A dry run of `benchmarks/gpu_suite.sh` on the CPU (tiny shapes), ingested with "
                  "`--allow-cpu` to test the tooling. No number here says anything about a GPU.", ""]
    lines += environment_lines(summary) + ["", "## Steps", ""] + steps_table(summary)
    lines += ["", "## Attention (fastbert vs PyTorch SDPA, flash backend)", ""] + attention_table(_json(run, "attention.json"))
    lines += ["", "FLOPs: forward 4·B·H·S²·D, forward+backward 14·B·H·S²·D (backward = 2.5 × forward, as "
              "FlashAttention counts); `benchmarks/attention_microbench.py`."]
    lines += ["", "## LayerNorm and GELU (GB/s against a device-to-device copy)", ""]
    lines += elementwise_table(_json(run, "elementwise.json")) + ["", gate_line(_json(run, "compile-check.json"))]
    lines += ["", "## Pruned FFN (fp16, `benchmarks/prune_speed.py --parts ffn`)", ""] + prune_table(_json(run, "prune_speed.json"))
    lines += ["", "## Files", ""] + [f"- `{f}`" for f in files]
    return "\n".join(lines) + "\n"


def readme_block(summary: dict, run: Path, name: str, on_gpu: bool) -> str:
    """What goes between the README's GPU RESULTS markers."""
    env = summary.get("env") or {}
    if on_gpu:
        head = (f"Measured on {env.get('gpu_name')} on {summary['started_utc'][:10]} (driver {env.get('driver_version')}, "
                f"torch {env.get('torch')}, triton {env.get('triton')}, fastbert {str(env.get('commit'))[:10]}); "
                f"every number and its command: `benchmarks/results/{name}/`.")
    else:
        head = f"**{CPU_LABEL}** (`benchmarks/results/{name}/`, ingested with `--allow-cpu`): no GPU figure here."
    body = [head, ""] + attention_table(_json(run, "attention.json")) + [""] + elementwise_table(_json(run, "elementwise.json"))
    return "\n".join([BEGIN, *body, END])


README_BLOCK = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)


def check_readme(readme: Path) -> None:
    """Refused unless ``readme`` has the marked block (checked before anything is written)."""
    if not README_BLOCK.search(readme.read_text()):
        raise Refused(f"{readme} has no {BEGIN} ... {END} block to update")


def update_readme(readme: Path, block: str) -> None:
    """Replace the marked block of ``readme``."""
    check_readme(readme)
    readme.write_text(README_BLOCK.sub(lambda _: block, readme.read_text(), count=1))


def apply_tables(summary: dict, run: Path, data_dir: Path) -> list[str]:
    """Copy the entries each finished crossover step measured into ``data_dir``'s table files
    (a failed sweep leaves its table as it was). The measured architecture is the one the
    step's results file names; other architectures' entries in the target stay untouched."""
    finished = {s["name"] for s in summary["steps"] if s.get("ok")}
    applied = []
    for step, table in (("linear-crossover", "linear_crossover"), ("sparse-crossover", "sparse_crossover")):
        measured, results = run / "tables" / f"{table}.json", run / f"{table}.json"
        if step not in finished or not measured.is_file():
            continue
        if not results.is_file():
            raise Refused(f"{step} finished but {results.name} (which names the measured architecture) is missing")
        arch = str(json.loads(results.read_text())["meta"]["arch"])
        entries = json.loads(measured.read_text())["table"].get(arch)
        if entries is None:
            raise Refused(f"{measured.name} from the run holds no entries for sm_{arch}")
        target = data_dir / f"{table}.json"
        doc = json.loads(target.read_text())
        doc["table"] = dict(sorted((doc["table"] | {arch: entries}).items()))
        target.write_text(json.dumps(doc, indent=1) + "\n")
        applied.append(f"{table}.json (sm_{arch})")
    return applied


def ingest(out_dir: Path, results_root: Path, readme: Path, allow_cpu: bool, name: str | None = None,
           tables: bool = False, data_dir: Path = REPO / "fastbert" / "data") -> Path:
    """Do it all; returns the results folder written. Raises :class:`Refused`."""
    check_readme(readme)
    with tempfile.TemporaryDirectory() as scratch:
        summary, run = load_run(out_dir, Path(scratch))
        flags = gpu_flags(summary, run)
        on_gpu = all(flag is True for flag in flags.values() if flag is not None) and flags["summary.json"] is True
        if not on_gpu and not allow_cpu:
            cpu = sorted(k for k, v in flags.items() if v is not True)
            raise Refused(f"not GPU results ({', '.join(cpu)} say measured_on_gpu is not true): refusing; "
                          "--allow-cpu ingests a dry run, labelled as such")
        if tables and not on_gpu:
            raise Refused("--apply-tables takes tables measured on a GPU only")
        name = name or folder_name(summary, on_gpu)
        dest = results_root / name
        if dest.exists():
            raise Refused(f"{dest} exists already (pick another with --name)")
        dest.mkdir(parents=True)
        (dest / "summary.json").write_text(json.dumps(summary, indent=1))  # OUT_DIR's: it has the bundle's record
        files = ["summary.json"] + copy_results(run, dest)
        files += write_charts(run, dest)
        (dest / "README.md").write_text(results_readme(summary, run, name, on_gpu, files))
        update_readme(readme, readme_block(summary, run, name, on_gpu))
        applied = apply_tables(summary, run, data_dir) if tables else []
    print(f"wrote {dest} ({len(files)} files + README.md); updated {readme}"
          + (f"; applied {', '.join(applied)}" if applied else "")
          + ("" if on_gpu else f" -- {CPU_LABEL}"))
    return dest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, help="the folder benchmarks/gpu_suite.sh wrote")
    parser.add_argument("--allow-cpu", action="store_true", help="ingest a CPU dry run (labelled: not GPU results)")
    parser.add_argument("--apply-tables", action="store_true", help="copy the measured dispatch tables into fastbert/data/")
    parser.add_argument("--name", help="results folder name (default <gpu>-<date>)")
    parser.add_argument("--results-root", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--readme", type=Path, default=REPO / "README.md")
    args = parser.parse_args(argv)
    try:
        ingest(args.out_dir, args.results_root, args.readme, args.allow_cpu, args.name, args.apply_tables)
    except (Refused, OSError, json.JSONDecodeError, tarfile.TarError, KeyError) as exc:
        print(f"ingest_gpu_results: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
