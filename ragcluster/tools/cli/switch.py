"""`ragcluster switch`: make another collection the active one, atomically."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass

from ragcluster.config import option
from ragcluster.tools.cli.common import DEFAULT_ROUTER


@dataclass
class SwitchOptions:
    router: str = option(DEFAULT_ROUTER, "router address host:port")
    json: bool = option(False, "print JSON: {previous, active, documents, embedding_model}")


def cmd_switch(opts: SwitchOptions, ns: argparse.Namespace) -> int:
    from ragcluster.client import RouterClient

    with RouterClient(opts.router) as client:
        result = client.switch(ns.name)
    if opts.json:
        print(json.dumps(result))
    else:
        print(f"active collection: {result['previous']} -> {result['active']} ({result['documents']} documents, "
              f"{result['embedding_model']})")
    return 0
