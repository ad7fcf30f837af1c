"""Support intent from free text: an online bag-of-words naive Bayes classifier.

It learns from contacts that carry an agent-set intent and text, and fills in the intent of contacts
that have text but no intent, with a confidence; below ``threshold`` the intent stays ``other``.
Accuracy is measured progressively (predict before learn) on the labelled contacts.
"""

from __future__ import annotations

from collections import deque

from river import compose, feature_extraction, naive_bayes

OTHER = "other"


class IntentClassifier:
    def __init__(self, threshold: float = 0.6, min_examples: int = 30, window: int = 500) -> None:
        self.threshold = threshold
        self.min_examples = min_examples
        self.model = compose.Pipeline(
            feature_extraction.BagOfWords(lowercase=True, ngram_range=(1, 2)),
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
