"""Ask through the router vs Generate sent straight to the generator node, at 1 and 8 streams.

Starts a local cluster (1 shard, 1 generator with --model, no TLS), ingests the sample corpus, then for the
same questions measures (a) the router's Ask (embed + fan-out + prompt budgeting + generation, streamed back
through the router) and (b) Generate sent straight to the node with the same passages in the same template
(the baseline, in the same run). Rounds alternate direct / Ask so that the load of a shared machine hits
both alike. Reports per concurrency:

- time-to-first-token p50 direct and through Ask, the overhead (Ask - direct), the router's own
  embed + retrieve time for those requests (AskComplete timings) and the overhead beyond it;
- tokens/s: completion tokens over the round's wall time (``round``: includes the time to first token),
  and the streaming rate (``stream``: tokens after the first over the time from first to last delta, mean
  per stream times the concurrency) — the per-token cost of relaying through the router;
- the spread (min-max of the per-round figures) of every ratio.

    .venv/bin/python bench/generation_overhead.py --model tiny|smollm2 [--concurrency 1 8] [--rounds 5] [--json]
    .venv/bin/python bench/generation_overhead.py --py-spy router.txt  # + profile the router under 8 Ask streams

``--py-spy FILE`` records the router with py-spy (``pip install py-spy``; as root) for ``--py-spy-seconds``
while Ask runs at the highest concurrency, and writes the collapsed stacks to FILE and a summary (share of
samples per frame, inclusive) to stdout / the JSON.
"""

from __future__ import annotations

import collections
import os
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from argparse import Namespace
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from harness import bench_parser, log, loopback_cluster, report, spread

QUESTIONS = ["What is FAISS?", "How do honeybees communicate?", "What does the router do?", "What is jazz?",
             "How is sourdough bread leavened?", "When did the Apollo 11 mission land?", "What is inflation?",
             "What are tardigrades?"]


class Stream:
    """What one streamed request measured (seconds from its start)."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.first = 0.0
        self.last = 0.0
        self.tokens = 0
        self.embed_retrieve = 0.0

    def delta(self) -> None:
        now = time.perf_counter() - self.start
        if not self.first:
            self.first = now
        self.last = now

    def read(self, call: Callable[[], Iterable[Any]], ask: bool = False) -> Stream:
        """Start the clock, make the streaming ``call`` (Generate, or Ask with ``ask``) and read its events:
        deltas time the tokens, the final one counts them (an Ask's also carries the router's embed +
        retrieve time)."""
        self.start = time.perf_counter()
        for event in call():
            if event.HasField("delta"):
                self.delta()
            elif event.HasField("complete"):
                self.tokens = event.complete.completion_tokens
                if ask:
                    self.embed_retrieve = event.complete.timings.embed_seconds + \
                        event.complete.timings.retrieve_seconds
        return self


def summarise(rounds: list[dict]) -> dict:
    ttfts = [s.first for r in rounds for s in r["streams"]]
    out = {"ttft_p50_ms": statistics.median(ttfts) * 1000,
           "round_tokens_per_second": statistics.median(r["round_rate"] for r in rounds),
           "stream_tokens_per_second": statistics.median(r["stream_rate"] for r in rounds)}
    retrieval = [s.embed_retrieve for r in rounds for s in r["streams"] if s.embed_retrieve]
    if retrieval:
        out["embed_retrieve_p50_ms"] = statistics.median(retrieval) * 1000
    return out


def round_figures(streams: list[Stream], wall: float, concurrency: int) -> dict:
    # streaming rate: tokens after the first over first..last delta, per stream, times the streams at once
    rates = [(s.tokens - 1) / (s.last - s.first) for s in streams if s.tokens > 1 and s.last > s.first]
    stream_rate = statistics.fmean(rates) * concurrency if rates else 0.0
    return {"streams": streams, "round_rate": sum(s.tokens for s in streams) / wall, "stream_rate": stream_rate}


def profile_summary(collapsed: str, top: int = 25) -> list[tuple[str, float]]:
    """Inclusive share of samples per frame (function + file) from py-spy's collapsed stacks."""
    totals: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        samples += n
        seen = set()
        for frame in stack.split(";"):
            match = re.fullmatch(r"(.*) \((?:.*/)?([^/]+/[^/]+?)(?::\d+)?\)", frame)
            name = f"{match[1]} ({match[2]})" if match else frame
            if name not in seen:
                seen.add(name)
                totals[name] += n
    return [(name, n / max(samples, 1)) for name, n in totals.most_common(top)]


def main() -> int:
    parser = bench_parser(__doc__, rounds=3)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8], help="streams at once (one or more)")
    parser.add_argument("--requests", type=int, default=8, help="requests per round (at least the concurrency)")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--py-spy", default="", help="record the router with py-spy into this file (collapsed)")
    parser.add_argument("--py-spy-seconds", type=float, default=30.0)
    parser.add_argument("--profile-only", action="store_true", help="with --py-spy: skip the measurements")
    parser.add_argument("--router-arg", action="append", default=[], help="extra router flag (repeatable)")
    parser.add_argument("--generator-arg", action="append", default=[], help="extra generator flag (repeatable)")
    args = parser.parse_args()

    import grpc

    from ragcluster.convert import document_to_pb
    from ragcluster.corpus import sample_corpus_path
    from ragcluster.tools.sources import read_jsonl
    from ragcluster.v1 import common_pb2, generator_pb2, generator_pb2_grpc, router_pb2, router_pb2_grpc
    from router.prompt import Passage, PromptTemplate

    template = PromptTemplate()
    results: dict = {"model": args.model, "max_tokens": args.max_tokens, "rounds": args.rounds,
                     "requests_per_round": args.requests, "load_average_before": os.getloadavg(), "by_concurrency": {}}
    log("starting the cluster")
    with loopback_cluster(shards=1, generators=1, model=args.model, timeout=900,
                          router_args=[a for flag in args.router_arg for a in flag.split()],
                          generator_args=[a for flag in args.generator_arg for a in flag.split()]) as cluster:
        generator = next(m.grpc for m in cluster.members if m.role == "generator")
        router_pid = next(m.pid for m in cluster.members if m.role == "router")
        router_channel = grpc.insecure_channel(cluster.router_address)
        router = router_pb2_grpc.RouterServiceStub(router_channel)
        docs = [document_to_pb(r.document) for r in read_jsonl([str(sample_corpus_path())]) if r.document]
        list(router.Ingest(iter([router_pb2.IngestRequest(documents=docs[i:i + 64])
                                 for i in range(0, len(docs), 64)]), timeout=300))
        # the passages the router would use, for the direct requests
        prompts = {}
        for q in QUESTIONS:
            hits = router.Search(router_pb2.SearchRequest(text=q, k=5), timeout=60).hits
            passages = [Passage(h.document.id, h.document.text, h.document.title, h.score) for h in hits]
            prompts[q] = template.messages(q, [template.format_passage(i + 1, p) for i, p in enumerate(passages)])
        gen_channel = grpc.insecure_channel(generator)
        gen = generator_pb2_grpc.GeneratorServiceStub(gen_channel)
        # sampled with a fixed seed: the random-weight tiny model then runs to max_tokens (greedy decoding
        # often ends it after a few tokens), and both paths generate the same text from the same prompt
        sampling = common_pb2.SamplingParams(max_tokens=args.max_tokens, temperature=1.0, seed=7)

        def direct(q: str) -> Stream:
            request = generator_pb2.GenerateRequest(
                chat=generator_pb2.ChatMessages(messages=[generator_pb2.ChatMessage(**m) for m in prompts[q]]),
                sampling=sampling)
            return Stream().read(lambda: gen.Generate(request, timeout=300))

        def through_router(q: str) -> Stream:
            request = router_pb2.AskRequest(question=q, k=5, sampling=sampling)
            return Stream().read(lambda: router.Ask(request, timeout=300), ask=True)

        paths = {"direct": direct, "ask": through_router}

        def run_round(fn, pool: ThreadPoolExecutor, n: int) -> dict:
            questions = (QUESTIONS * (n // len(QUESTIONS) + 1))[:n]
            start = time.perf_counter()
            streams = list(pool.map(fn, questions))
            return round_figures(streams, time.perf_counter() - start, pool._max_workers)

        for concurrency in [] if args.profile_only else args.concurrency:
            log(f"{concurrency} stream(s): warm-up, then {args.rounds} rounds per path")
            with ThreadPoolExecutor(concurrency) as pool:
                for fn in paths.values():  # warm-up (first Info, tokenizer, caches)
                    run_round(fn, pool, max(concurrency, 8))
                rounds: dict[str, list[dict]] = {name: [] for name in paths}
                for _ in range(args.rounds):
                    for name, fn in paths.items():
                        rounds[name].append(run_round(fn, pool, max(args.requests, concurrency)))
                        log(f"  {name}: TTFT p50 {summarise(rounds[name][-1:])['ttft_p50_ms']:.1f} ms")
            d, a = (summarise(rounds[name]) for name in paths)
            paired = list(zip(rounds["direct"], rounds["ask"]))  # the rounds of the two paths, back to back
            overheads = spread([summarise([ra])["ttft_p50_ms"] - summarise([rd])["ttft_p50_ms"] for rd, ra in paired])
            round_ratios = spread([ra["round_rate"] / rd["round_rate"] for rd, ra in paired])
            stream_ratios = spread([ra["stream_rate"] / rd["stream_rate"] for rd, ra in paired])
            overhead = a["ttft_p50_ms"] - d["ttft_p50_ms"]
            results["by_concurrency"][str(concurrency)] = {
                "direct": d, "ask": a,
                "ttft_overhead_ms": overhead, "ttft_overhead_spread_ms": [overheads["min"], overheads["max"]],
                "embed_retrieve_ms": a.get("embed_retrieve_p50_ms", 0.0),
                "overhead_beyond_retrieval_ms": overhead - a.get("embed_retrieve_p50_ms", 0.0),
                "round_tokens_per_second_ratio": round_ratios["median"],
                "round_tokens_per_second_ratio_spread": [round_ratios["min"], round_ratios["max"]],
                "stream_tokens_per_second_ratio": stream_ratios["median"],
                "stream_tokens_per_second_ratio_spread": [stream_ratios["min"], stream_ratios["max"]],
            }

        if args.py_spy:
            concurrency = max(args.concurrency)
            log(f"py-spy on the router (pid {router_pid}): {args.py_spy_seconds:.0f} s, {concurrency} Ask streams")
            py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
            stop = threading.Event()

            def load() -> None:
                with ThreadPoolExecutor(concurrency) as pool:
                    for _ in range(10_000):  # bounded; stopped when the recording ends
                        if stop.is_set():
                            return
                        run_round(through_router, pool, concurrency)

            loader = threading.Thread(target=load)
            loader.start()
            try:
                subprocess.run([py_spy, "record", "-p", str(router_pid), "-d", str(int(args.py_spy_seconds)),
                                "-r", "200", "-f", "raw", "-o", args.py_spy, "--nonblocking"],
                               check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               timeout=args.py_spy_seconds + 120)
            finally:
                stop.set()
                loader.join(timeout=600)
            results["profile"] = profile_summary(Path(args.py_spy).read_text())
        gen_channel.close()
        router_channel.close()
    results["load_average_after"] = os.getloadavg()
    return report(args, results, lambda: render(args, results))


def render(args: Namespace, results: dict) -> None:
    print(f"{args.model}, max_tokens {args.max_tokens}, {args.rounds} rounds x {args.requests} requests per path; "
          f"load average {results['load_average_before'][0]:.2f} -> {results['load_average_after'][0]:.2f}")
    for concurrency, r in results["by_concurrency"].items():
        print(f"{concurrency} stream(s):")
        for name in ("direct", "ask"):
            x = r[name]
            print(f"  {name:<7} TTFT p50 {x['ttft_p50_ms']:8.1f} ms   {x['round_tokens_per_second']:8.1f} tokens/s "
                  f"(round)   {x['stream_tokens_per_second']:8.1f} tokens/s (stream)")
        lo, hi = r["ttft_overhead_spread_ms"]
        print(f"  Ask TTFT overhead {r['ttft_overhead_ms']:+.1f} ms (rounds {lo:+.1f}..{hi:+.1f}); embed + retrieve "
              f"{r['embed_retrieve_ms']:.1f} ms; beyond retrieval {r['overhead_beyond_retrieval_ms']:+.1f} ms")
        for kind in ("round", "stream"):
            lo, hi = r[f"{kind}_tokens_per_second_ratio_spread"]
            print(f"  tokens/s ratio ({kind}) {r[f'{kind}_tokens_per_second_ratio']:.2f} ({lo:.2f}..{hi:.2f})")
    if "profile" in results:
        print(f"router profile under {max(args.concurrency)} Ask streams (inclusive share of samples):")
        for name, share in results["profile"]:
            print(f"  {share * 100:5.1f}%  {name}")


if __name__ == "__main__":
    sys.exit(main())
