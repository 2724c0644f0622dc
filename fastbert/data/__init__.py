"""Data shipped with fastbert: real sentences for numerics checks, and the measured tables.

Imports nothing from fastbert, so every layer may read it. The measured tables (which
GEMM path per shape, when a pruned matrix runs sparse, when "auto" unpads) are JSON
files here, read by :func:`fastbert.data.tables.load_table` and written only by the
benchmark scripts that measure them (:func:`fastbert.data.tables.write_table`).
"""

from pathlib import Path


def sentences() -> list[str]:
    """Real English sentences for numerics checks (one per line in ``sentences.txt``)."""
    text = (Path(__file__).with_name("sentences.txt")).read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]
