"""make demo: start a local cluster (2 shards, router, 1 generator running SmolLM2-135M-Instruct), ingest
the bundled sample corpus, ask one question, print the streamed answer with its citations, stop.

    python -m ragcluster.tools.demo [--question Q] [--model smollm2] [--data-dir .demo]
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass

from ragcluster.config import add_config_arguments, config_from_args, option

DEFAULT_QUESTION = "How does ragcluster decide which shard stores a document?"


@dataclass
class DemoOptions:
    question: str = option(DEFAULT_QUESTION, "the question to ask")
    model: str = option("smollm2", "generator model: smollm2, tiny or a local HF folder")
    data_dir: str = option(".demo", "cluster data dir (reused on the next run)")
    max_tokens: int = option(120, "answer length in tokens")
    repetition_penalty: float = option(1.1, "discourages the small model from looping")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ragcluster.tools.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser, DemoOptions)
    opts = config_from_args(DemoOptions, parser.parse_args(argv))

    from rich.console import Console
    from tqdm import tqdm

    from ragcluster.client import RouterClient
    from ragcluster.corpus import sample_corpus_path
    from ragcluster.tools.cluster import ClusterSpec, LocalCluster
    from ragcluster.tools.sources import read_jsonl

    console = Console(highlight=False)
    console.print(f"[bold]ragcluster demo[/] — 2 shards, 1 router, 1 generator ({opts.model}); data in {opts.data_dir}")
    console.print("starting processes (the first run also builds the model folder)…")
    start = time.monotonic()
    spec = ClusterSpec(data_dir=opts.data_dir, shards=2, replicas=1, generators=1, model=opts.model, port=0)
    with LocalCluster(spec) as cluster:
        cluster.start(timeout=900, progress=lambda m: console.print(
            f"  [green]✓[/] {m.role}{'' if m.shard is None else f' {m.shard}'} at {m.grpc}"))
        console.print(f"cluster up in {time.monotonic() - start:.1f}s, router at [bold]{cluster.router_address}[/]")

        docs = [r.document for r in read_jsonl([str(sample_corpus_path())]) if r.document]
        with RouterClient(cluster.router_address, timeout=300, security=cluster.client_tls()) as client:
            bar = tqdm(total=len(docs), unit="doc", desc="ingest sample corpus")
            result = client.ingest(docs, batch_size=16, on_ack=bar.update)
            bar.close()
            status = client.status()
            console.print(f"{result.acknowledged} documents acknowledged (durable); shards hold "
                          + ", ".join(f"{s.documents}" for s in status.shards))
            console.print(f"\n[bold]Q:[/] {opts.question}\n[bold]A:[/] ", end="")
            answer = client.ask(opts.question, k=4, max_tokens=opts.max_tokens, temperature=0.0,
                                repetition_penalty=opts.repetition_penalty,
                                on_delta=lambda t: (sys.stdout.write(t), sys.stdout.flush()))
        print()
        hits = {h.id: h for h in answer.hits}
        console.print("\n[bold]Citations[/] (passages given to the model, by score)")
        for n, doc_id in enumerate(answer.citations, 1):
            h = hits[doc_id]
            console.print(f"  [{n}] {doc_id} — {h.title} (score {h.score:.3f}, shard {h.shard})")
        t = answer.timings
        console.print(f"[dim]first token after {t.time_to_first_token_seconds:.2f}s, answer in "
                      f"{t.total_seconds:.2f}s; {answer.completion_tokens} tokens from {answer.model}[/]")
        console.print("stopping the cluster…")
    console.print("done.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
