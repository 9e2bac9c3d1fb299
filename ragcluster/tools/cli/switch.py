"""`ragcluster switch`: make another collection the active one, atomically."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass

from ragcluster.config import option
from ragcluster.tools.cli.common import ConnectOptions, connect


@dataclass
class SwitchOptions(ConnectOptions):
    force: bool = option(False, "switch even to a collection with fewer documents than the router's "
                                "--switch-min-documents (e.g. on purpose to an empty one)")
    json: bool = option(False, "print JSON: {previous, active, documents, embedding_model}")


def cmd_switch(opts: SwitchOptions, ns: argparse.Namespace) -> int:
    with connect(opts) as client:
        result = client.switch(ns.name, force=opts.force)
    if opts.json:
        from ragcluster.convert import to_json

        print(json.dumps(to_json(result)))
    else:
        print(f"active collection: {result.previous} -> {result.active} ({result.documents} documents, "
              f"{result.embedding_model})")
    return 0
