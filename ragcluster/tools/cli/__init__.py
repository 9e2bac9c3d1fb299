"""ragcluster — run and use a distributed RAG cluster.

Every flag can also be set by an environment variable RAGCLUSTER_<FLAG> (shown in each --help).
"""

from __future__ import annotations

import argparse
import sys

import grpc

from ragcluster.config import add_config_arguments, config_from_args
from ragcluster.tools.cli import (
    ask,
    evaluate,
    ingest,
    loadtest,
    search,
    status,
    switch,
    up,
)
from ragcluster.tools.cli.common import CliError, fail

COMMANDS = {
    "up": (up.UpOptions, up.cmd_up, "start a local cluster (shards, generators, router) until Ctrl-C", []),
    "ingest": (ingest.IngestOptions, ingest.cmd_ingest,
               "ingest JSONL, CSV, a directory of text files or SQL rows through the router (resumable, optionally "
               "chunked)", ["files"]),
    "search": (search.SearchOptions, search.cmd_search, "search by text; exact global top-k over all shards", ["text"]),
    "ask": (ask.AskOptions, ask.cmd_ask, "ask a question; the answer streams with its citations", ["question"]),
    "status": (status.StatusOptions, status.cmd_status, "shards, replicas, health, document counts, generators", []),
    "switch": (switch.SwitchOptions, switch.cmd_switch,
               "make another collection (e.g. re-indexed with a new embedding model) the one searches and asks use, "
               "atomically", ["name"]),
    "eval": (evaluate.EvalOptions, evaluate.cmd_eval,
             "retrieval metrics (recall, precision, nDCG, MRR, MAP @k) on BEIR queries/qrels; generation metrics (EM, "
             "F1, BLEU) on a QA set", []),
    "loadtest": (loadtest.LoadtestOptions, loadtest.cmd_loadtest,
                 "closed- or open-loop load; latency percentiles, TTFT, errors, plots", []),
}

POSITIONALS = {
    "files": dict(nargs="*", metavar="SOURCE", help='JSONL files ({"id", "text", "title"?, "metadata"?} per line), '
                                                    'CSV/TSV files, or directories of .txt/.md/.html files'),
    "text": dict(help="query text"),
    "question": dict(help="the question"),
    "name": dict(help="the collection to switch to"),
}


POSITIONALS = {
    "files": dict(nargs="*", metavar="SOURCE", help='JSONL files ({"id", "text", "title"?, "metadata"?} per line), '
                                                    'CSV/TSV files, or directories of .txt/.md/.html files'),
    "text": dict(help="query text"),
    "question": dict(help="the question"),
    "name": dict(help="the collection to switch to"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ragcluster", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (options, _, help_text, positionals) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        for pos in positionals:
            p.add_argument(pos, **POSITIONALS[pos])
        add_config_arguments(p, options)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    options, fn, _, _ = COMMANDS[ns.command]
    opts = config_from_args(options, ns)
    try:
        return fn(opts, ns)
    except CliError as exc:
        return fail(str(exc), exc.code)
    except grpc.RpcError as exc:
        return fail(f"{exc.code().name}: {exc.details()}")
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
