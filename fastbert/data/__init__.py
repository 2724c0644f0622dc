"""Small data shipped with fastbert."""

from pathlib import Path


def sentences() -> list[str]:
    """Real English sentences for numerics checks (one per line in ``sentences.txt``)."""
    text = (Path(__file__).with_name("sentences.txt")).read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]
