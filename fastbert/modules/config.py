"""FastBertConfig: the shape and options of a fastbert encoder, independent of any HF class."""

from __future__ import annotations

from dataclasses import dataclass

from fastbert.ops.linear import canonical_activation


@dataclass
class FastBertConfig:
    """Hyper-parameters of a post-LN BERT-family encoder.

    ``type_vocab_size=0`` means no token-type embeddings (DistilBERT).
    ``embedding_size`` smaller than ``hidden_size`` gives factorized embeddings with a
    projection to ``hidden_size`` after the embedding LayerNorm (ALBERT, ELECTRA).
    ``embedding_projection=True`` keeps that projection even when the sizes are equal
    (ALBERT always has one); None means "when they differ".
    ``position_ids_from_padding`` numbers positions as RoBERTa does: non-padding tokens
    count up from ``pad_token_id + 1``, padding keeps ``pad_token_id``.
    ``attention_output_dropout_prob`` / ``ffn_output_dropout_prob`` default to
    ``hidden_dropout_prob``; families that skip one of these dropouts set it to 0.
    ``layer_schedule`` lists, for each applied layer, the index of the (possibly shared)
    layer weights to use (ALBERT); None means ``num_hidden_layers`` distinct layers.
    ``qkv_names`` names each layer's q, k, v slices of the fused ``qkv`` projection as the
    HF family names its separate projections (so PEFT's default targets find them).
    """

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    attention_output_dropout_prob: float | None = None
    ffn_output_dropout_prob: float | None = None
    pad_token_id: int | None = 0
    embedding_size: int | None = None
    embedding_projection: bool | None = None
    position_ids_from_padding: bool = False
    layer_schedule: tuple[int, ...] | None = None
    initializer_range: float = 0.02
    qkv_names: tuple[str, str, str] = ("query", "key", "value")

    def __post_init__(self) -> None:
        canonical_activation(self.hidden_act)
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be a multiple of num_attention_heads ({self.num_attention_heads})"
            )
        if self.embedding_dim != self.hidden_size and self.embedding_projection is False:
            raise ValueError("embedding_size differs from hidden_size, so embedding_projection cannot be False")
        if self.position_ids_from_padding and self.pad_token_id is None:
            raise ValueError("position_ids_from_padding needs pad_token_id")
        self.qkv_names = tuple(self.qkv_names)
        if self.layer_schedule is not None:
            self.layer_schedule = tuple(int(i) for i in self.layer_schedule)
            if len(self.layer_schedule) == 0 or min(self.layer_schedule) < 0:
                raise ValueError(f"layer_schedule must list non-negative layer indices, got {self.layer_schedule}")

    @property
    def attention_output_dropout(self) -> float:
        """Dropout after the attention output projection."""
        p = self.attention_output_dropout_prob
        return self.hidden_dropout_prob if p is None else p

    @property
    def ffn_output_dropout(self) -> float:
        """Dropout after the second feed-forward projection."""
        p = self.ffn_output_dropout_prob
        return self.hidden_dropout_prob if p is None else p

    @property
    def head_dim(self) -> int:
        """Size of one attention head."""
        return self.hidden_size // self.num_attention_heads

    @property
    def embedding_dim(self) -> int:
        """Width of the embedding tables (``embedding_size`` or ``hidden_size``)."""
        return self.embedding_size or self.hidden_size

    @property
    def has_projection(self) -> bool:
        """Whether embeddings are projected to ``hidden_size`` after the LayerNorm."""
        if self.embedding_projection is None:
            return self.embedding_dim != self.hidden_size
        return self.embedding_projection

    @property
    def schedule(self) -> tuple[int, ...]:
        """Weights index of every applied layer, in order."""
        return self.layer_schedule or tuple(range(self.num_hidden_layers))

    @property
    def num_unique_layers(self) -> int:
        """How many distinct layers hold weights."""
        return max(self.schedule) + 1

    @property
    def max_sequence_length(self) -> int:
        """Longest sequence the position table can number."""
        if self.position_ids_from_padding:
            return self.max_position_embeddings - self.pad_token_id - 1
        return self.max_position_embeddings
