"""Texts files (``--texts``, ``--calibration``, the shipped data): one text per line, split at
``"\\n"`` only, by one reader (fastbert/data/lines.py) that every command uses."""

from __future__ import annotations

import random

import pytest

from fastbert.bench.user_model import read_texts
from fastbert.data import read_text_lines, text_lines
from fastbert.prune.command import read_calibration_texts

# Characters str.splitlines() breaks at that a texts file's line may hold.
INNER = ["\u2028", "\u2029", "\x85", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e"]


def _texts(seed: int, n: int) -> list[str]:
    """``n`` seeded texts, each with a word, one of INNER (sometimes a lone "\\r") and more words."""
    rng = random.Random(seed)
    words = ["comet", "basil", "bread", "tide", "café", "straße", "数据"]
    inner = INNER + ["\r"]
    return [f"{rng.choice(words)} {rng.choice(words)}{rng.choice(inner)}{rng.choice(words)} end." for _ in range(n)]


def _file(tmp_path, content: str, name: str = "texts.txt"):
    path = tmp_path / name
    path.write_bytes(content.encode("utf-8"))
    return path


@pytest.mark.parametrize("ending", ["\n", "\r\n"])
def test_a_line_is_one_text_whatever_it_holds(tmp_path, ending):
    texts = _texts(0, 9)
    path = _file(tmp_path, ending.join(texts[:4] + ["", "  \t"] + texts[4:]) + ending)
    assert read_text_lines(path) == texts


def test_a_byte_order_mark_is_not_part_of_the_first_text(tmp_path):
    texts = _texts(1, 3)
    assert read_text_lines(_file(tmp_path, "\ufeff" + "\n".join(texts))) == texts
    assert text_lines("a\n\n b \n") == ["a", " b "]  # texts are kept as written


@pytest.mark.parametrize("reader", [
    lambda p: read_texts(str(p))[0],  # bench --texts, profile --texts
    lambda p: read_calibration_texts(str(p), "wanda"),  # prune --calibration
], ids=["bench-profile-texts", "prune-calibration"])
def test_every_command_reads_a_texts_file_the_same_way(tmp_path, reader):
    texts = _texts(2, 3)
    assert reader(_file(tmp_path, "\n".join(texts) + "\n")) == texts
