"""The checkpoint folder ``fastbert prune`` reads and writes: a Hugging Face one or a sentence-transformers one.

A Hugging Face folder (``config.json``) is loaded as the task model its config names
(``architectures``, e.g. ``BertForSequenceClassification``), so the pruned model keeps its
head; a checkpoint missing weights that model needs is refused (they would be saved as
random values). A sentence-transformers folder (``modules.json``) is loaded as a
``SentenceTransformer`` and saved as one, so every module (pooling, normalization, dense
layers, their configs, the tokenizer) is written again beside the pruned transformer.

Texts are tokenized at the smallest of the tokenizer's limit, sentence-transformers'
``max_seq_length`` and the position table's usable length (RoBERTa-style tables lose
``pad_token_id + 1`` rows: :func:`fastbert.models.max_sequence_length`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from fastbert.cli_args import checkpoint_config, load_checkpoint, one_line, quiet_transformers
from fastbert.data import corpus
from fastbert.models import max_sequence_length
from fastbert.pretrained import task_model_class
from fastbert.prune.quality import CHECK_TEXTS, mean_pooled, random_batch, spread
from fastbert.wrapped_models import wrapped_hf_models

SENTENCE_TRANSFORMERS_MARKER = "modules.json"
SHIPPED_CORPUS = "texts of the shipped corpus (fastbert.data.corpus)"


@dataclass
class PruneFolder:
    """A loaded checkpoint folder: the HF model to prune, how to tokenize and embed texts, how to save it."""

    source: Path
    model: nn.Module  # the HF model whose encoder is pruned (the task model, or the Transformer's auto_model)
    tokenizer: object | None
    max_length: int  # tokens kept per text
    sentence_transformer: object | None = None
    unused: list[str] = field(default_factory=list)  # checkpoint weights the model does not use

    @property
    def kind(self) -> str:
        """``"sentence-transformers"`` or ``"transformers"``."""
        return "transformers" if self.sentence_transformer is None else "sentence-transformers"

    def tokenize(self, texts: list[str], batch_size: int) -> list[dict]:
        """``texts`` in batches of ``batch_size``, padded, truncated at :attr:`max_length`."""
        return [self.tokenizer(texts[i : i + batch_size], padding=True, truncation=True, max_length=self.max_length,
                               return_tensors="pt") for i in range(0, len(texts), batch_size)]

    def probe(self, texts: list[str] | None) -> tuple[Callable[[], torch.Tensor], str]:
        """What the quality check measures: a function returning the model's embeddings (as the
        model is when it is called) of :data:`~fastbert.prune.quality.CHECK_TEXTS` texts spread over
        ``texts`` (else over the shipped corpus), and a description of those inputs.

        A sentence-transformers folder embeds with its ``encode`` (its whole pipeline); a Hugging
        Face folder by mean-pooling the base model's last hidden states; without a tokenizer, on
        rows of seeded random token ids."""
        if self.tokenizer is None:
            batch = random_batch(self.model.config.vocab_size, CHECK_TEXTS, min(32, self.max_length))
            return (lambda: mean_pooled(self.model, [batch])), "rows of random token ids (MODEL_DIR has no tokenizer)"
        chosen = spread(texts or [sentence for _, sentence in corpus()])
        source = "calibration texts" if texts else SHIPPED_CORPUS
        if self.sentence_transformer is not None:
            st = self.sentence_transformer
            return (lambda: st.encode(chosen, batch_size=CHECK_TEXTS, convert_to_tensor=True,
                                      show_progress_bar=False).cpu()), source
        batches = self.tokenize(chosen, CHECK_TEXTS)
        return (lambda: mean_pooled(self.model, batches)), source

    def save(self, out: Path) -> None:
        """Write the model: sentence-transformers' ``save`` (every module), or ``save_pretrained``
        and the tokenizer."""
        out.mkdir(parents=True, exist_ok=True)
        with quiet_transformers():
            if self.sentence_transformer is not None:
                self.sentence_transformer.save(str(out))
            else:
                self.model.save_pretrained(out)
                if self.tokenizer is not None:
                    self.tokenizer.save_pretrained(out)


def is_sentence_transformers_folder(source: Path) -> bool:
    """Whether ``source`` is a sentence-transformers folder (it has ``modules.json``)."""
    return (source / SENTENCE_TRANSFORMERS_MARKER).is_file()


def check_structure_loads(source: Path, pattern: str, scope: str) -> None:
    """ValueError when pruning a sentence-transformers folder this way would write a folder
    sentence-transformers cannot load: removed heads, or neurons counted per layer (``scope="global"``),
    are recorded as per-layer lists in ``config.json``, which transformers refuses."""
    if not is_sentence_transformers_folder(source):
        return
    if pattern == "heads" or (pattern == "neurons" and scope == "global"):
        what = "--pattern heads" if pattern == "heads" else "--pattern neurons --scope global"
        raise ValueError(f"{what} on a sentence-transformers folder would write per-layer sizes in its config.json, "
                         "which sentence-transformers cannot load: use --pattern neurons (--scope layer: the same "
                         "count in every layer) or a weight pattern")


def load_folder(source: Path, model_dir: str) -> PruneFolder:
    """The checkpoint in ``source`` (``model_dir`` as the user typed it), on the CPU, in eval mode;
    ValueError for a folder that does not load or lacks weights its model needs."""
    if is_sentence_transformers_folder(source):
        return _load_sentence_transformer(source, model_dir)
    cls = task_model_class(checkpoint_config(model_dir, "MODEL_DIR"))
    model, info = load_checkpoint(model_dir, "MODEL_DIR", cls, output_loading_info=True)
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        raise ValueError(
            f"MODEL_DIR {model_dir!r} lacks {len(missing)} weight(s) {cls.__name__} needs ({', '.join(missing[:4])}"
            f"{', ...' if len(missing) > 4 else ''}); they would be saved as random values"
        )
    tokenizer = _tokenizer(model_dir)
    limit = max_sequence_length(model.config)
    if tokenizer is not None:
        limit = min(limit, _tokenizer_limit(tokenizer, limit))
    return PruneFolder(source, model.eval(), tokenizer, limit, unused=sorted(info.get("unexpected_keys") or []))


def _load_sentence_transformer(source: Path, model_dir: str) -> PruneFolder:
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise ValueError(f"MODEL_DIR {model_dir!r} is a sentence-transformers folder ({SENTENCE_TRANSFORMERS_MARKER}): "
                         "install sentence-transformers to prune it and keep its modules") from exc
    try:
        with quiet_transformers():
            st = SentenceTransformer(str(source), device="cpu")
    except Exception as exc:  # noqa: BLE001 - any failure means the same to the user
        raise ValueError(f"MODEL_DIR {model_dir!r}: cannot load the sentence-transformers model: {one_line(exc)}") from exc
    models = wrapped_hf_models(st)  # TypeError for a family fastbert does not run
    if len(models) != 1:
        raise ValueError(f"MODEL_DIR {model_dir!r} holds {len(models)} transformer models; fastbert prune prunes one")
    model = models[0].eval()
    limit = max_sequence_length(model.config)
    if st.max_seq_length:
        limit = min(limit, int(st.max_seq_length))
    tokenizer = st.tokenizer
    if tokenizer is not None:
        limit = min(limit, _tokenizer_limit(tokenizer, limit))
    return PruneFolder(source, model, tokenizer, limit, sentence_transformer=st.eval())


def _tokenizer(model_dir: str):
    from transformers import AutoTokenizer

    try:
        with quiet_transformers():
            return AutoTokenizer.from_pretrained(model_dir)
    except Exception:  # noqa: BLE001 - a checkpoint without a tokenizer is fine
        return None


def _tokenizer_limit(tokenizer, default: int) -> int:
    """The tokenizer's ``model_max_length`` (``default`` when it has none, or transformers' "unset" sentinel)."""
    limit = getattr(tokenizer, "model_max_length", None)
    return int(limit) if isinstance(limit, int) and 0 < limit < 10**9 else default
