"""A FAISS index over a shard's vectors, keyed by the store's int64 iids (pure: no grpc).

Built from any ``index_factory`` string. Flat/HNSW/PQ indexes are wrapped in ``IndexIDMap2`` to take
our ids; IVF indexes take ids natively. Indexes that need training (IVF, PQ) are searched exactly
(a flat index) until ``train_min`` vectors exist, then trained on them and filled. Removal uses
``remove_ids`` where FAISS supports it; elsewhere (HNSW) removed ids become tombstones excluded from
searches through an ``IDSelectorNot`` — so results never contain a deleted or replaced document.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from typing import cast

import faiss
import numpy as np

from ragcluster.errors import FailedPrecondition, InvalidArgument

logger = logging.getLogger(__name__)

METRICS = {"ip": faiss.METRIC_INNER_PRODUCT, "l2": faiss.METRIC_L2}


def parse_metric(name: str) -> str:
    name = name.lower()
    if name == "cosine":
        return "ip"  # vectors are normalised, so inner product is cosine similarity
    if name not in METRICS:
        raise InvalidArgument(f"metric: {name!r} is not one of ip, l2, cosine")
    return name


class VectorIndex:
    def __init__(self, dim: int, factory: str = "Flat", metric: str = "ip", train_min: int = 0,
                 nprobe: int = 16, ef_search: int = 64, ef_construction: int = 200):
        if dim <= 0:
            raise InvalidArgument(f"dim: must be positive, got {dim}")
        self.dim = dim
        self.factory = factory
        self.metric = parse_metric(metric)
        self.metric_type = METRICS[self.metric]
        self.normalise = self.metric == "ip"
        self.default_nprobe = nprobe
        self.default_ef_search = ef_search
        try:
            base = faiss.index_factory(dim, factory, self.metric_type)
        except RuntimeError as exc:
            raise InvalidArgument(f"index_factory: FAISS cannot build {factory!r}: {exc}") from exc
        hnsw = faiss.downcast_index(base)
        if isinstance(hnsw, faiss.IndexHNSW):
            hnsw.hnsw.efConstruction = ef_construction  # FAISS defaults to 40: too low for >0.95 recall
        self._base = base
        self._native_ids = faiss.try_extract_index_ivf(base) is not None or factory.startswith("IDMap")
        self.trained = base.is_trained
        self.train_min = train_min or _default_train_min(factory)
        self._tombstones: set[int] = set()
        self._removable = True
        self.max_iid = -1  # largest id ever added: ids above it were never in this index
        if self.trained:
            self.index = self._wrap(base)
        else:  # exact until enough vectors exist to train
            self.index = faiss.IndexIDMap2(faiss.IndexFlat(dim, self.metric_type))

    def _wrap(self, base: faiss.Index) -> faiss.Index:
        return base if self._native_ids else faiss.IndexIDMap2(base)

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal) - len(self._tombstones)

    @property
    def tombstones(self) -> int:
        return len(self._tombstones)

    @property
    def tombstone_share(self) -> float:
        total = int(self.index.ntotal)
        return len(self._tombstones) / total if total else 0.0

    # --- checkpoints ----------------------------------------------------------------------------
    def state(self) -> tuple[dict, np.ndarray, np.ndarray]:
        """(header, serialised index, tombstones) — call with the index read-locked."""
        header = {"dim": self.dim, "factory": self.factory, "metric": self.metric, "trained": self.trained,
                  "removable": self._removable, "max_iid": self.max_iid, "train_min": self.train_min}
        return header, faiss.serialize_index(self.index), np.fromiter(self._tombstones, dtype=np.int64)

    def compatible(self, header: dict) -> bool:
        return (header.get("dim"), header.get("factory"), header.get("metric")) == (self.dim, self.factory, self.metric)

    def load_state(self, header: dict, index_bytes: np.ndarray, tombstones: np.ndarray) -> None:
        self.index = faiss.deserialize_index(np.ascontiguousarray(index_bytes))
        self.trained = bool(header["trained"])
        self._removable = bool(header["removable"])
        self.max_iid = int(header["max_iid"])
        self._tombstones = set(int(t) for t in tombstones)

    def prepare(self, vectors: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(vectors, dtype=np.float32)
        if self.normalise:
            x = x.copy()
            faiss.normalize_L2(x)
        return x

    def add(self, iids: np.ndarray, vectors: np.ndarray) -> None:
        """Add already-prepared vectors."""
        if len(iids) == 0:
            return
        self.index.add_with_ids(vectors, np.ascontiguousarray(iids, dtype=np.int64))
        self.max_iid = max(self.max_iid, int(np.max(iids)))
        if not self.trained and self.index.ntotal >= self.train_min:
            self._train()

    def _train(self) -> None:
        ids, x = self._live_vectors()
        logger.info("training %s on %d vectors", self.factory, len(ids))
        self._base.train(x)
        index = self._wrap(self._base)
        index.add_with_ids(x, ids)
        self.index = index
        self._tombstones.clear()
        self.trained = True

    def remove(self, iids: Iterable[int]) -> None:
        """Remove ids; ids above ``max_iid`` were never added and are ignored."""
        known = [int(i) for i in iids if int(i) <= self.max_iid]
        if not known:
            return
        if self._removable:
            try:
                self.index.remove_ids(faiss.IDSelectorBatch(np.array(known, dtype=np.int64)))
                return
            except RuntimeError:
                self._removable = False  # e.g. HNSW: fall back to tombstones from now on
        self._tombstones.update(known)

    def train_now(self) -> None:
        """Train an index that needs training on the vectors it holds, whatever their number."""
        if self.trained:
            return
        try:
            self._train()
        except RuntimeError as exc:
            raise FailedPrecondition(
                f"train: FAISS cannot train {self.factory!r} on {self.ntotal} vectors: {exc}") from exc

    def _live_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        idmap = cast(faiss.IndexIDMap2, self.index)  # the exact IndexIDMap2(IndexFlat) used until training
        ids = faiss.vector_to_array(idmap.id_map).astype(np.int64)
        x = idmap.index.reconstruct_n(0, int(idmap.ntotal))
        keep = np.array([i not in self._tombstones for i in ids], dtype=bool)
        return ids[keep], np.ascontiguousarray(x[keep])

    def _search_params(self, nprobe: int | None, ef_search: int | None,
                       selector: faiss.IDSelector | None) -> faiss.SearchParameters:
        inner = self.index.index if isinstance(self.index, faiss.IndexIDMap) else self.index
        inner = faiss.downcast_index(inner)
        params: faiss.SearchParameters
        if faiss.try_extract_index_ivf(inner) is not None:
            ivf = faiss.SearchParametersIVF()
            ivf.nprobe = nprobe or self.default_nprobe
            params = ivf
        elif isinstance(inner, faiss.IndexHNSW):
            hnsw = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]  # missing from faiss's bundled .pyi
            hnsw.efSearch = ef_search or self.default_ef_search
            params = hnsw
        else:
            params = faiss.SearchParameters()
        if selector is not None:
            params.sel = selector
        return params

    def search(self, queries: np.ndarray, k: int, nprobe: int | None = None, ef_search: int | None = None,
               allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k of prepared queries: (scores, ids) of shape (nq, k), padded with -1 ids.

        ``allowed``: search only these ids (a metadata filter's matches, all live documents)."""
        keep: faiss.IDSelector | None = None
        selector: faiss.IDSelector | None = None
        if allowed is not None:
            keep = selector = faiss.IDSelectorBatch(np.ascontiguousarray(allowed, dtype=np.int64))
        elif self._tombstones:
            keep = faiss.IDSelectorBatch(np.fromiter(self._tombstones, dtype=np.int64))
            selector = faiss.IDSelectorNot(keep)
        params = self._search_params(nprobe, ef_search, selector)
        scores, ids = self.index.search(queries, k, params=params)
        del keep  # the selectors must outlive the search call
        return scores, ids


def _default_train_min(factory: str) -> int:
    """Vectors needed before training: FAISS wants ~39 per IVF centroid and 256 per PQ code."""
    need = 1000
    for match in re.finditer(r"IVF(\d+)", factory):
        need = max(need, 39 * int(match.group(1)))
    if re.search(r"PQ\d+", factory):
        need = max(need, 39 * 256)
    return need
