"""The measured tables: one JSON file each in this folder, one reader, one writer.

A table file holds ``{"about": ..., "written_by": ..., "table": {key: value}}``: what the
table decides, the benchmark command that measured it, and the measurements, keyed by
GPU architecture (``"80"``, ``"90"``) or device type (``"cpu"``). Only the benchmark
scripts write them (``--write-table``), replacing their own key and keeping the others;
nothing in a table is estimated.

==================  ===========================================  ==================================
table               read by                                      written by
==================  ===========================================  ==================================
linear_crossover    fastbert.kernels.linear_table (fused Triton  benchmarks/linear_crossover.py
                    GEMM or cuBLAS + epilogue, per shape)
sparse_crossover    fastbert.kernels.sparse_table (block-sparse  benchmarks/sparse_crossover.py
                    or 2:4 instead of dense, per shape)
unpad_threshold     fastbert.modules.unpad_policy (padding       benchmarks/unpad_cpu.py
                    fraction above which "auto" unpads)
==================  ===========================================  ==================================
"""

from __future__ import annotations

import json
from pathlib import Path

TABLE_DIR = Path(__file__).resolve().parent
"""Where the table files live (the package's data folder)."""


def table_path(name: str) -> Path:
    """The JSON file of the table called ``name``."""
    return TABLE_DIR / f"{name}.json"


def load_table(name: str, key=str) -> dict:
    """The measurements of the table called ``name`` (its ``"table"`` object), with each key
    passed through ``key`` (``int`` for tables keyed by GPU architecture)."""
    table = json.loads(table_path(name).read_text(encoding="utf-8"))["table"]
    return {key(k): v for k, v in table.items()}


def write_table(name: str, key: str, value) -> Path:
    """Replace the measurements under ``key`` in the table called ``name``, keeping every
    other key and the file's description; returns the file written."""
    path = table_path(name)
    doc = json.loads(path.read_text(encoding="utf-8"))
    doc["table"][str(key)] = value
    doc["table"] = dict(sorted(doc["table"].items()))
    path.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    return path
