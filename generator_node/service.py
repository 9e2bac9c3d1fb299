"""GeneratorService servicer: protobuf <-> engine types at the edge."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from grpc.aio import ServicerContext

from generator_node.engine import Engine, Sampling
from ragcluster import tracing
from ragcluster.errors import InvalidArgument, Unavailable
from ragcluster.v1 import generator_pb2, generator_pb2_grpc


def _messages(chat: generator_pb2.ChatMessages) -> list[dict[str, str]]:
    return [{"role": m.role, "content": m.content} for m in chat.messages]


class GeneratorServicer(generator_pb2_grpc.GeneratorServiceServicer):
    def __init__(self, engine: Engine, default_max_tokens: int = 256, default_stream_interval: int = 1) -> None:
        self.engine = engine
        self.default_max_tokens = default_max_tokens
        self.default_stream_interval = default_stream_interval

    def _ready(self) -> Engine:
        if self.engine.llm is None or self.engine.tokenizer is None:
            raise Unavailable("generator engine is not running")
        return self.engine

    async def Generate(self, request: generator_pb2.GenerateRequest,
                       context: ServicerContext) -> AsyncIterator[generator_pb2.GenerateEvent]:
        engine = self._ready()
        kind = request.WhichOneof("input")
        if kind == "prompt":
            if not request.prompt:
                raise InvalidArgument("prompt: empty")
            text = request.prompt
        elif kind == "chat":
            text = engine.chat_prompt(_messages(request.chat))
        elif kind == "token_ids":  # templated and tokenized by the caller with this node's tokenizer
            text = ""
        else:
            raise InvalidArgument("input: set prompt, chat or token_ids")
        if kind == "token_ids":
            prompt_ids = list(request.token_ids.ids)
            engine.check_token_ids(prompt_ids)
        else:
            prompt_ids = await asyncio.to_thread(engine.encode, text)
        s = request.sampling
        sampling = Sampling(
            max_tokens=s.max_tokens if s.HasField("max_tokens") else self.default_max_tokens,
            temperature=s.temperature if s.HasField("temperature") else None,
            top_p=s.top_p if s.HasField("top_p") else None,
            top_k=s.top_k if s.HasField("top_k") else None,
            stop=tuple(s.stop),
            seed=s.seed if s.HasField("seed") else None,
            repetition_penalty=s.repetition_penalty if s.HasField("repetition_penalty") else None,
            stream_interval=s.stream_interval if s.HasField("stream_interval") else self.default_stream_interval,
        )
        first = True
        # closed here when the caller cancels at our yield, not at garbage collection: the engine aborts now
        async with contextlib.aclosing(engine.generate(prompt_ids, sampling, request.request_id)) as chunks:
            async for chunk in chunks:
                if chunk.finished:
                    yield generator_pb2.GenerateEvent(complete=generator_pb2.GenerateComplete(
                        finish_reason=chunk.finish_reason, prompt_tokens=chunk.prompt_tokens,
                        completion_tokens=chunk.completion_tokens, queue_seconds=chunk.queue_seconds,
                        time_to_first_token_seconds=chunk.ttft_seconds, total_seconds=chunk.total_seconds,
                    ))
                else:
                    if first:
                        first = False
                        tracing.add_event("first_token")
                    yield generator_pb2.GenerateEvent(delta=generator_pb2.TextDelta(text=chunk.text))

    async def Info(self, request: generator_pb2.GeneratorInfoRequest,
                   context: ServicerContext) -> generator_pb2.GeneratorInfoResponse:
        engine = self._ready()
        return generator_pb2.GeneratorInfoResponse(
            model=engine.model_name, max_context_length=engine.max_model_len,
            has_chat_template=engine.has_chat_template, max_tokens_default=self.default_max_tokens,
            tokenizer_fingerprint=engine.counter.fingerprint if engine.counter is not None else "",
        )

    async def Tokenizer(self, request: generator_pb2.TokenizerRequest,
                        context: ServicerContext) -> generator_pb2.TokenizerResponse:
        engine = self._ready()
        if engine.counter is None or not engine.tokenizer_files:
            raise Unavailable("this node cannot serve its tokenizer; count tokens with CountTokens")
        return generator_pb2.TokenizerResponse(fingerprint=engine.counter.fingerprint, files=engine.tokenizer_files)

    async def CountTokens(self, request: generator_pb2.CountTokensRequest,
                          context: ServicerContext) -> generator_pb2.CountTokensResponse:
        engine = self._ready()
        if len(request.texts) > 4096:
            raise InvalidArgument("texts: at most 4096 per call")
        counts = await asyncio.to_thread(engine.count_tokens, list(request.texts))
        response = generator_pb2.CountTokensResponse(counts=counts)
        if request.HasField("chat"):
            text = engine.chat_prompt(_messages(request.chat))
            response.chat_tokens = len(await asyncio.to_thread(engine.encode, text))
        return response
