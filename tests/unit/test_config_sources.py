import argparse
import json
from dataclasses import dataclass

import pytest

from ragcluster.config import add_config_arguments, config_from_args, option
from ragcluster.documents import Document
from ragcluster.errors import InvalidArgument
from ragcluster.tools.sources import read_jsonl
from router.config import parse_shards


@dataclass
class _Cfg:
    port: int = option(5, "a port")
    name: str = option("x", "a name")
    flag: bool = option(False, "a flag")
    items: list[str] = option([], "items")


def _parse(argv, env):
    p = argparse.ArgumentParser()
    add_config_arguments(p, _Cfg, env=env)
    return config_from_args(_Cfg, p.parse_args(argv))


def test_flags_env_and_defaults():
    assert _parse([], {}) == _Cfg(5, "x", False, [])
    env = {"RAGCLUSTER_PORT": "7", "RAGCLUSTER_FLAG": "true", "RAGCLUSTER_ITEMS": "a,b"}
    assert _parse([], env) == _Cfg(7, "x", True, ["a", "b"])
    # a flag beats the environment
    assert _parse(["--port", "9", "--no-flag", "--items", "c"], env) == _Cfg(9, "x", False, ["c"])


def test_help_names_env_vars():
    p = argparse.ArgumentParser()
    add_config_arguments(p, _Cfg, env={})
    assert "RAGCLUSTER_PORT" in p.format_help()


def test_parse_shards():
    assert parse_shards(["0=a:1,b:2", "1=c:3"]) == {0: ["a:1", "b:2"], 1: ["c:3"]}
    assert parse_shards(["0=a:1;1=c:3"]) == {0: ["a:1"], 1: ["c:3"]}
    with pytest.raises(InvalidArgument, match=r"numbered 0\.\.n-1"):
        parse_shards(["1=a:1"])
    with pytest.raises(InvalidArgument, match="N=host:port"):
        parse_shards(["a:1"])


def test_jsonl_reports_bad_lines_with_file_and_line(tmp_path):
    f = tmp_path / "docs.jsonl"
    lines = [
        json.dumps({"id": "a", "text": "ok", "metadata": {"n": 1, "s": "x"}}),
        "",
        "{not json",
        json.dumps({"id": "", "text": "empty id"}),
        json.dumps({"id": "b"}),
        json.dumps({"id": "c", "text": "t", "metadata": {"bad": [1]}}),
        json.dumps(["list"]),
        json.dumps({"id": "d", "text": "fine", "title": "T"}),
    ]
    f.write_text("\n".join(lines) + "\n")
    records = list(read_jsonl([str(f)]))
    good = [r.document for r in records if r.document]
    bad = [(r.line, r.error) for r in records if r.error]
    assert [d.id for d in good] == ["a", "d"]
    assert good[1] == Document("d", "fine", "T", {})
    assert [line for line, _ in bad] == [3, 4, 5, 6, 7]
    assert "invalid JSON" in bad[0][1] and "id" in bad[1][1] and "'text'" in bad[2][1]
    assert "metadata['bad']" in bad[3][1] and "JSON object" in bad[4][1]
    assert records[1].where == f"{f}:3"
    assert next(iter(read_jsonl([str(tmp_path / "missing.jsonl")]))).error == "no such file"


def test_retrieval_mode_env_does_not_leak_into_loadtest(monkeypatch, capsys):
    """RAGCLUSTER_MODE is the retrieval mode of search/ask/eval; loadtest's search|ask is --workload
    (RAGCLUSTER_WORKLOAD), and its deprecated --mode alias is a flag only."""
    from ragcluster.tools.cli import COMMANDS, build_parser

    def opts(argv: list[str]):
        ns = build_parser().parse_args(argv)
        return config_from_args(COMMANDS[ns.command].options, ns)

    monkeypatch.setenv("RAGCLUSTER_MODE", "hybrid")
    assert opts(["search", "q"]).mode == "hybrid" and opts(["ask", "q"]).mode == "hybrid"
    load = opts(["loadtest"])
    assert (load.workload, load.mode, load.retrieval) == ("search", "", "")
    monkeypatch.setenv("RAGCLUSTER_WORKLOAD", "ask")
    assert opts(["loadtest"]).workload == "ask"
    assert opts(["loadtest", "--workload", "search"]).workload == "search"
    assert opts(["loadtest", "--mode", "ask"]).mode == "ask"  # the deprecated alias still parses
    with pytest.raises(SystemExit):
        build_parser().parse_args(["loadtest", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert "[env: RAGCLUSTER_WORKLOAD]" in shown and "RAGCLUSTER_MODE" not in shown
