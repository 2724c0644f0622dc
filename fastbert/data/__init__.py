"""Data shipped with fastbert: real sentences for numerics checks, a small topical corpus
(semantic search example, default text of ``fastbert bench --model``), the measured tables,
and the one reader of texts files (:mod:`fastbert.data.lines`: one text per line).

Imports nothing from fastbert, so every layer may read it. The measured tables (which
GEMM path per shape, when a pruned matrix runs sparse, when "auto" unpads) are JSON
files here, read by :func:`fastbert.data.tables.load_table` and written only by the
benchmark scripts that measure them (:func:`fastbert.data.tables.write_table`).
"""

from pathlib import Path

from fastbert.data.lines import read_text_lines, text_lines

__all__ = ["sentences", "corpus", "read_text_lines", "text_lines"]


def sentences() -> list[str]:
    """Real English sentences for numerics checks (one per line in ``sentences.txt``)."""
    return [line.strip() for line in read_text_lines(Path(__file__).with_name("sentences.txt"))]


def corpus() -> list[tuple[str, str]]:
    """``(topic, sentence)`` pairs of ``corpus.tsv``: 300 sentences written for fastbert, 25
    on each of 12 everyday topics (cooking, astronomy, gardening, ...), of varied lengths."""
    rows = [line.split("\t") for line in read_text_lines(Path(__file__).with_name("corpus.tsv"))]
    return [(topic.strip(), sentence.strip()) for topic, sentence in rows]
