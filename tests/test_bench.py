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
    run = subprocess.run([sys.executable, str(ROOT / "tools/bench.py"), "--seconds", "0.5", "--warmup", "0.3",
                          "--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
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
    assert results["wasm_bytes"] > 0 and results["weir_ready_s"] > 0
