"""python -m tests.chaos.skewed_router --clock-skew-ms MS --clock-node N [router flags]: the real router
(``python -m router``'s main, in its own process) whose write clock reads a wall time off by MS milliseconds,
like a router on a host whose clock is wrong; the chaos run starts its routers this way (--clock-skew-ms)."""

from __future__ import annotations

import argparse
import functools
import sys
import time

import router.replicas
from router.__main__ import main
from router.versions import HybridClock


def skewed_time(skew: float) -> float:
    return time.time() + skew


def run(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--clock-skew-ms", type=float, required=True)
    parser.add_argument("--clock-node", type=int, required=True, help="the clock's node id (distinct per router)")
    args, rest = parser.parse_known_args(argv)
    # the process's write clock, shared by every shard group the router builds (router.replicas.default_clock)
    router.replicas._CLOCK = HybridClock(node=args.clock_node,
                                         wall=functools.partial(skewed_time, args.clock_skew_ms / 1000))
    return main(rest)


if __name__ == "__main__":
    sys.exit(run())
