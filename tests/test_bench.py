"""`make bench` in miniature: every scenario runs and measures what it says it does.

A smoke run, not a timed test: it asserts no speed. It checks that the benchmark's three
Envoys and the mock start, that each scenario got the answers it is meant to measure (a
bench that measured refusals as if they were completions would print plausible numbers),
and that the paced stream really came paced through the mock.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import ROOT

SCENARIOS = ["buffered", "buffered-uncached", "buffered-no-policy", "streamed", "streamed-paced", "denied", "models"]


def test_every_bench_scenario_runs_and_gets_the_answers_it_measures(built, tmp_path):
    out = tmp_path / "results.json"
    env = dict(os.environ, BENCH_TOOLS_DIR=str(ROOT / "target/debug"))
    run = subprocess.run([sys.executable, str(ROOT / "tools/bench.py"), "--seconds", "0.3", "--warmup", "0.2",
                          "--rounds", "2", "--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "WARNING" not in run.stderr, run.stderr[-3000:]
    results = json.loads(out.read_text())
    rows = {(r["scenario"], r["connections"]): r for r in results["runs"]}
    expected = {(s, c) for s in SCENARIOS for c in ((1,) if s == "streamed-paced" else (1, 16))}
    assert set(rows) == expected
    for (scenario, connections), row in rows.items():
        assert "unexpected" not in row, (scenario, connections, row)
        for proxy in ("plain", "weir"):
            assert row[proxy]["requests"] > 0, (scenario, connections, proxy)
            assert row[proxy]["cpu_us_per_request"] > 0, (scenario, connections, proxy)
        # Two rounds, each measuring both proxies; the row gives their medians, and the
        # ratio of the medians lies within the per-round ratios' range.
        samples = row["rounds"]
        assert len(samples) == 2
        for proxy in ("plain", "weir"):
            per_round = [s[proxy]["rps"] for s in samples]
            assert row[proxy]["rps"] == sum(per_round) / 2, (scenario, connections, proxy)
            assert row[proxy]["statuses"] == {k: sum(s[proxy]["statuses"].get(k, 0) for s in samples)
                                              for k in row[proxy]["statuses"]}
        low, high = row["rps_ratio_range"]
        assert low - 0.001 <= row["rps_ratio"] <= high + 0.001, row
    # Weir refuses the unknown key; plain Envoy forwards it.
    assert set(rows[("denied", 1)]["weir"]["statuses"]) == {"401"}
    assert set(rows[("denied", 1)]["plain"]["statuses"]) == {"200"}
    # The paced stream's events come 2 ms apart from the mock, through both proxies.
    paced = rows[("streamed-paced", 1)]
    for proxy in ("plain", "weir"):
        assert paced[proxy]["p50_ms"] >= 4, paced[proxy]
        assert paced[proxy]["first_byte_p50_ms"] < paced[proxy]["p50_ms"] / 2, paced[proxy]
    for scenario in SCENARIOS:
        assert f"| {scenario} | 1 |" in run.stdout
    assert "Medians of 2 rounds" in run.stdout
    assert results["wasm_bytes"] > 0 and results["weir_ready_s"] > 0


def test_a_row_whose_plain_envoy_moved_between_rounds_is_called_noisy():
    """Plain Envoy does the same work every round: when its own rps moves more than 1.5x
    between a row's rounds, the machine set the row's numbers, and the table says so (these
    are the rounds of a real run on this machine: 3,236 -> 14,607, against a quiet run's
    15,888 -> 21,711)."""
    import bench  # tools/, on the path through conftest

    assert bench.noisy_rounds([15888, 21711, 20264, 16870, 20584]) is None
    assert bench.noisy_rounds([3236]) is None
    noisy = bench.noisy_rounds([3236, 4186, 4071, 14607, 14519])
    assert noisy == {"plain_rps_min": 3236, "plain_rps_max": 14607, "spread": 4.51}

    def sample(plain: float, weir: float) -> dict:
        result = {"rps": 0, "requests": 1, "p50_ms": 1.0, "p99_ms": 2.0, "first_byte_p50_ms": 1.0,
                  "cpu_us_per_request": 50.0, "statuses": {"200": 1}, "errors": 0}
        return {"plain": {**result, "rps": plain}, "weir": {**result, "rps": weir}}

    steady = bench.summarise("buffered", 16, [sample(20000, 11000), sample(18000, 10000)])
    shaky = bench.summarise("models", 16, [sample(3236, 4000), sample(14607, 9000)])
    assert "noisy" not in steady and shaky["noisy"]["spread"] == 4.51
    text = bench.table({"runs": [steady, shaky], "rounds": 2, "wasm_bytes": 1, "weir_ready_s": 1})
    assert "Noisy rows" in text and "models at 16 (3236–14607 rps)" in text and "buffered at 16 (" not in text


def test_the_floor_bench_runs_each_filter_as_it_stands(built, tmp_path):
    """`make bench-floor` in miniature: one short round. Each proxy is checked before it is
    measured (the shape filters set Weir's answer headers, the others do not), and every
    answer measured must be a 200: a floor filter that hung or broke requests would show a
    cheap-looking floor."""
    subprocess.run(["make", "--no-print-directory", "floor-filter"], cwd=ROOT, check=True, capture_output=True)
    out = tmp_path / "floor.json"
    env = dict(os.environ, BENCH_TOOLS_DIR=str(ROOT / "target/debug"))
    run = subprocess.run([sys.executable, str(ROOT / "tools/floor.py"), "--rounds", "1", "--seconds", "0.4",
                          "--warmup", "0.2", "--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads(out.read_text())
    assert results["unexpected"] == []
    proxies = ["plain", "empty", "body", "shape", "shape-in-weir-config", "weir"]
    assert [r["proxy"] for r in results["rows"]] == proxies
    for proxy in proxies:
        (sample,) = results["samples"][proxy]
        for scenario in ("buffered", "streamed-paced"):
            assert sample[scenario]["requests"] > 0, (proxy, scenario)
            assert set(sample[scenario]["statuses"]) == {"200"}, (proxy, scenario, sample[scenario]["statuses"])
        # The paced stream is passed on event by event by every filter, never held.
        paced = sample["streamed-paced"]
        assert paced["first_byte_p50_ms"] < paced["p50_ms"] / 2, (proxy, paced)
    for proxy in proxies:
        assert f"| {proxy} |" in run.stdout
    # Weir's own share, the difference of two rows of the same run.
    rows = {r["proxy"]: r for r in results["rows"]}
    assert results["weir_over_shape"]["added_cpu_us"] == round(
        rows["weir"]["cpu_us_per_request"] - rows["shape-in-weir-config"]["cpu_us_per_request"], 1)
    assert "Weir's own work (weir − shape-in-weir-config, same rounds):" in run.stdout
