"""Data shipped with fastbert: real sentences for numerics checks, a small topical corpus
(semantic search example, default text of ``fastbert bench --model``), and the measured tables.

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


def corpus() -> list[tuple[str, str]]:
    """``(topic, sentence)`` pairs of ``corpus.tsv``: 300 sentences written for fastbert, 25
    on each of 12 everyday topics (cooking, astronomy, gardening, ...), of varied lengths."""
    text = (Path(__file__).with_name("corpus.tsv")).read_text(encoding="utf-8")
    rows = [line.split("\t") for line in text.splitlines() if line.strip()]
    return [(topic.strip(), sentence.strip()) for topic, sentence in rows]
