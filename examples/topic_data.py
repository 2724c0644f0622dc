"""A small three-topic text-classification set, generated reproducibly (no downloads).

Sentences are built from per-topic subjects, verbs and objects and shared filler; the
train and held-out splits use disjoint subject lists, so held-out accuracy measures
generalization to unseen words of a topic, not memorized sentences.
"""

from __future__ import annotations

import random

LABELS = ("sports", "finance", "weather")

_WORDS = {
    "sports": {
        "subjects": ["the striker", "our goalkeeper", "the home team", "the coach", "the young sprinter",
                     "the captain", "the visiting side", "the tennis champion", "the referee", "the rookie"],
        "verbs": ["scored", "won", "defended", "trained for", "lost", "celebrated", "missed", "qualified for"],
        "objects": ["the final match", "a late penalty", "the league title", "the championship", "a narrow victory",
                    "the relay race", "the second half", "the tournament"],
    },
    "finance": {
        "subjects": ["the central bank", "investors", "the hedge fund", "the company's shares", "bond yields",
                     "the treasury", "the startup", "the pension fund", "market analysts", "the retail bank"],
        "verbs": ["raised", "cut", "reported", "sold", "bought", "forecast", "borrowed", "invested in"],
        "objects": ["interest rates", "quarterly earnings", "the stock index", "a large dividend", "government bonds",
                    "the annual budget", "new shares", "its credit rating"],
    },
    "weather": {
        "subjects": ["a cold front", "the storm", "heavy rain", "the forecast", "strong winds", "the heatwave",
                     "morning fog", "a tropical cyclone", "the snowfall", "thunderclouds"],
        "verbs": ["brought", "swept across", "flooded", "cooled", "delayed", "covered", "battered", "reached"],
        "objects": ["the coastal towns", "the valley", "the northern hills", "the airport", "the city overnight",
                    "the farmland", "the mountain pass", "the harbour"],
    },
}
_FILLERS = ["", "on Sunday", "yesterday", "this week", "according to reports", "earlier than expected", "again"]


def make_split(n: int, seed: int, held_out: bool) -> tuple[list[str], list[int]]:
    """``n`` (sentence, label) pairs; ``held_out`` draws subjects from the other half of each list."""
    rng = random.Random(seed)
    texts, labels = [], []
    for _ in range(n):
        label = rng.randrange(len(LABELS))
        words = _WORDS[LABELS[label]]
        subjects = words["subjects"][5:] if held_out else words["subjects"][:5]
        sentence = f"{rng.choice(subjects)} {rng.choice(words['verbs'])} {rng.choice(words['objects'])} {rng.choice(_FILLERS)}"
        texts.append(sentence.strip().capitalize() + ".")
        labels.append(label)
    return texts, labels
