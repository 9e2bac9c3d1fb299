"""The router's generator pool: least-outstanding routing, failover before the first token (never after),
and prompt budgeting with the node's own tokenizer."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc

from ragcluster.errors import InvalidArgument, Unavailable
from ragcluster.serving import channel_options
from ragcluster.v1 import common_pb2, generator_pb2, generator_pb2_grpc
from router.prompt import Passage, Prompt, PromptTemplate, answer_budget, order_passages, select_passages

logger = logging.getLogger(__name__)


@dataclass
class GeneratorNode:
    address: str
    channel: grpc.aio.Channel
    stub: generator_pb2_grpc.GeneratorServiceStub
    outstanding: int = 0
    info: generator_pb2.GeneratorInfoResponse | None = None


class GeneratorPool:
    def __init__(self, addresses: list[str]):
        self.nodes = []
        for address in addresses:
            channel = grpc.aio.insecure_channel(address, options=channel_options())
            self.nodes.append(GeneratorNode(address, channel, generator_pb2_grpc.GeneratorServiceStub(channel)))

    def ordered(self) -> list[GeneratorNode]:
        return sorted(self.nodes, key=lambda n: n.outstanding)

    async def node_info(self, node: GeneratorNode, timeout: float) -> generator_pb2.GeneratorInfoResponse:
        if node.info is None:
            node.info = await node.stub.Info(generator_pb2.GeneratorInfoRequest(), timeout=timeout)
        return node.info

    async def build_prompt(self, node: GeneratorNode, question: str, passages: list[Passage], max_tokens: int,
                           template: PromptTemplate, timeout: float) -> Prompt:
        info = await self.node_info(node, timeout)
        budget = answer_budget(info.max_context_length, max_tokens)
        passages = order_passages(passages)
        formatted = [template.format_passage(i + 1, p) for i, p in enumerate(passages)]
        base_messages = template.messages(question, [])
        counts = await node.stub.CountTokens(
            generator_pb2.CountTokensRequest(texts=formatted, chat=_chat(base_messages)), timeout=timeout
        )
        chosen = select_passages(counts.chat_tokens, list(counts.counts), budget)
        for _ in range(len(chosen) + 1):  # verify with the real template; drop the last passage if over
            included = [passages[i] for i in chosen]
            messages = template.messages(question, [template.format_passage(n + 1, p) for n, p in enumerate(included)])
            total = (await node.stub.CountTokens(generator_pb2.CountTokensRequest(chat=_chat(messages)),
                                                 timeout=timeout)).chat_tokens
            if total <= budget:
                return Prompt(messages, [p.id for p in included], total)
            if not chosen:
                break
            chosen = chosen[:-1]
        raise InvalidArgument(f"question: too long for the generator's context of {info.max_context_length} tokens")

    async def generate(self, question: str, passages: list[Passage], sampling: common_pb2.SamplingParams,
                       template: PromptTemplate, timeout: float, request_id: str = ""
                       ) -> AsyncIterator[tuple[GeneratorNode, Prompt | None, generator_pb2.GenerateEvent | None]]:
        """Yield (node, prompt, None) once a node is chosen, then (node, None, event) per event.

        A node that fails before its first event is skipped for the next; once an event was yielded,
        errors propagate (a partial answer is never silently restarted elsewhere)."""
        if not self.nodes:
            raise Unavailable("no generator nodes configured")
        deadline = time.monotonic() + timeout
        errors = []
        for node in self.ordered():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            node.outstanding += 1
            started = False
            try:
                prompt = await self.build_prompt(node, question, passages, sampling.max_tokens, template, remaining)
                request = generator_pb2.GenerateRequest(
                    request_id=request_id, chat=_chat(prompt.messages), sampling=sampling
                )
                call = node.stub.Generate(request, timeout=deadline - time.monotonic())
                try:
                    async for event in call:
                        if not started:
                            started = True
                            yield node, prompt, None
                        yield node, None, event
                finally:
                    call.cancel()  # no-op when finished; aborts the engine request when we stop early
                return
            except grpc.aio.AioRpcError as exc:
                if started or exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED):
                    if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                        raise InvalidArgument(exc.details()) from exc
                    raise
                logger.warning("generator %s: %s before the first token; trying another", node.address,
                               exc.code().name)
                node.info = None
                errors.append(f"{node.address}: {exc.code().name}")
            finally:
                node.outstanding -= 1
        raise Unavailable("no generator node could serve the request: " + "; ".join(errors or ["deadline passed"]))

    async def close(self) -> None:
        for node in self.nodes:
            await node.channel.close()


def _chat(messages: list[dict[str, str]]) -> generator_pb2.ChatMessages:
    return generator_pb2.ChatMessages(
        messages=[generator_pb2.ChatMessage(role=m["role"], content=m["content"]) for m in messages]
    )
