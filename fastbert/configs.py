"""Named architectures for random-weight runs (``fastbert check --arch``, benchmarks)."""

from __future__ import annotations


def _bert(layers, hidden, heads, inter):
    from transformers import BertConfig

    return BertConfig(num_hidden_layers=layers, hidden_size=hidden, num_attention_heads=heads, intermediate_size=inter)


def _named_configs():
    from transformers import AlbertConfig, DistilBertConfig, ElectraConfig, RobertaConfig

    return {
        "bert-tiny": lambda: _bert(2, 128, 2, 512),
        "minilm-l6": lambda: _bert(6, 384, 12, 1536),
        "bert-base": lambda: _bert(12, 768, 12, 3072),
        "bert-large": lambda: _bert(24, 1024, 16, 4096),
        "roberta-base": lambda: RobertaConfig(vocab_size=50265, max_position_embeddings=514, type_vocab_size=1),
        "distilbert-base": lambda: DistilBertConfig(),
        "albert-base": lambda: AlbertConfig(
            embedding_size=128, hidden_size=768, num_attention_heads=12, intermediate_size=3072
        ),
        "electra-base": lambda: ElectraConfig(
            embedding_size=768, hidden_size=768, num_attention_heads=12, intermediate_size=3072
        ),
    }


ARCH_NAMES = ("bert-tiny", "minilm-l6", "bert-base", "bert-large", "roberta-base", "distilbert-base", "albert-base", "electra-base")


def hf_config(arch: str):
    """The HF config of a named architecture; ValueError listing the names otherwise."""
    configs = _named_configs()
    if arch not in configs:
        raise ValueError(f"unknown arch {arch!r}; expected one of {list(ARCH_NAMES)}")
    return configs[arch]()


def random_hf_model(arch: str, seed: int = 0):
    """An HF base model of a named architecture with seeded random weights, in eval mode."""
    import torch
    from transformers import AutoModel

    torch.manual_seed(seed)
    return AutoModel.from_config(hf_config(arch)).eval()
