"""Support intent from free text: an online bag-of-words naive Bayes classifier.

It learns from contacts that carry an agent-set intent and text, and fills in the intent of contacts
that have text but no intent, with a confidence; below ``threshold``, or when fewer than
``MIN_KNOWN_SHARE`` of the text's terms were ever learned, the intent stays ``other``.
Accuracy is measured progressively (predict before learn) on the labelled contacts.
"""

from __future__ import annotations

import itertools
import math
import re
import zlib
from collections import Counter, deque

from river.feature_extraction.vectorize import strip_accents_unicode

OTHER = "other"
# a text with fewer of its terms (words and word pairs) known to the model than this share is
# left to ``other``: naive Bayes is confident on words it never saw (the class with the fewest
# learned terms wins, the more so the longer the text), e.g. a language no agent labels
MIN_KNOWN_SHARE = 0.5
HASH_BUCKETS = 1 << 15  # bounded model size per shard, whatever the texts contain
_WORD = re.compile(r"[^\W\d_]{2,}")  # letters only: no order numbers, tracking ids or amounts


def hashed_terms(text: str) -> list[str]:
    """Words and word pairs, hashed into HASH_BUCKETS terms. Letters only: ids and numbers do not
    generalise and would only grow the model; hashed: the vocabulary is bounded, and the model
    (in every snapshot and in ``salvage models export``) holds no customer-written words."""
    tokens = _WORD.findall(text.lower())
    grams = tokens + [f"{a} {b}" for a, b in itertools.pairwise(tokens)]
    return [format(zlib.crc32(g.encode()) % HASH_BUCKETS, "x") for g in grams]


class HashedNB:
    """Multinomial naive Bayes over hashed term counts (Laplace/Lidstone ``alpha``): River's
    ``MultinomialNB`` formula, P(t|c) = (n(t, c) + alpha) / (n(c) + alpha * V), computed with one
    log per (term, class) and the class denominators once per call (River recomputes both per
    term). ``tests/scoring/test_text.py`` checks it against River's on the same data."""

    __slots__ = ("alpha", "class_docs", "class_terms", "counts")

    def __init__(self, alpha: float = 0.5) -> None:
        self.alpha = alpha
        self.counts: dict[str, dict[str, float]] = {}  # term -> class -> count
        self.class_docs: dict[str, int] = {}
        self.class_terms: dict[str, float] = {}

    def learn(self, terms: dict[str, int], y: str) -> None:
        self.class_docs[y] = self.class_docs.get(y, 0) + 1
        total = 0.0
        counts = self.counts
        for t, n in terms.items():
            per_class = counts.get(t)
            if per_class is None:
                per_class = counts[t] = {}
            per_class[y] = per_class.get(y, 0.0) + n
            total += n
        self.class_terms[y] = self.class_terms.get(y, 0.0) + total

    def predict_proba(self, terms: dict[str, int]) -> dict[str, float]:
        if not self.class_docs:
            return {}
        alpha, log = self.alpha, math.log
        docs = sum(self.class_docs.values())
        vocab = len(self.counts)
        length = sum(terms.values())
        rows = [self.counts.get(t) for t in terms]
        jll: dict[str, float] = {}
        for c, n_docs in self.class_docs.items():
            ll = log(n_docs / docs) - length * log(self.class_terms[c] + alpha * vocab)
            for (_t, n), row in zip(terms.items(), rows, strict=True):
                ll += n * log((row.get(c, 0.0) if row else 0.0) + alpha)
            jll[c] = ll
        top = max(jll.values())
        exp = {c: math.exp(v - top) for c, v in jll.items()}
        norm = sum(exp.values())
        return {c: v / norm for c, v in exp.items()}


def terms_of(text: str) -> dict[str, int]:
    """Hashed term counts of a text (accents stripped first, as River's BagOfWords does)."""
    return Counter(hashed_terms(strip_accents_unicode(text)))


class IntentClassifier:
    """One per deployment (the intent stage of :mod:`salvage.flows.stages`), fed every contact with
    text
    in event-time order, so what it fills in does not depend on shard or worker counts.

    Quality is measured on what the pipeline *delivers*: before learning a labelled contact, the
    classifier asks itself what :meth:`infer` would have filled in (after the warm-up and the
    threshold). ``coverage`` is the share of labelled contacts it would have filled in (not
    ``other``), ``accuracy`` the share of those it got right; both over the last ``window``
    labelled contacts (0.0 with no value yet: see ``delivered``).

    >>> clf = IntentClassifier(threshold=0.8, min_examples=4)
    >>> clf.infer("where is my parcel")  # not trained yet
    ('other', 0.0)
    >>> for text, intent in [
    ...     ("where is my parcel", "where_is_my_order"),
    ...     ("my parcel has not arrived", "where_is_my_order"),
    ...     ("I want a refund", "refund_request"),
    ...     ("please refund my money", "refund_request"),
    ... ]:
    ...     clf.learn(text, intent)
    >>> intent, p = clf.infer("Where is my parcel now?")
    >>> intent, round(p, 3)
    ('where_is_my_order', 0.997)
    >>> intent, p = clf.infer("refund my parcel")  # unsure: below the threshold
    >>> intent, round(p, 3)
    ('other', 0.565)
    >>> clf.infer("wo ist mein paket bitte")  # words it never learned: it does not guess
    ('other', 0.0)

    Each labelled contact is first predicted (after the warm-up of ``min_examples``), then
    learned: one filled in and right, one left to ``other``:

    >>> clf.learn("parcel still not arrived", "where_is_my_order")
    >>> clf.learn("my parcel refund", "refund_request")
    >>> list(clf.hits), clf.delivered, round(clf.coverage, 3), clf.accuracy
    ([None, None, None, None, True, None], 1, 0.167, 1.0)
    """

    def __init__(self, threshold: float = 0.6, min_examples: int = 30, window: int = 500) -> None:
        self.threshold = threshold
        self.min_examples = min_examples
        self.model = HashedNB(alpha=0.5)
        self.examples = 0
        # per labelled contact: None (would have abstained), else whether the intent was right
        self.hits: deque[bool | None] = deque(maxlen=window)

    def _best(self, terms: dict[str, int]) -> tuple[str, float]:
        proba = self.model.predict_proba(terms)
        if not proba:
            return OTHER, 0.0
        intent, p = max(sorted(proba.items()), key=lambda kv: kv[1])
        return intent, float(p)

    def _infer_terms(self, terms: dict[str, int]) -> tuple[str, float]:
        if self.examples < self.min_examples:
            return OTHER, 0.0
        counts = self.model.counts
        known = sum(n for t, n in terms.items() if t in counts)
        if known < MIN_KNOWN_SHARE * sum(terms.values()) or not known:
            return OTHER, 0.0  # mostly words it never learned (another language, say): unsure
        intent, p = self._best(terms)
        return (intent, p) if p >= self.threshold else (OTHER, p)

    def learn(self, text: str, intent: str) -> None:
        terms = terms_of(text)
        delivered, _p = self._infer_terms(terms)
        self.hits.append(None if delivered == OTHER else delivered == intent)
        self.model.learn(terms, intent)
        self.examples += 1

    def infer(self, text: str) -> tuple[str, float]:
        """(intent, confidence); ``other`` when unsure or not yet trained."""
        return self._infer_terms(terms_of(text))

    @property
    def delivered(self) -> int:
        """Labelled contacts in the window the classifier would have filled in."""
        return sum(1 for h in self.hits if h is not None)

    @property
    def accuracy(self) -> float:
        """Delivered accuracy: right / filled in, over the window (0.0 when none filled in)."""
        n = self.delivered
        return sum(1 for h in self.hits if h) / n if n else 0.0

    @property
    def coverage(self) -> float:
        """Share of labelled contacts in the window that would have been filled in."""
        return self.delivered / len(self.hits) if self.hits else 0.0
