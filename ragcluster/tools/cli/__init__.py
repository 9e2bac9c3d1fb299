"""ragcluster — run and use a distributed RAG cluster.

Every flag can also be set by an environment variable RAGCLUSTER_<FLAG> (shown in each --help).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

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

Opts = TypeVar("Opts")


@dataclass(frozen=True)
class Command(Generic[Opts]):
    """A subcommand: its options dataclass (flags), the function that runs it, help, positional arguments."""

    options: type[Opts]
    run: Callable[[Opts, argparse.Namespace], int]
    help: str
    positionals: tuple[str, ...] = ()


# the values differ in their options type; each Command ties its options class to the function that takes it
COMMANDS: dict[str, Command[Any]] = {
    "up": Command(up.UpOptions, up.cmd_up, "start a local cluster (shards, generators, router) until Ctrl-C"),
    "ingest": Command(ingest.IngestOptions, ingest.cmd_ingest,
                      "ingest JSONL, CSV, a directory of text files or SQL rows through the router (resumable, "
                      "optionally chunked)", ("files",)),
    "search": Command(search.SearchOptions, search.cmd_search,
                      "search by text; exact global top-k over all shards", ("text",)),
    "ask": Command(ask.AskOptions, ask.cmd_ask, "ask a question; the answer streams with its citations",
                   ("question",)),
    "status": Command(status.StatusOptions, status.cmd_status,
                      "shards, replicas, health, document counts, generators"),
    "switch": Command(switch.SwitchOptions, switch.cmd_switch,
                      "make another collection (e.g. re-indexed with a new embedding model) the one searches and "
                      "asks use, atomically", ("name",)),
    "eval": Command(evaluate.EvalOptions, evaluate.cmd_eval,
                    "retrieval metrics (recall, precision, nDCG, MRR, MAP @k) on BEIR queries/qrels; generation "
                    "metrics (EM, F1, BLEU) on a QA set"),
    "loadtest": Command(loadtest.LoadtestOptions, loadtest.cmd_loadtest,
                        "closed- or open-loop load; latency percentiles, TTFT, errors, plots"),
}


def _add_positional(parser: argparse.ArgumentParser, name: str) -> None:
    if name == "files":
        parser.add_argument("files", nargs="*", metavar="SOURCE",
                            help='JSONL files ({"id", "text", "title"?, "metadata"?} per line), CSV/TSV files, or '
                                 'directories of .txt/.md/.html files')
    else:
        parser.add_argument(name, help={"text": "query text", "question": "the question",
                                        "name": "the collection to switch to"}[name])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ragcluster", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command in COMMANDS.items():
        p = sub.add_parser(name, help=command.help, description=command.help)
        for pos in command.positionals:
            _add_positional(p, pos)
        add_config_arguments(p, command.options)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    command = COMMANDS[ns.command]
    opts = config_from_args(command.options, ns)
    try:
        return command.run(opts, ns)
    except CliError as exc:
        return fail(str(exc), exc.code)
    except grpc.RpcError as exc:
        return fail(f"{exc.code().name}: {exc.details()}")
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
