"""GeneratorService on a real vLLM engine (CPU, tiny model), served in process on an ephemeral port.
(AsyncLLM runs its engine core in a subprocess, as in production.)"""

from __future__ import annotations

import asyncio
import os

import grpc
import pytest

from ragcluster.v1 import common_pb2, generator_pb2, generator_pb2_grpc

pytestmark = pytest.mark.vllm


@pytest.fixture(scope="module")
async def node(tmp_path_factory):
    os.environ.setdefault("VLLM_CACHE_ROOT", str(tmp_path_factory.mktemp("vllm-cache")))
    from generator_node.__main__ import build_server, parse_args
    from generator_node.service import GeneratorServicer

    config, engine_args = parse_args([
        "--model", "tiny", "--enforce-eager", "--kv-cache-memory-bytes", str(64 << 20), "--max-model-len", "1024",
        "--port", "0", "--metrics-port", "-1", "--max-pending", "3",
    ])
    server = build_server(config, engine_args)
    await server.start()
    channel = grpc.aio.insecure_channel(server.address)
    stub = generator_pb2_grpc.GeneratorServiceStub(channel)
    engine = server.servicer(GeneratorServicer).engine
    ipc_dir = engine._ipc_dir
    assert ipc_dir and os.path.isdir(ipc_dir)  # vLLM's IPC sockets live in the node's private dir
    yield stub, engine
    await channel.close()
    await server.stop(grace=1)
    assert not os.path.exists(ipc_dir)  # and nothing is left behind in /tmp


def _chat(text="Tell me about bees.", **sampling):
    return generator_pb2.GenerateRequest(
        chat=generator_pb2.ChatMessages(messages=[generator_pb2.ChatMessage(role="user", content=text)]),
        sampling=common_pb2.SamplingParams(**sampling),
    )


async def _collect(stub, request):
    events = [e async for e in stub.Generate(request, timeout=60)]
    text = "".join(e.delta.text for e in events if e.WhichOneof("event") == "delta")
    return events, text


async def test_info_and_count_tokens(node):
    stub, engine = node
    info = await stub.Info(generator_pb2.GeneratorInfoRequest())
    assert info.model == "tiny" and info.max_context_length == 1024 and info.has_chat_template
    counts = await stub.CountTokens(generator_pb2.CountTokensRequest(
        texts=["", "hello world", "hello world " * 10],
        chat=generator_pb2.ChatMessages(messages=[generator_pb2.ChatMessage(role="user", content="hello world")])))
    assert counts.counts[0] == 0 and 0 < counts.counts[1] < counts.counts[2]
    # the chat template adds its role markers around the content
    assert counts.chat_tokens > counts.counts[1]
    assert counts.chat_tokens == len(engine.encode(engine.chat_prompt([{"role": "user", "content": "hello world"}])))


async def test_tokenizer_rpc_rebuilds_the_nodes_counting_and_token_ids_generate_alike(node):
    """A router counts prompt tokens with the node's tokenizer fetched once (Tokenizer RPC): the copy templates
    and counts exactly as the node does, and its token ids generate what the chat messages generate."""
    from ragcluster.tokens import TokenCounter, fingerprint

    stub, _ = node
    info = await stub.Info(generator_pb2.GeneratorInfoRequest())
    response = await stub.Tokenizer(generator_pb2.TokenizerRequest())
    files = dict(response.files)
    assert info.tokenizer_fingerprint == response.fingerprint == fingerprint(files)
    assert "tokenizer.json" in files
    counter = await asyncio.to_thread(TokenCounter.from_files, files)
    for chat in ([{"role": "user", "content": "hello world"}],
                 [{"role": "system", "content": "Cite [1]."}, {"role": "user", "content": "Passages:\n[1] Bees\n"
                                                                                        "dance. Ünïcode… ok?"}]):
        request = generator_pb2.ChatMessages(messages=[generator_pb2.ChatMessage(**m) for m in chat])
        texts = [m["content"] for m in chat]
        counted = await stub.CountTokens(generator_pb2.CountTokensRequest(texts=texts, chat=request))
        assert len(counter.encode(counter.chat_prompt(chat))) == counted.chat_tokens
        assert counter.count(texts) == list(counted.counts)
        ids = counter.encode(counter.chat_prompt(chat))
        by_chat = await _collect(stub, generator_pb2.GenerateRequest(
            chat=request, sampling=common_pb2.SamplingParams(max_tokens=8, temperature=0.0)))
        by_ids = await _collect(stub, generator_pb2.GenerateRequest(
            token_ids=generator_pb2.TokenIds(ids=ids), sampling=common_pb2.SamplingParams(max_tokens=8,
                                                                                          temperature=0.0)))
        assert by_ids[1] == by_chat[1] and by_ids[0][-1].complete.prompt_tokens == counted.chat_tokens


async def test_chat_template_is_applied(node):
    stub, engine = node
    request = _chat("What is a shard?", max_tokens=2)
    events, _ = await _collect(stub, request)
    counted = await stub.CountTokens(generator_pb2.CountTokensRequest(chat=request.chat))
    # the prompt the engine saw is the templated chat, role markers included
    assert events[-1].complete.prompt_tokens == counted.chat_tokens
    templated = engine.chat_prompt([{"role": "user", "content": "What is a shard?"}])
    assert templated.startswith("<|im_start|>user\nWhat is a shard?<|im_end|>") and templated.endswith(
        "<|im_start|>assistant\n")
    raw, _ = await _collect(stub, generator_pb2.GenerateRequest(prompt="What is a shard?",
                                                                sampling=common_pb2.SamplingParams(max_tokens=2)))
    assert raw[-1].complete.prompt_tokens < counted.chat_tokens  # a raw prompt is passed as is


async def test_stream_order_max_tokens_and_final_event(node):
    stub, _ = node
    events, text = await _collect(stub, _chat(max_tokens=12, temperature=0.0))
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[-1] == "complete" and set(kinds[:-1]) == {"delta"}
    done = events[-1].complete
    assert done.completion_tokens == 12 and done.finish_reason == "length"
    assert done.prompt_tokens > 0 and 0 < done.time_to_first_token_seconds <= done.total_seconds
    assert 0 <= done.queue_seconds < done.total_seconds
    assert text


async def test_stream_interval_sends_fewer_bigger_deltas_with_the_same_text(node):
    """The first token goes out at once, then a delta per ``stream_interval`` tokens; unset = the node's
    --default-stream-interval (4)."""
    stub, _ = node

    def deltas(events):
        return sum(e.WhichOneof("event") == "delta" for e in events)

    every, text = await _collect(stub, _chat(max_tokens=24, temperature=0.0, stream_interval=1))
    by_8, text_8 = await _collect(stub, _chat(max_tokens=24, temperature=0.0, stream_interval=8))
    default, text_default = await _collect(stub, _chat(max_tokens=24, temperature=0.0))
    assert text_8 == text_default == text and every[-1].complete.completion_tokens == 24
    assert deltas(every) > 12  # about one per token (a token that adds no text yet sends nothing)
    assert deltas(by_8) <= 1 + 3  # the first token, then 23 tokens in deltas of 8
    assert deltas(default) <= 1 + 6  # 23 tokens in deltas of 4
    assert deltas(by_8) < deltas(default) < deltas(every)


async def test_seed_reproducible_and_stop_strings(node):
    stub, _ = node
    _, a = await _collect(stub, _chat(max_tokens=20, temperature=1.0, seed=42))
    _, b = await _collect(stub, _chat(max_tokens=20, temperature=1.0, seed=42))
    assert a == b
    _, full = await _collect(stub, _chat(max_tokens=40, temperature=1.0, seed=7))
    # a 3-character stop string (no whitespace) from the second half of the seeded output
    half = len(full) // 2
    start = next(i for i in range(half, len(full) - 3) if not any(c.isspace() for c in full[i:i + 3]))
    stop = full[start:start + 3]
    events, stopped = await _collect(stub, _chat(max_tokens=40, temperature=1.0, seed=7, stop=[stop]))
    assert stop not in stopped and full.startswith(stopped) and len(stopped) < len(full)
    assert events[-1].complete.finish_reason == "stop"


async def test_cancel_mid_stream_aborts_in_engine(node):
    stub, engine = node
    call = stub.Generate(_chat(max_tokens=1000, temperature=0.0, stop=[]), timeout=60)
    received = 0
    async for _event in call:
        received += 1
        if received == 3:
            break
    call.cancel()
    assert received == 3
    for _ in range(100):  # bounded wait (≤ 1 s) for the abort to reach the engine
        if engine.unfinished_requests() == 0 and engine.active == 0:
            break
        await asyncio.sleep(0.01)
    assert engine.unfinished_requests() == 0 and engine.active == 0


async def test_deadline_expiry_aborts_in_engine(node):
    stub, engine = node
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _ in stub.Generate(_chat(max_tokens=1000, temperature=0.0), timeout=0.3):
            pass
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    for _ in range(100):
        if engine.unfinished_requests() == 0 and engine.active == 0:
            break
        await asyncio.sleep(0.01)
    assert engine.unfinished_requests() == 0 and engine.active == 0


async def test_admission_control_rejects_at_once_and_serves_the_rest(node):
    stub, engine = node

    async def one():
        try:
            events, _ = await _collect(stub, _chat(max_tokens=64, temperature=0.0))
            return events[-1].complete.finish_reason
        except grpc.aio.AioRpcError as exc:
            return exc.code()

    results = await asyncio.gather(*(one() for _ in range(8)))
    rejected = [r for r in results if r == grpc.StatusCode.RESOURCE_EXHAUSTED]
    served = [r for r in results if r == "length"]
    assert rejected and served and len(rejected) + len(served) == 8
    assert engine.active == 0
    events, _ = await _collect(stub, _chat(max_tokens=4))  # still serving
    assert events[-1].complete.completion_tokens == 4


@pytest.mark.parametrize("request_,field", [
    (_chat(max_tokens=0), "max_tokens"),
    (_chat(max_tokens=5000), "max_tokens"),
    (_chat(temperature=-1.0), "temperature"),
    (_chat(top_p=0.0), "top_p"),
    (_chat(top_k=0), "top_k"),
    (_chat(stream_interval=0), "stream_interval"),
    (_chat(stream_interval=257), "stream_interval"),
    (generator_pb2.GenerateRequest(prompt=""), "prompt"),
    (generator_pb2.GenerateRequest(), "input"),
    (generator_pb2.GenerateRequest(chat=generator_pb2.ChatMessages(
        messages=[generator_pb2.ChatMessage(role="robot", content="x")])), "role"),
    (generator_pb2.GenerateRequest(prompt="word " * 1100), "prompt"),
    (generator_pb2.GenerateRequest(token_ids=generator_pb2.TokenIds()), "token_ids"),
    (generator_pb2.GenerateRequest(token_ids=generator_pb2.TokenIds(ids=[5, 10**6])), "token_ids"),
    (generator_pb2.GenerateRequest(token_ids=generator_pb2.TokenIds(ids=[5] * 1100)), "prompt"),
])
async def test_bad_requests_are_invalid_argument(node, request_, field):
    stub, _ = node
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _collect(stub, request_)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in (err.value.details() or "")
