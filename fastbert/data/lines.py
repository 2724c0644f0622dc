"""Texts files: one text per line, the format of ``--texts`` and ``--calibration`` and of the
shipped ``sentences.txt`` / ``corpus.tsv``.

A line ends at ``"\\n"`` only (``"\\r\\n"`` too: a trailing ``"\\r"`` is dropped). Python's
``str.splitlines()`` also breaks at U+2028, U+2029, U+0085, ``\\x0b``, ``\\x0c`` and
``\\x1c``-``\\x1e``, characters that occur inside real texts (copied from web pages and PDFs),
so it would turn one text into several. Lines that are empty or hold only whitespace are
skipped; every other line is one text exactly as written (a UTF-8 byte-order mark at the
start of the file is not part of the first text).
"""

from __future__ import annotations

from pathlib import Path


def text_lines(content: str) -> list[str]:
    """The texts of a texts file's ``content``: split at ``"\\n"`` only, a trailing ``"\\r"``
    removed from each line, blank (empty or whitespace-only) lines skipped."""
    lines = (line[:-1] if line.endswith("\r") else line for line in content.split("\n"))
    return [line for line in lines if line.strip()]


def read_text_lines(path: str | Path) -> list[str]:
    """:func:`text_lines` of a UTF-8 file (read without newline translation, so a lone
    ``"\\r"`` stays inside its text); raises ``OSError`` / ``UnicodeDecodeError`` as reading does."""
    with open(path, encoding="utf-8-sig", newline="") as fh:
        return text_lines(fh.read())
