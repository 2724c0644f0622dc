"""The shipped corpus (fastbert/data/corpus.tsv): the semantic-search example's documents and
``fastbert bench --model``'s default texts."""

from __future__ import annotations

from collections import Counter

from fastbert.data import corpus, sentences


def test_corpus_is_twelve_topics_of_25_distinct_sentences():
    rows = corpus()
    assert len(rows) == 300
    assert set(Counter(topic for topic, _ in rows).values()) == {25}
    texts = [s for _, s in rows]
    assert len(set(texts)) == len(texts) and all(t and "\t" not in t for t in texts)
    assert not set(texts) & set(sentences())


def test_corpus_lengths_vary_so_batches_are_padded():
    words = sorted(len(s.split()) for _, s in corpus())
    assert words[0] <= 5 and words[-1] >= 20
