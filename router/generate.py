"""The router's generator pool: least-outstanding routing, failover before the first token (never after),
and prompt budgeting with the node's own tokenizer — fetched from the node once (Tokenizer RPC, cached by
fingerprint) and run here, so an Ask costs no token-counting round trip and the node gets token ids; nodes
that cannot serve their tokenizer are counted by CountTokens calls."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncGenerator

import grpc

from ragcluster import tracing
from ragcluster.channels import aio_channel
from ragcluster.errors import DeadlineExceeded, InvalidArgument, Unavailable
from ragcluster.security import ClientTls
from ragcluster.tokens import TokenCounter, fingerprint
from ragcluster.v1 import common_pb2, generator_pb2, generator_pb2_grpc
from router import metrics
from router.discovery import Resolver, refresh_periodically
from router.health import Backend, Watchers
from router.prompt import Passage, Prompt, PromptTemplate, answer_budget, order_passages, select_passages

logger = logging.getLogger(__name__)

COUNTER_RETRY_SECONDS = 60.0  # a tokenizer that failed to load is fetched again after this
INLINE_COUNT_CHARS = 16_000  # prompts shorter than this are counted on the event loop (well under a millisecond)


class GeneratorNode(Backend):
    def __init__(self, address: str, channel: grpc.aio.Channel) -> None:
        super().__init__(address, channel)
        self.stub = generator_pb2_grpc.GeneratorServiceStub(channel)
        self.info: generator_pb2.GeneratorInfoResponse | None = None

        def reset_info() -> None:
            self.info = None  # a restarted node may run another model

        self.on_serving = reset_info


def fit_prompt(counter: TokenCounter, question: str, passages: list[Passage], budget: int,
               template: PromptTemplate, context_length: int) -> Prompt:
    """Fit the best passages into ``budget`` tokens, counted with the node's own tokenizer in this process.

    One encode of the templated prompt in the common case (everything fits); otherwise passages are chosen
    by their counts and the result verified with the real template, dropping the last one while over budget.
    The prompt's token ids come with it, so the node does not tokenize again."""
    passages = order_passages(passages)
    formatted = [template.format_passage(i + 1, p) for i, p in enumerate(passages)]
    messages = template.messages(question, formatted)
    ids = counter.encode(counter.chat_prompt(messages))
    if len(ids) <= budget:
        return Prompt(messages, [p.id for p in passages], len(ids), ids)
    counts = counter.count(formatted)
    base = max(0, len(ids) - sum(c + 2 for c in counts))  # estimated; checked exactly below
    chosen = select_passages(base, counts, budget)
    for _ in range(len(chosen) + 1):
        included = [passages[i] for i in chosen]
        messages = template.messages(question, [template.format_passage(n + 1, p) for n, p in enumerate(included)])
        ids = counter.encode(counter.chat_prompt(messages))
        if len(ids) <= budget:
            return Prompt(messages, [p.id for p in included], len(ids), ids)
        if not chosen:
            break
        chosen = chosen[:-1]
    raise InvalidArgument(f"question: too long for the generator's context of {context_length} tokens")


class GeneratorPool:
    """Generator endpoints with health tracking (router/health.py): a node that is not SERVING — still
    loading, draining, or dead — gets no traffic, and comes back by itself once it reports SERVING."""

    def __init__(self, addresses: list[str], eject_seconds: float = 5.0, security: ClientTls | None = None,
                 local_tokenizer: bool = True) -> None:
        self.eject_seconds = eject_seconds
        self.local_tokenizer = local_tokenizer  # count with the nodes' tokenizers here (False: CountTokens calls)
        self.security = security  # TLS for the channels to the nodes (None: plaintext)
        self.specs = list(addresses)  # host:port, or dns:///name:port (every address it resolves to)
        self.nodes: list[GeneratorNode] = []
        self._watchers = Watchers()
        self._refresh_task: asyncio.Task[None] | None = None
        self.resolver = Resolver()
        # the nodes' tokenizers, by fingerprint: one copy per distinct tokenizer, fetched once (Tokenizer RPC)
        self.counters: dict[str, TokenCounter] = {}
        self._counter_tasks: dict[str, asyncio.Task[None]] = {}
        self._counter_failed: dict[str, float] = {}  # fingerprint -> when loading failed (retried later)
        self._warming: set[asyncio.Task[None]] = set()
        self._add([a for a in self.specs if not a.startswith("dns:")])

    def _add(self, addresses: list[str]) -> list[GeneratorNode]:
        known = {n.address for n in self.nodes}
        added = [GeneratorNode(a, aio_channel(a, self.security))
                 for a in addresses if a not in known]
        for node in added:
            node.on_serving = functools.partial(self._on_serving, node)
        self.nodes.extend(added)
        return added

    async def start(self, wait_seconds: float = 5.0, refresh_seconds: float = 30.0) -> None:
        """Start watching every node; wait (bounded) until each has reported a first status."""
        self._add(await self.resolver.resolve_all(self.specs))
        await self._watchers.start(self.nodes, "generator", wait_seconds)
        if any(s.startswith("dns:") for s in self.specs):
            self._refresh_task = refresh_periodically(self.refresh, refresh_seconds, "generator refresh")

    async def refresh(self) -> None:
        """Re-resolve: watch new nodes, stop watching and close the channels of those that left (a failed
        lookup keeps the last good addresses)."""
        wanted = set(await self.resolver.resolve_all(self.specs))
        added = self._add(sorted(wanted))
        gone = [n for n in self.nodes if n.address not in wanted]
        self.nodes = [n for n in self.nodes if n.address in wanted]
        if added:
            logger.info("new generator nodes %s", [n.address for n in added])
            await self._watchers.start(added, "generator", 0)
        if gone:
            logger.info("generator nodes %s left DNS", [n.address for n in gone])
            await self._watchers.remove(gone)
            await asyncio.gather(*(n.channel.close(grace=5.0) for n in gone))  # streams in flight may finish

    def state_counts(self) -> list[tuple[str, int]]:
        """Nodes by state (serving, ejected, not_serving), for ragcluster_router_generator_nodes."""
        now = time.monotonic()
        states = ["not_serving" if not n.serving else "ejected" if n.ejected_until > now else "serving"
                  for n in self.nodes]
        return [(state, states.count(state)) for state in ("serving", "ejected", "not_serving")]

    def ordered(self) -> list[GeneratorNode]:
        """SERVING, non-ejected nodes, least outstanding requests first."""
        now = time.monotonic()
        return sorted((n for n in self.nodes if n.usable(now)), key=lambda n: n.outstanding)

    def _on_serving(self, node: GeneratorNode) -> None:
        """A node turned SERVING: forget its info (a restarted node may run another model) and fetch the
        info and its tokenizer now, before the first Ask needs them."""
        node.info = None
        task = asyncio.create_task(self._warm(node))
        self._warming.add(task)
        task.add_done_callback(self._warming.discard)

    async def _warm(self, node: GeneratorNode) -> None:
        try:
            self.counter(node, await self.node_info(node, 30.0))
        except grpc.aio.AioRpcError as exc:  # the first Ask asks again
            logger.debug("generator %s: info not fetched yet (%s)", node.address, exc.code().name)

    async def node_info(self, node: GeneratorNode, timeout: float) -> generator_pb2.GeneratorInfoResponse:
        if node.info is None:
            with tracing.client_call("GeneratorService/Info", generator=node.address) as metadata:
                node.info = await node.stub.Info(generator_pb2.GeneratorInfoRequest(), timeout=timeout,
                                                 metadata=metadata)
        return node.info

    def counter(self, node: GeneratorNode, info: generator_pb2.GeneratorInfoResponse) -> TokenCounter | None:
        """The node's tokenizer if this router has it; else None (count by RPC) and start fetching it in the
        background, once per fingerprint (a node without one, or an older node, is always counted by RPC)."""
        fp = info.tokenizer_fingerprint
        if not fp or not self.local_tokenizer:
            return None
        counter = self.counters.get(fp)
        if counter is not None:
            return counter
        failed = self._counter_failed.get(fp)
        if fp not in self._counter_tasks and (failed is None or time.monotonic() - failed > COUNTER_RETRY_SECONDS):
            self._counter_tasks[fp] = asyncio.create_task(self._load_counter(node, fp))
        return None

    async def _load_counter(self, node: GeneratorNode, fp: str) -> None:
        try:
            response = await node.stub.Tokenizer(generator_pb2.TokenizerRequest(), timeout=60)
            files = dict(response.files)
            if response.fingerprint != fp or fingerprint(files) != fp:
                raise ValueError(f"tokenizer fingerprint {response.fingerprint[:12]} does not match {fp[:12]}")
            counter = await asyncio.to_thread(TokenCounter.from_files, files)
            self.counters[fp] = counter
            self._counter_failed.pop(fp, None)
            logger.info("generator %s: counting prompt tokens with its tokenizer %s here", node.address, fp[:12])
        except Exception as exc:  # counted by RPC meanwhile; tried again later
            logger.warning("generator %s: cannot load its tokenizer (%r); counting tokens by RPC", node.address, exc)
            self._counter_failed[fp] = time.monotonic()
        finally:
            self._counter_tasks.pop(fp, None)

    @tracing.traced("prompt")
    async def build_prompt(self, node: GeneratorNode, question: str, passages: list[Passage], max_tokens: int,
                           template: PromptTemplate, timeout: float) -> Prompt:
        """Fit the best passages into the node's context minus the answer budget.

        One CountTokens call in the common case (everything fits); otherwise passages are chosen by their
        counts and the result verified with the real template, dropping the last one while over budget."""
        info = await self.node_info(node, timeout)
        budget = answer_budget(info.max_context_length, max_tokens)
        counter = self.counter(node, info)
        if counter is not None:
            if sum(len(p.text) + len(p.title) for p in passages) < INLINE_COUNT_CHARS:
                return fit_prompt(counter, question, passages, budget, template, info.max_context_length)
            return await asyncio.to_thread(fit_prompt, counter, question, passages, budget, template,
                                           info.max_context_length)  # long prompts: off the event loop
        passages = order_passages(passages)
        formatted = [template.format_passage(i + 1, p) for i, p in enumerate(passages)]
        messages = template.messages(question, formatted)
        with tracing.client_call("GeneratorService/CountTokens", generator=node.address) as metadata:
            counts = await node.stub.CountTokens(
                generator_pb2.CountTokensRequest(texts=formatted, chat=_chat(messages)), timeout=timeout,
                metadata=metadata)
        if counts.chat_tokens <= budget:
            return Prompt(messages, [p.id for p in passages], counts.chat_tokens)
        # the prompt without passages, estimated from the full one (exactly checked below)
        base = max(0, counts.chat_tokens - sum(c + 2 for c in counts.counts))
        chosen = select_passages(base, list(counts.counts), budget)
        for _ in range(len(chosen) + 1):
            included = [passages[i] for i in chosen]
            messages = template.messages(question, [template.format_passage(n + 1, p) for n, p in enumerate(included)])
            with tracing.client_call("GeneratorService/CountTokens", generator=node.address) as metadata:
                total = (await node.stub.CountTokens(generator_pb2.CountTokensRequest(chat=_chat(messages)),
                                                     timeout=timeout, metadata=metadata)).chat_tokens
            if total <= budget:
                return Prompt(messages, [p.id for p in included], total)
            if not chosen:
                break
            chosen = chosen[:-1]
        raise InvalidArgument(f"question: too long for the generator's context of {info.max_context_length} tokens")

    async def generate(self, question: str, passages: list[Passage], sampling: common_pb2.SamplingParams,
                       template: PromptTemplate, timeout: float, request_id: str = ""
                       ) -> AsyncGenerator[tuple[GeneratorNode, Prompt | None, generator_pb2.GenerateEvent | None]]:
        """Yield (node, prompt, None) once a node is chosen, then (node, None, event) per event.

        A node that fails before its first event is skipped for the next; once an event was yielded,
        errors propagate (a partial answer is never silently restarted elsewhere)."""
        if not self.nodes:
            raise Unavailable("no generator nodes configured")
        deadline = time.monotonic() + timeout
        errors: list[str] = []
        candidates = self.ordered()
        if not candidates:
            raise Unavailable(f"no generator node is SERVING ({len(self.nodes)} configured)")
        for node in candidates:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            node.outstanding += 1
            started = False
            try:
                prompt = await self.build_prompt(node, question, passages, sampling.max_tokens, template, remaining)
                request = generator_pb2.GenerateRequest(request_id=request_id, sampling=sampling)
                if prompt.token_ids is not None:
                    request.token_ids.ids.extend(prompt.token_ids)
                else:
                    request.chat.CopyFrom(_chat(prompt.messages))
                span = tracing.start_span("generate", {"ragcluster.generator": node.address})
                try:
                    # the client span (child of ``generate``) lasts as long as the stream
                    with tracing.client_call("GeneratorService/Generate", parent=span,
                                             generator=node.address) as metadata:
                        call = node.stub.Generate(request, timeout=deadline - time.monotonic(), metadata=metadata)
                        try:
                            async for event in call:
                                if not started:
                                    started = True
                                    span.add_event("first_token")
                                    yield node, prompt, None
                                yield node, None, event
                        finally:
                            call.cancel()  # no-op when finished; aborts the engine request when we stop early
                finally:
                    span.end()
                return
            except grpc.aio.AioRpcError as exc:
                if started or exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED):
                    if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                        raise InvalidArgument(exc.details() or "") from exc
                    if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:  # the generation outlived its budget
                        raise DeadlineExceeded(f"generation on {node.address} did not finish in time") from exc
                    raise
                logger.warning("generator %s: %s before the first token; ejected for %.0fs, trying another",
                               node.address, exc.code().name, self.eject_seconds)
                node.info = None
                metrics.GENERATOR_FAILOVERS.labels(exc.code().name).inc()
                if exc.code() == grpc.StatusCode.UNAVAILABLE:
                    node.eject(self.eject_seconds)
                errors.append(f"{node.address}: {exc.code().name}")
            finally:
                node.outstanding -= 1
        raise Unavailable("no generator node could serve the request: " + "; ".join(errors or ["deadline passed"]))

    async def close(self) -> None:
        if self._refresh_task is not None:
            self._refresh_task.cancel()
        for task in [*self._counter_tasks.values(), *self._warming]:
            task.cancel()
        await self._watchers.stop()
        for node in self.nodes:
            await node.channel.close()


def _chat(messages: list[dict[str, str]]) -> generator_pb2.ChatMessages:
    return generator_pb2.ChatMessages(
        messages=[generator_pb2.ChatMessage(role=m["role"], content=m["content"]) for m in messages]
    )
