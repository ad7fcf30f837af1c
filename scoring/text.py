"""Support intent from free text: an online bag-of-words naive Bayes classifier.

It learns from contacts that carry an agent-set intent and text, and fills in the intent of contacts
that have text but no intent, with a confidence; below ``threshold`` the intent stays ``other``.
Accuracy is measured progressively (predict before learn) on the labelled contacts.
"""

from __future__ import annotations

import itertools
import re
import zlib
from collections import deque

from river import compose, feature_extraction, naive_bayes

OTHER = "other"
HASH_BUCKETS = 1 << 15  # bounded model size per shard, whatever the texts contain
_WORD = re.compile(r"[^\W\d_]{2,}")  # letters only: no order numbers, tracking ids or amounts


def hashed_terms(text: str) -> list[str]:
    """Words and word pairs, hashed into HASH_BUCKETS terms. Letters only: ids and numbers do not
    generalise and would only grow the model; hashed: the vocabulary is bounded, and the model
    (in every snapshot and in ``salvage models export``) holds no customer-written words."""
    tokens = _WORD.findall(text.lower())
    grams = tokens + [f"{a} {b}" for a, b in itertools.pairwise(tokens)]
    return [format(zlib.crc32(g.encode()) % HASH_BUCKETS, "x") for g in grams]


class IntentClassifier:
    def __init__(self, threshold: float = 0.6, min_examples: int = 30, window: int = 500) -> None:
        self.threshold = threshold
        self.min_examples = min_examples
        self.model = compose.Pipeline(
            feature_extraction.BagOfWords(lowercase=False, tokenizer=hashed_terms),
            naive_bayes.MultinomialNB(alpha=0.5),
        )
        self.examples = 0
        self.hits: deque[bool] = deque(maxlen=window)

    def _best(self, text: str) -> tuple[str, float]:
        proba = self.model.predict_proba_one(text)
        if not proba:
            return OTHER, 0.0
        intent, p = max(sorted(proba.items()), key=lambda kv: kv[1])
        return intent, float(p)

    def learn(self, text: str, intent: str) -> None:
        if self.examples:
            self.hits.append(self._best(text)[0] == intent)
        self.model.learn_one(text, intent)
        self.examples += 1

    def infer(self, text: str) -> tuple[str, float]:
        """(intent, confidence); ``other`` when unsure or not yet trained."""
        if self.examples < self.min_examples:
            return OTHER, 0.0
        intent, p = self._best(text)
        return (intent, p) if p >= self.threshold else (OTHER, p)

    @property
    def accuracy(self) -> float:
        return sum(self.hits) / len(self.hits) if self.hits else 0.0
