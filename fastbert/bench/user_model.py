"""The user's own checkpoint and texts, run the way the user's code runs them: for
``fastbert bench --model PATH [--texts FILE]`` and ``fastbert profile --model PATH``.

A checkpoint folder is a sentence-transformers folder (``modules.json``) or a Hugging Face
one (``config.json``). A sentence-transformers folder runs through sentence-transformers'
own ``encode`` when that package is installed (it sorts the texts by length, tokenizes
each batch, pools and normalizes as the folder says). Otherwise, and for a Hugging Face
folder, the texts run through the transformers model as sentence-transformers would run
them: sorted by length (longest first), tokenized per batch with padding to the batch's
longest row and truncation, the base model, then mean pooling over real tokens.

Everything the user named is checked before any model loads (ValueError or TypeError,
exit code 2): the folders, the model family, the texts file.
"""

from __future__ import annotations

import copy
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import fastbert
from fastbert.cli_args import (checkpoint_config, checkpoint_dir, checkpoint_weights, load_checkpoint, one_line,
                               quiet_transformers)
from fastbert.data import corpus, read_text_lines
from fastbert.models import max_sequence_length

SHIPPED_TEXTS = "the shipped corpus (fastbert/data/corpus.tsv, 300 sentences)"


@dataclass(frozen=True)
class UserModel:
    """A resolved ``--model`` folder."""

    path: str
    kind: str  # "sentence-transformers" or "transformers"
    hf_dir: Path  # the folder holding the transformers checkpoint (config.json)
    max_seq_length: int  # tokens kept per text (longer texts are truncated)


def resolve_user_model(path: str, flag: str = "--model") -> UserModel:
    """Check ``path`` and find its transformers checkpoint; ValueError naming ``flag`` when it is
    neither kind of folder, TypeError/ValueError when fastbert does not support the model."""
    root = checkpoint_dir(path, flag)
    kind, hf_dir, limit = "transformers", root, None
    if (root / "modules.json").is_file():
        kind = "sentence-transformers"
        hf_dir = root / _transformer_module_path(root / "modules.json", path, flag)
        limit = _st_max_seq_length(hf_dir)
    elif not (root / "config.json").is_file():
        raise ValueError(f"{flag} {path!r} holds neither a Hugging Face checkpoint (config.json) nor a "
                         "sentence-transformers model (modules.json)")
    config = checkpoint_config(str(hf_dir), flag)
    checkpoint_weights(hf_dir, flag)
    positions = max_sequence_length(config)  # TypeError/ValueError for families fastbert does not run
    return UserModel(str(path), kind, hf_dir, min(limit or positions, positions))


def _transformer_module_path(modules_json: Path, path: str, flag: str) -> str:
    """The folder (relative) of the Transformer module listed in a sentence-transformers ``modules.json``."""
    try:
        modules = json.loads(modules_json.read_text(encoding="utf-8"))
        found = [m.get("path", "") for m in modules if str(m.get("type", "")).endswith("Transformer")]
    except (OSError, ValueError, AttributeError, TypeError) as exc:
        raise ValueError(f"{flag} {path!r}: unreadable modules.json: {one_line(exc)}") from exc
    if not found:
        raise ValueError(f"{flag} {path!r}: its modules.json lists no Transformer module (nothing for fastbert to run)")
    return found[0]


def _st_max_seq_length(hf_dir: Path) -> int | None:
    """The length sentence-transformers truncates to: ``max_seq_length`` of the module's
    ``sentence_bert_config.json`` (older saves), else its tokenizer's ``model_max_length``
    (what sentence-transformers 5+ saves), if either is there."""
    for name, key in (("sentence_bert_config.json", "max_seq_length"), ("tokenizer_config.json", "model_max_length")):
        try:
            return int(json.loads((hf_dir / name).read_text(encoding="utf-8"))[key])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return None


def read_texts(path: str | None, flag: str = "--texts") -> tuple[list[str], str]:
    """(texts, where they came from): the texts of a UTF-8 texts file (one per line, as
    :mod:`fastbert.data.lines` reads them), or the shipped corpus when ``path`` is None.
    ValueError for a missing, unreadable or empty file."""
    if path is None:
        return [sentence for _, sentence in corpus()], SHIPPED_TEXTS
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{flag} {path!r} is not a file (expected one text per line)")
    try:
        texts = read_text_lines(p)
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{flag} {path!r}: cannot read it as UTF-8 text: {one_line(exc)}") from exc
    if not texts:
        raise ValueError(f"{flag} {path!r} holds no text (expected one text per line)")
    return texts, str(path)


def length_order(texts: list[str]) -> np.ndarray:
    """The order sentence-transformers encodes texts in: longest (in characters) first, with
    the same ``np.argsort`` call it makes, so batches hold the same texts."""
    return np.argsort([-len(t) for t in texts])


def batches_in_order(texts: list[str], batch: int) -> list[list[str]]:
    """The batches of ``batch`` texts an encode call forms (after :func:`length_order`)."""
    ordered = [texts[i] for i in length_order(texts)]
    return [ordered[i:i + batch] for i in range(0, len(ordered), batch)]


def padded_tokens(lengths: list[int], texts: list[str], batch: int) -> int:
    """Tokens the model computes on at this batch size (each batch padded to its longest row),
    given each text's token count ``lengths``."""
    ordered = [lengths[i] for i in length_order(texts)]
    return sum(len(chunk) * max(chunk) for chunk in (ordered[i:i + batch] for i in range(0, len(ordered), batch)))


def sentence_transformers_available() -> bool:
    """Whether the sentence-transformers package can be imported."""
    return importlib.util.find_spec("sentence_transformers") is not None


class SentenceTransformerRunner:
    """A sentence-transformers model's own ``encode``."""

    description = "sentence-transformers encode (sorts by length, tokenizes per batch, pools)"

    def __init__(self, model):
        self.model = model

    @classmethod
    def load(cls, user: UserModel, device: str, dtype: torch.dtype) -> "SentenceTransformerRunner":
        """The folder's SentenceTransformer on ``device`` in ``dtype``, in eval mode."""
        from sentence_transformers import SentenceTransformer

        try:
            with quiet_transformers():
                model = SentenceTransformer(user.path, device=device)
        except Exception as exc:
            raise ValueError(f"--model {user.path!r}: sentence-transformers cannot load it: {one_line(exc)}") from exc
        return cls(model.to(dtype).eval())

    def optimized(self) -> "SentenceTransformerRunner":
        """A runner over an optimized copy."""
        return SentenceTransformerRunner(fastbert.optimize(copy.deepcopy(self.model)))

    def token_lengths(self, texts: list[str]) -> list[int]:
        """Each text's token count after truncation."""
        encoded = self.model.tokenizer(texts, truncation=True, max_length=self.model.max_seq_length)
        return [len(ids) for ids in encoded["input_ids"]]

    @torch.no_grad()
    def encode(self, texts: list[str], batch: int) -> torch.Tensor:
        """``(len(texts), dim)`` embeddings, in the texts' order."""
        return self.model.encode(texts, batch_size=batch, convert_to_tensor=True, show_progress_bar=False)


class TransformersRunner:
    """A transformers base model fed as sentence-transformers would: sorted by length,
    tokenized per batch, mean-pooled over real tokens."""

    description = "transformers AutoModel: sorted by length, tokenized per batch, mean pooling"

    def __init__(self, model, tokenizer, max_length: int):
        self.model, self.tokenizer, self.max_length = model, tokenizer, max_length

    @classmethod
    def load(cls, user: UserModel, device: str, dtype: torch.dtype) -> "TransformersRunner":
        """The folder's base model (``AutoModel``) and tokenizer, on ``device`` in ``dtype``."""
        model = load_checkpoint(str(user.hf_dir), "--model").to(device=device, dtype=dtype).eval()
        return cls(model, load_tokenizer(user), user.max_seq_length)

    def optimized(self) -> "TransformersRunner":
        """A runner over an optimized copy."""
        return TransformersRunner(fastbert.optimize(copy.deepcopy(self.model)), self.tokenizer, self.max_length)

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """One batch, padded to its longest row, truncated, on the model's device."""
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        return {k: v.to(self.model.device) for k, v in batch.items()}

    def token_lengths(self, texts: list[str]) -> list[int]:
        """Each text's token count after truncation."""
        encoded = self.tokenizer(texts, truncation=True, max_length=self.max_length)
        return [len(ids) for ids in encoded["input_ids"]]

    @torch.no_grad()
    def encode(self, texts: list[str], batch: int) -> torch.Tensor:
        """``(len(texts), hidden)`` mean-pooled last hidden states, in the texts' order."""
        order = length_order(texts)
        pooled = []
        for start in range(0, len(texts), batch):
            inputs = self.tokenize([texts[i] for i in order[start:start + batch]])
            hidden = self.model(**inputs).last_hidden_state
            mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled.append((hidden * mask).sum(1) / mask.sum(1).clamp_min(1))
        out = torch.cat(pooled)
        return out[torch.as_tensor(np.argsort(order), device=out.device)]


def runner_class(user: UserModel) -> type:
    """The runner that runs ``user``'s model as the user's code would (see the module docstring)."""
    if user.kind == "sentence-transformers" and sentence_transformers_available():
        return SentenceTransformerRunner
    return TransformersRunner


def load_runner(user: UserModel, device: str, dtype: torch.dtype):
    """:func:`runner_class`'s runner of ``user``'s model on ``device`` in ``dtype``."""
    return runner_class(user).load(user, device, dtype)


def load_tokenizer(user: UserModel):
    """The tokenizer of ``user``'s transformers checkpoint; ValueError when it has none."""
    from transformers import AutoTokenizer

    try:
        with quiet_transformers():
            return AutoTokenizer.from_pretrained(str(user.hf_dir))
    except Exception as exc:
        raise ValueError(f"--model {user.path!r}: no usable tokenizer in {str(user.hf_dir)!r}: {one_line(exc)}") from exc


def profile_batch(user: UserModel, texts: list[str], batch: int) -> dict[str, torch.Tensor]:
    """One batch to profile (CPU tensors): the middle one of the batches an encode call forms
    from ``texts`` (sorted by length), tokenized with padding to its longest row and truncation."""
    chunks = batches_in_order(texts, batch)
    tokenizer = load_tokenizer(user)
    encoded = tokenizer(chunks[len(chunks) // 2], padding=True, truncation=True, max_length=user.max_seq_length,
                        return_tensors="pt")
    return dict(encoded)
