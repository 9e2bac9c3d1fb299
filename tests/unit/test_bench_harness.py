"""The figures and report helpers of bench/harness.py (pure logic: no servers)."""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import harness  # bench/ is not a package: the scripts import it from their own folder, as here


def test_percentiles_ms_interpolate_like_numpy_and_loadtest() -> None:
    samples = [0.001 * i for i in range(1, 101)]  # 1..100 ms
    out = harness.percentiles_ms(samples, (50, 90, 99), mean=True)
    assert out == pytest.approx({"p50_ms": 50.5, "p90_ms": 90.1, "p99_ms": 99.01, "mean_ms": 50.5})
    assert list(out) == ["p50_ms", "p90_ms", "p99_ms", "mean_ms"]


def test_percentiles_ms_of_no_samples_are_zero() -> None:
    assert harness.percentiles_ms([]) == {"p50_ms": 0.0, "p99_ms": 0.0}


def test_spread_keeps_rounds_in_order() -> None:
    assert harness.spread([3.0, 1.0, 2.0, 10.0]) == {"median": 2.5, "min": 1.0, "max": 10.0,
                                                     "runs": [3.0, 1.0, 2.0, 10.0]}
    with pytest.raises(ValueError):
        harness.spread([])


def test_timed_times_every_item_without_a_budget() -> None:
    seen: list[int] = []
    out = harness.timed(seen.append, range(5))
    assert seen == [0, 1, 2, 3, 4] and len(out) == 5 and all(t >= 0 for t in out)


def test_timed_stops_after_its_budget_but_takes_min_samples() -> None:
    calls: list[int] = []
    out = harness.timed(lambda i: calls.append(i), range(1000), seconds=0.0, min_samples=7)
    assert len(out) == len(calls) == 7

    def slow(_: int) -> None:
        time.sleep(0.02)

    assert len(harness.timed(slow, range(1000), seconds=0.05, min_samples=1)) < 50


def test_thread_loop_spreads_calls_over_clients_and_stops() -> None:
    calls: list[int] = []
    lock = threading.Lock()

    def call(i: int) -> None:
        with lock:
            calls.append(i)

    latencies, wall = harness.thread_loop(call, clients=3, seconds=5.0, max_calls=30)
    assert sorted(calls) == list(range(30)) and len(latencies) == 30  # bounded by max_calls, each call once
    assert wall < 5.0
    latencies, wall = harness.thread_loop(lambda i: time.sleep(0.01), clients=2, seconds=0.1)
    assert 0 < len(latencies) < 100 and wall >= 0.1


def test_table_aligns_titles_with_their_columns() -> None:
    table = harness.Table([("engine", "<8"), ("p50 ms", ">8.2f"), ("count", ">6")])
    assert table.header() == "engine     p50 ms  count"
    assert table.row("ours", 1.234, 12) == "ours         1.23     12"
    assert len(table.header()) == len(table.row("ours", 1.234, 12))
    assert harness.Table([("a", ">4"), ("b", ">4")], sep="").header() == "   a   b"
    with pytest.raises(ValueError):
        table.row("ours")


def test_report_prints_json_or_renders(capsys: pytest.CaptureFixture[str]) -> None:
    results = {"qps": 1.5, "runs": [1, 2]}
    assert harness.report(argparse.Namespace(json=True), results, lambda: print("table")) == 0
    assert json.loads(capsys.readouterr().out) == results
    assert harness.report(argparse.Namespace(json=False), results, lambda: print("table")) == 0
    assert capsys.readouterr().out == "table\n"


def test_load_average_reads_three_figures() -> None:
    figures = harness.load_average().split()
    assert len(figures) == 3 and all(float(f) >= 0 for f in figures)


def test_unit_vectors_have_length_one() -> None:
    import numpy as np

    x = harness.unit_vectors(5, 8, np.random.default_rng(0))
    assert x.shape == (5, 8) and x.dtype == np.float32
    assert np.allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-6)


def test_random_shard_holds_the_vectors_and_texts(tmp_path: Path) -> None:
    import numpy as np

    shard = harness.random_shard(tmp_path / "shard", 5000, 8, "Flat", np.random.default_rng(0),
                                 text=lambda i: f"document {i}")
    try:
        assert shard.index.ntotal == 5000  # two batches (4096 + 904)
        assert [d.text for d in shard.fetch(["v0", "v4999"])] == ["document 0", "document 4999"]
    finally:
        shard.close(checkpoint=False)
