"""Ask through the router vs Generate directly on the generator node: 8 concurrent requests.

Starts a local cluster (1 shard, 1 generator with --model), ingests the sample corpus, then for the same
questions measures (a) the router's Ask (embed + fan-out + prompt budgeting + generation, streamed back
through the router) and (b) Generate sent straight to the node with the same passages in the same
template. Reports time-to-first-token overhead (ms) and aggregate tokens/s ratio.

    .venv/bin/python bench/generation_overhead.py --model tiny|smollm2 [--concurrency 8] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

QUESTIONS = ["What is FAISS?", "How do honeybees communicate?", "What does the router do?", "What is jazz?",
             "How is sourdough bread leavened?", "When did the Apollo 11 mission land?", "What is inflation?",
             "What are tardigrades?"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import grpc

    from ragcluster.client import RouterClient
    from ragcluster.corpus import sample_corpus_path
    from ragcluster.tools.cluster import ClusterSpec, LocalCluster
    from ragcluster.tools.sources import read_jsonl
    from ragcluster.types import AnswerDelta, AskComplete
    from ragcluster.v1 import common_pb2, generator_pb2, generator_pb2_grpc
    from router.prompt import Passage, PromptTemplate

    template = PromptTemplate()
    questions = (QUESTIONS * ((args.concurrency // len(QUESTIONS)) + 1))[: args.concurrency]
    with tempfile.TemporaryDirectory() as tmp:
        spec = ClusterSpec(data_dir=tmp, shards=1, generators=1, model=args.model, port=0, insecure=True)
        with LocalCluster(spec) as cluster:
            cluster.start(timeout=900)
            generator = next(m.grpc for m in cluster.members if m.role == "generator")
            router = RouterClient(cluster.router_address, timeout=300)
            router.ingest([r.document for r in read_jsonl([str(sample_corpus_path())]) if r.document])
            # the passages the router would use, for the direct requests
            prompts = {}
            for q in set(questions):
                hits = router.search(q, k=5).hits
                passages = [Passage(h.id, h.text, h.title, h.score) for h in hits]
                prompts[q] = template.messages(q, [template.format_passage(i + 1, p) for i, p in enumerate(passages)])
            channel = grpc.insecure_channel(generator)
            gen = generator_pb2_grpc.GeneratorServiceStub(channel)

            def direct(q):
                start = time.perf_counter()
                ttft, tokens = None, 0
                request = generator_pb2.GenerateRequest(
                    chat=generator_pb2.ChatMessages(messages=[generator_pb2.ChatMessage(**m) for m in prompts[q]]),
                    sampling=common_pb2.SamplingParams(max_tokens=args.max_tokens, temperature=0.0))
                for event in gen.Generate(request, timeout=300):
                    if event.WhichOneof("event") == "delta" and ttft is None:
                        ttft = time.perf_counter() - start
                    elif event.WhichOneof("event") == "complete":
                        tokens = event.complete.completion_tokens
                return ttft or 0.0, tokens

            def through_router(q):
                start = time.perf_counter()
                ttft, tokens = None, 0
                for event in router.ask_events(q, k=5, max_tokens=args.max_tokens, temperature=0.0):
                    if isinstance(event, AnswerDelta) and ttft is None:
                        ttft = time.perf_counter() - start
                    elif isinstance(event, AskComplete):
                        tokens = event.completion_tokens
                return ttft or 0.0, tokens

            results = {}
            with ThreadPoolExecutor(args.concurrency) as pool:
                list(pool.map(direct, questions))  # warm-up
                list(pool.map(through_router, questions))
                for name, fn in (("direct", direct), ("router", through_router)):
                    ttfts, rates = [], []
                    for _ in range(args.rounds):
                        start = time.perf_counter()
                        out = list(pool.map(fn, questions))
                        wall = time.perf_counter() - start
                        ttfts += [t for t, _ in out]
                        rates.append(sum(n for _, n in out) / wall)
                    results[name] = {"ttft_p50_ms": statistics.median(ttfts) * 1000,
                                     "tokens_per_second": statistics.median(rates)}
            channel.close()
            router.close()
    results["model"] = args.model
    results["concurrency"] = args.concurrency
    results["ttft_overhead_ms"] = results["router"]["ttft_p50_ms"] - results["direct"]["ttft_p50_ms"]
    results["tokens_per_second_ratio"] = results["router"]["tokens_per_second"] / results["direct"]["tokens_per_second"]
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"{args.model}, {args.concurrency} concurrent, max_tokens {args.max_tokens}, {args.rounds} rounds")
    for name in ("direct", "router"):
        r = results[name]
        print(f"  {name:<7} TTFT p50 {r['ttft_p50_ms']:8.1f} ms   {r['tokens_per_second']:8.1f} tokens/s")
    print(f"  router overhead: TTFT +{results['ttft_overhead_ms']:.1f} ms, tokens/s ratio "
          f"{results['tokens_per_second_ratio']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
