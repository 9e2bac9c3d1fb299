"""The shard's lexical (BM25) index: an in-memory inverted index derived from the store (pure: no grpc).

Like the FAISS index it is derived data: built from the store when the shard opens and updated after each
durable write under the same write lock, so after a crash (kill -9) it is rebuilt from exactly the
documents the store holds and the dense and lexical views always hold the same documents.

Scoring is BM25 (Lucene's variant: idf = ln(1 + (N - df + 0.5) / (df + 0.5)); k1 = 1.5, b = 0.75) with
*caller-supplied* corpus statistics: the router gathers document frequencies, document counts and total
lengths for the query terms from every shard (``term_stats``), sums them and sends them back with the
query, so every shard scores with the statistics of the whole corpus and the merged ranking equals that of
one index over all documents (Elasticsearch's ``dfs_query_then_fetch``). Without them a shard uses its own.

Why not SQLite FTS5, tantivy or bm25s (measured in ``bench/lexical_engines.py``, figures in the README):
none of them scores with externally supplied corpus statistics (FTS5's ``bm25()`` and tantivy use the
local index's, bm25s bakes idf into its score matrix at build time and cannot update), and FTS5 has no
stemmer but Porter and no stop words. Postings here are per-term ``array`` buffers (slot, term frequency);
a query concatenates the postings of its terms and scores them with numpy in one pass.
"""

from __future__ import annotations

import json
import math
import re
import threading
from array import array
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from ragcluster.errors import InvalidArgument

# Lucene's EnglishAnalyzer default stop set.
ENGLISH_STOP_WORDS = frozenset(
    ["a", "an", "and", "are", "as", "at", "be", "but", "by", "for", "if", "in", "into", "is", "it", "no", "not",
     "of", "on", "or", "such", "that", "the", "their", "then", "there", "these", "they", "this", "to", "was",
     "will", "with"]
)
_TOKEN = re.compile(r"\w\w+", re.UNICODE)  # tokens of two or more word characters
DEFAULT_K1 = 1.5
DEFAULT_B = 0.75


@dataclass(frozen=True)
class AnalyzerConfig:
    """How text becomes terms: lower-cased tokens of 2+ word characters, stop words removed, then stemmed."""

    stemmer: str = "english"  # a Snowball algorithm (english, porter, french, ...) or "none"
    stopwords: str = "english"  # "english", "none", or a comma-separated list of words


class Analyzer:
    """Text -> terms. Per-token work is one dict lookup: each distinct raw token is mapped once (stop word
    check + stem) and remembered, because stemming dominates indexing time otherwise."""

    CACHE_LIMIT = 1_000_000

    def __init__(self, config: AnalyzerConfig | None = None):
        self.config = config or AnalyzerConfig()
        stop = self.config.stopwords.strip().lower()
        if stop == "english":
            self.stopwords = ENGLISH_STOP_WORDS
        elif stop in ("", "none"):
            self.stopwords = frozenset()
        else:
            self.stopwords = frozenset(w.strip() for w in stop.split(",") if w.strip())
        name = self.config.stemmer.strip().lower()
        self._stem_words = None
        if name not in ("", "none"):
            import Stemmer  # PyStemmer: the Snowball stemmers in C

            if name not in Stemmer.algorithms():
                raise InvalidArgument(f"lexical_stemmer: unknown stemmer {name!r} "
                                      f"(one of none, {', '.join(Stemmer.algorithms())})")
            self._stem_words = Stemmer.Stemmer(name, 0).stemWords
        self._cache: dict[str, str | None] = {}  # raw token -> term (None: stop word)
        self._lock = threading.Lock()  # a PyStemmer object is not thread-safe; the cache is shared

    def _resolve(self, tokens: list[str]) -> dict[str, str | None]:
        """A cache dict holding every token of ``tokens`` (stemming the ones not seen before)."""
        cache = self._cache
        missing = [t for t in set(tokens) if t not in cache]
        if not missing:
            return cache
        with self._lock:
            cache = self._cache
            if len(cache) + len(missing) > self.CACHE_LIMIT:
                cache = self._cache = {}  # a new dict: readers holding the old one still find their tokens
            keep = [t for t in missing if t not in self.stopwords]
            stems = self._stem_words(keep) if self._stem_words is not None else keep
            cache.update(dict.fromkeys(missing))
            cache.update(zip(keep, stems))
            return cache

    def terms(self, text: str) -> list[str]:
        tokens = _TOKEN.findall(text.lower())
        cache = self._resolve(tokens)
        return [term for term in map(cache.get, tokens) if term is not None]

    def counts(self, text: str) -> Counter[str]:
        tokens = _TOKEN.findall(text.lower())
        counts = Counter(map(self._resolve(tokens).get, tokens))
        counts.pop(None, None)
        return counts  # type: ignore[return-value]

    def describe(self, k1: float, b: float) -> str:
        """Everything that changes scores: shards of one collection must agree on it."""
        return json.dumps({"stemmer": self.config.stemmer, "stopwords": self.config.stopwords, "k1": k1, "b": b},
                          sort_keys=True)


def document_text(title: str, text: str) -> str:
    """What is indexed for a document: its title and text (as for the embedding)."""
    return f"{title}\n{text}" if title else text


def idf(df: int, documents: int) -> float:
    return math.log(1.0 + (documents - df + 0.5) / (df + 0.5))


@dataclass
class QueryTerms:
    """A query's analysed terms with their counts in the query and their document frequencies."""

    terms: list[str]
    counts: list[int]
    document_frequencies: list[int] = field(default_factory=list)


@dataclass
class CorpusStats:
    documents: int
    total_length: int

    @property
    def avg_length(self) -> float:
        return self.total_length / self.documents if self.documents else 1.0


@dataclass
class LexicalQuery:
    """What a shard scores: terms, each term's count in the query, and the corpus statistics to score with
    (``stats`` None = this shard's own)."""

    terms: list[str]
    counts: list[int]
    document_frequencies: list[int] | None = None
    stats: CorpusStats | None = None


class LexicalIndex:
    """Inverted index over internal ids (iids, ascending as the store hands them out).

    Not thread-safe by itself: the shard serialises writers and lets readers share a read lock."""

    def __init__(self, analyzer: Analyzer, k1: float = DEFAULT_K1, b: float = DEFAULT_B):
        self.analyzer = analyzer
        self.k1, self.b = k1, b
        self._vocab: dict[str, int] = {}  # term -> term id
        self._post_slots: list[array[int]] = []  # term id -> slots holding the term (ascending)
        self._post_tfs: list[array[int]] = []  # term id -> the term's frequency in each of those slots
        self._iids = np.zeros(1024, np.int64)  # slot -> iid (ascending)
        self._keys = np.zeros(1024, np.uint64)  # slot -> tie-break key (hash of the document id)
        self._lengths = np.zeros(1024, np.float64)
        self._alive = np.zeros(1024, bool)
        self._slots = 0
        self._slot_of: dict[int, int] = {}
        self.documents = 0  # live documents
        self.total_length = 0  # terms in live documents
        self.postings = 0  # (term, slot) entries, live and dead

    # --- writes ---------------------------------------------------------------------------------
    def analyze(self, texts: Iterable[str]) -> list[Counter[str]]:
        """Term counts of each text (pure; done before taking any lock)."""
        return [self.analyzer.counts(t) for t in texts]

    def _term_ids(self, terms: Iterable[str]) -> list[int]:
        vocab = self._vocab
        ids = list(map(vocab.get, terms))
        if None in ids:
            for i, (term, tid) in enumerate(zip(terms, ids)):
                if tid is None:
                    tid = vocab.get(term)
                    if tid is None:
                        tid = vocab[term] = len(self._post_slots)
                        self._post_slots.append(array("i"))
                        self._post_tfs.append(array("i"))
                    ids[i] = tid
        return ids  # type: ignore[return-value]

    def add(self, iids: Sequence[int] | np.ndarray, analyzed: Sequence[Counter[str]],
            keys: Sequence[int] | np.ndarray | None = None) -> None:
        """Add documents (iids larger than any present, as the store assigns them). ``keys``: tie-break key
        of each document (``ragcluster.hashing.id_key`` of its id: equal scores rank in key order on every
        shard and in the router, so a cluster orders ties as one index would); default: the iids.
        The batch's postings are grouped by term with numpy, so the Python work is per distinct term, not
        per posting."""
        n = len(iids)
        if n == 0:
            return
        if self._slots + n > len(self._iids):
            cap = max(2 * len(self._iids), self._slots + n)
            for name in ("_iids", "_keys", "_lengths", "_alive"):
                old = getattr(self, name)
                new = np.zeros(cap, old.dtype)
                new[: self._slots] = old[: self._slots]
                setattr(self, name, new)
        all_tids, all_tfs = array("i"), array("i")
        sizes = np.empty(n, np.int64)
        lengths = np.empty(n, np.float64)
        for i, counts in enumerate(analyzed):
            all_tids.extend(self._term_ids(list(counts)))
            all_tfs.extend(counts.values())
            sizes[i] = len(counts)
            lengths[i] = sum(counts.values())
        first = self._slots
        new_slots = np.arange(first, first + n)
        iid_arr = np.asarray(iids, np.int64)
        self._iids[first : first + n] = iid_arr
        self._keys[first : first + n] = np.asarray(keys if keys is not None else iid_arr, np.uint64)
        self._lengths[first : first + n] = lengths
        self._alive[first : first + n] = True
        self._slot_of.update(zip(iid_arr.tolist(), new_slots.tolist()))
        tids = np.frombuffer(all_tids, np.int32)
        if len(tids):
            order = np.argsort(tids, kind="stable")  # slots stay ascending within a term
            tids_sorted = tids[order]
            slots_sorted = np.repeat(new_slots.astype(np.int32), sizes)[order]
            tfs_sorted = np.frombuffer(all_tfs, np.int32)[order]
            starts = np.flatnonzero(np.r_[True, tids_sorted[1:] != tids_sorted[:-1]])
            ends = np.r_[starts[1:], len(tids_sorted)]
            slot_view, tf_view = memoryview(slots_sorted.tobytes()), memoryview(tfs_sorted.tobytes())
            post_slots, post_tfs = self._post_slots, self._post_tfs
            for tid, a, b in zip(tids_sorted[starts].tolist(), starts.tolist(), ends.tolist()):
                post_slots[tid].frombytes(slot_view[4 * a : 4 * b])
                post_tfs[tid].frombytes(tf_view[4 * a : 4 * b])
        self._slots += n
        self.documents += n
        self.total_length += int(lengths.sum())
        self.postings += len(tids)

    def remove(self, iids: Iterable[int]) -> None:
        for iid in iids:
            slot = self._slot_of.pop(int(iid), None)
            if slot is not None and self._alive[slot]:
                self._alive[slot] = False
                self.documents -= 1
                self.total_length -= int(self._lengths[slot])

    @property
    def terms(self) -> int:
        return len(self._vocab)

    @property
    def dead(self) -> int:
        return self._slots - self.documents

    @property
    def dead_share(self) -> float:
        return self.dead / self._slots if self._slots else 0.0

    # --- reads ----------------------------------------------------------------------------------
    def describe(self) -> str:
        return self.analyzer.describe(self.k1, self.b)

    def live_iids(self) -> np.ndarray:
        live: np.ndarray = self._iids[: self._slots][self._alive[: self._slots]]
        return live

    def keys_for(self, iids: np.ndarray) -> np.ndarray:
        """Tie-break keys of present iids."""
        return self._keys[np.searchsorted(self._iids[: self._slots], iids)]

    def stats(self) -> CorpusStats:
        return CorpusStats(self.documents, self.total_length)

    def _posting(self, term: str) -> tuple[np.ndarray, np.ndarray] | None:
        tid = self._vocab.get(term)
        if tid is None:
            return None
        slots = np.frombuffer(self._post_slots[tid], np.int32).copy()
        return slots, np.frombuffer(self._post_tfs[tid], np.int32).copy()

    def document_frequency(self, term: str) -> int:
        posting = self._posting(term)
        return 0 if posting is None else int(self._alive[posting[0]].sum())

    def query_terms(self, text: str) -> QueryTerms:
        """The analysed terms of ``text`` (first-occurrence order), their counts and local document
        frequencies."""
        counts = self.analyzer.counts(text)
        terms = list(counts)
        return QueryTerms(terms, [counts[t] for t in terms], [self.document_frequency(t) for t in terms])

    def search(self, query: LexicalQuery, k: int, allowed: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` (iids, scores) by BM25, best first (ties by key); only documents containing a query
        term score. ``allowed``: iids a filter admits."""
        stats = query.stats or self.stats()
        if stats.documents <= 0 or not query.terms:
            return np.zeros(0, np.int64), np.zeros(0, np.float64)
        k1, b = self.k1, self.b
        n = self._slots
        # the length normalisation of every document, once per query (cheaper than per posting)
        norm = k1 * (1.0 - b + b * self._lengths[:n] / stats.avg_length)
        scores = np.zeros(n, np.float64)
        found = False
        for i, (term, qtf) in enumerate(zip(query.terms, query.counts)):
            posting = self._posting(term)
            if posting is None:
                continue
            slots, tf_int = posting
            if query.document_frequencies is not None:
                df = int(query.document_frequencies[i])
            else:
                df = int(self._alive[slots].sum())
            weight = idf(df, stats.documents) * qtf * (k1 + 1.0)
            tf = tf_int.astype(np.float64)
            scores[slots] += weight * tf / (tf + norm[slots])  # a term's slots are distinct
            found = True
        if not found:
            return np.zeros(0, np.int64), np.zeros(0, np.float64)
        # every term's contribution is positive, so the documents holding a query term are those scoring > 0
        candidates = np.flatnonzero((scores > 0) & self._alive[: self._slots])
        if allowed is not None:
            candidates = candidates[np.isin(self._iids[candidates], allowed)]
        if len(candidates) == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float64)
        cand_scores = scores[candidates]
        if len(candidates) > k:
            top = np.argpartition(-cand_scores, k - 1)[:k]
            # keep every candidate tied with the k-th score so the tie-break below sees them all
            kth = cand_scores[top].min()
            top = np.flatnonzero(cand_scores >= kth)
            candidates, cand_scores = candidates[top], cand_scores[top]
        order = np.lexsort((self._keys[candidates], -cand_scores))[:k]
        return self._iids[candidates[order]], cand_scores[order]

    def memory_bytes(self) -> int:
        """Approximate memory held: postings buffers, per-term overhead and the per-document arrays."""
        per_term = sum(len(term) + 100 for term in self._vocab)  # the term, its dict entry and two arrays
        per_term += sum(s.buffer_info()[1] * 8 + 128 for s in self._post_slots)
        per_doc = len(self._iids) * (8 + 8 + 1) + len(self._slot_of) * 100
        return per_term + per_doc
