#!/usr/bin/env python3
"""make bench-scaling: how Weir's cost per request grows, measured on this machine.

- keys: 10 -> 100,000 keys in the configuration (bundle size, Envoy ready time, memory,
  CPU per request);
- policy rules: one policy of 1 -> 1,000 deny rules (all loaded together; each request
  picks one), against no policy;
- request body: 1 KB -> 1 MB (buffered, with the `standard` policy), Weir against plain Envoy;
- stream length: 10 -> 1,000 events from the mock provider, Weir against plain Envoy;
- paced streams: events 2 ms apart (each its own read), 32 streams at once: what an event
  costs;
- memory per worker VM: resident memory with 1, 2 and 4 workers, Weir against plain Envoy.

Every proxy runs one worker unless the experiment is about workers; every run is bounded and
on loopback. It prints Markdown tables and writes target/bench/scaling.json. A benchmark,
not a test: it fails only when a request does not get its expected status.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402
import devstack  # noqa: E402

KEY = [f"authorization: Bearer {devstack.DEMO_KEY}", "content-type: application/json"]
CHAT = {"model": "balanced", "messages": [{"role": "user", "content": "Hi"}]}


class Args:
    seconds: float
    warmup: float
    connections: int


def weir_stack(workdir: Path, config_text: str, upstream_port: int, concurrency: int = 1) -> dict:
    """Envoy + Weir with this configuration in front of `upstream_port`; times its start."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "weir.toml"
    config.write_text(config_text)
    stack, timings = bench.weir_stack(workdir / "weir", config, upstream_port, concurrency)
    return {"stack": stack, **timings}


def run(proxy, workdir: Path, label: str, body, headers: list[str], a: Args, connections: int | None = None) -> dict:
    result = bench.measure(proxy, workdir, label, "POST", "/v1/chat/completions", body, headers,
                           connections or a.connections, a.seconds, a.warmup)
    unexpected = {s: n for s, n in result["statuses"].items() if s != "200"}
    if unexpected or result["errors"]:
        raise RuntimeError(f"{label}: unexpected answers {unexpected}, {result['errors']} errors")
    return result


def sample_without_default() -> str:
    return devstack.sample_config_text().replace('default = "standard"\n', "")


def keys_text(n: int) -> str:
    """`n - 1` generated keys (only their hashes, as `weir keys new` stores them)."""
    out = []
    for i in range(n - 1):
        digest = hashlib.sha256(f"wk_live_scale{i:08d}".encode()).hexdigest()
        out.append(f'\n[[keys]]\nid = "k{i}"\nname = "k{i}"\nteam = "t{i % 50}"\nscopes = ["chat"]\n'
                   f'created = "2026-11-22T00:00:00Z"\nhash = "sha256:{digest}"\n')
    return "".join(out)


def keys_experiment(workdir: Path, upstream_port: int, a: Args) -> list[dict]:
    rows = []
    for n in (10, 1_000, 10_000, 100_000):
        w = weir_stack(workdir / f"keys-{n}", sample_without_default() + keys_text(n), upstream_port)
        try:
            r = run(w["stack"], workdir, f"keys-{n}", CHAT, KEY + ["x-bench: json"], a)
            rows.append({"keys": n, "bundle_mb": round(w["bundle_bytes"] / 1e6, 2), "bundle_s": w["bundle_s"],
                         "ready_s": w["ready_s"], "rss_mb": round(bench.rss_mb(w["stack"].envoy.pid), 1),
                         "weir_cpu_us": r["cpu_us_per_request"], "weir_rps": round(r["rps"])})
        finally:
            w["stack"].stop()
        print(f"keys {n}: {rows[-1]}", file=sys.stderr, flush=True)
    return rows


RULE_COUNTS = (1, 10, 100, 1_000)


def rules_experiment(workdir: Path, upstream_port: int, a: Args) -> list[dict]:
    policies = workdir / "policies"
    shutil.copytree(devstack.ROOT / "policies", policies, ignore=shutil.ignore_patterns("*_test.rego"))
    for n in RULE_COUNTS:
        rules = "".join(f'deny contains "rule {i}" if input.caller.team == "team-{i}"\n\n' for i in range(n))
        (policies / f"rules_{n}.rego").write_text(f"package weir.policy.rules_{n}\n\n{rules}tags contains \"rules\"\n")
    text = sample_without_default().replace(f'dir = "{devstack.ROOT / "policies"}"', f'dir = "{policies}"')
    # Every request runs its policy: the load repeats one request, whose decisions Weir
    # would otherwise keep (README, "Policies"), and this measures evaluation.
    text = text.replace("[policy]\n", "[policy]\ndecision_cache = false\n")
    w = weir_stack(workdir / "rules", text, upstream_port)
    rows = []
    try:
        base = run(w["stack"], workdir, "rules-none", CHAT, KEY + ["x-bench: json"], a)
        rows.append({"policy": "none", "deny_rules": 0, "weir_cpu_us": base["cpu_us_per_request"],
                     "added_cpu_us": 0.0, "weir_rps": round(base["rps"])})
        for name, n in [("standard", "sample")] + [(f"rules_{n}", n) for n in RULE_COUNTS]:
            r = run(w["stack"], workdir, f"rules-{name}", CHAT, KEY + ["x-bench: json", f"x-weir-policy: {name}"], a)
            rows.append({"policy": name, "deny_rules": n, "weir_cpu_us": r["cpu_us_per_request"],
                         "added_cpu_us": round(r["cpu_us_per_request"] - base["cpu_us_per_request"], 1),
                         "weir_rps": round(r["rps"])})
            print(f"rules {name}: {rows[-1]}", file=sys.stderr, flush=True)
        rows.append({"policy": "(bundle)", "deny_rules": sum(RULE_COUNTS), "weir_cpu_us": None, "added_cpu_us": None,
                     "weir_rps": None, "bundle_mb": round(w["bundle_bytes"] / 1e6, 2), "ready_s": w["ready_s"]})
    finally:
        w["stack"].stop()
    return rows


def side_by_side(workdir: Path, label: str, plain, weir, body, headers: list[str], a: Args, connections: int,
                 plain_headers: list[str] | None = None) -> dict:
    p = run(plain, workdir, f"{label}-plain", body, plain_headers or headers, a, connections)
    w = run(weir, workdir, f"{label}-weir", body, headers, a, connections)
    return {"plain_cpu_us": p["cpu_us_per_request"], "weir_cpu_us": w["cpu_us_per_request"],
            "added_cpu_us": round(w["cpu_us_per_request"] - p["cpu_us_per_request"], 1),
            "plain_rps": round(p["rps"]), "weir_rps": round(w["rps"]),
            "plain_p50_ms": p["p50_ms"], "weir_p50_ms": w["p50_ms"]}


def body_experiment(workdir: Path, upstream_port: int, a: Args) -> list[dict]:
    plain = bench.Envoy(workdir, "plain-body", bench.plain_yaml(upstream_port))
    w = weir_stack(workdir / "body", sample_without_default(), upstream_port)
    rows = []
    try:
        for size in (1_000, 10_000, 100_000, 1_000_000):
            body = {"model": "balanced", "messages": [{"role": "user", "content": "lorem " * (size // 6)}]}
            row = {"body_bytes": len(json.dumps(body))}
            row.update(side_by_side(workdir, f"body-{size}", plain, w["stack"], body,
                                    KEY + ["x-bench: json", "x-weir-policy: standard"], a, 4))
            rows.append(row)
            print(f"body {size}: {row}", file=sys.stderr, flush=True)
    finally:
        w["stack"].stop()
        plain.stop()
    return rows


@contextlib.contextmanager
def before_the_mock(workdir: Path, name: str):
    """The mock provider, with plain Envoy and Envoy + Weir in front of it; stopped after."""
    mock = devstack.Stack(workdir / name, config=workdir / f"{name}.toml", flush_ms=1000)
    (workdir / f"{name}.toml").write_text(sample_without_default())
    mock.start_mock()
    stoppers = [mock.stop]
    try:
        mock_port = int(mock.mock_addrs["openai"].rsplit(":", 1)[1])
        plain = bench.Envoy(workdir, f"plain-{name}", bench.plain_yaml(mock_port))
        stoppers.append(plain.stop)
        w = weir_stack(workdir / f"{name}-weir", sample_without_default(), mock_port)
        stoppers.append(w["stack"].stop)
        yield plain, w["stack"]
    finally:
        for stop in reversed(stoppers):
            stop()


def stream_experiment(workdir: Path, a: Args) -> list[dict]:
    """Streams from the mock provider, one event per write, as a provider sends them."""
    rows = []
    with before_the_mock(workdir, "stream") as (plain, weir):
        for words in (10, 100, 1_000):
            body = {"model": "balanced", "stream": True, "messages": [{"role": "user", "content": "Hi"}]}
            headers = KEY + [f"x-mock-reply-words: {words}", "x-weir-policy: standard"]
            # Plain Envoy passes the mock's own credential; the mock answers whatever the model.
            plain_headers = [f"authorization: Bearer {devstack.MOCK_CREDENTIALS['OPENAI_API_KEY']}",
                             "content-type: application/json", f"x-mock-reply-words: {words}"]
            row = {"events": words}
            row.update(side_by_side(workdir, f"stream-{words}", plain, weir, body, headers, a, 4, plain_headers))
            row["added_cpu_us_per_event"] = round(row["added_cpu_us"] / words, 2)
            rows.append(row)
            print(f"stream {words}: {row}", file=sys.stderr, flush=True)
    return rows


def paced_experiment(workdir: Path, a: Args) -> list[dict]:
    """Streams paced as a model sends them: the mock waits 2 ms between events, so each event
    is its own read and its own call into Weir (`stream` above gets them close together).
    Many streams at once, as on a gateway: the difference between 20 and 60 words is what
    40 events cost. Last, 20 words with the client asking for usage: nothing to remove."""
    rows: list[dict] = []
    with before_the_mock(workdir, "paced") as (plain, weir):
        for words, usage_by in ((20, "weir"), (60, "weir"), (20, "client")):
            body = {"model": "balanced", "stream": True, "messages": [{"role": "user", "content": "Hi"}]}
            if usage_by == "client":
                body["stream_options"] = {"include_usage": True}
            pacing = [f"x-mock-reply-words: {words}", "x-mock-chunk-delay-ms: 2"]
            plain_headers = [f"authorization: Bearer {devstack.MOCK_CREDENTIALS['OPENAI_API_KEY']}",
                             "content-type: application/json"] + pacing
            row: dict = {"words": words, "usage_asked_by": usage_by}
            row.update(side_by_side(workdir, f"paced-{words}-{usage_by}", plain, weir, body,
                                    KEY + pacing + ["x-weir-policy: standard"], a, 32, plain_headers))
            if usage_by == "weir" and rows:
                # Per event, from the longer stream's extra events.
                extra = words - rows[0]["words"]
                row["plain_cpu_us_per_extra_event"] = round((row["plain_cpu_us"] - rows[0]["plain_cpu_us"]) / extra, 2)
                row["added_cpu_us_per_extra_event"] = round((row["added_cpu_us"] - rows[0]["added_cpu_us"]) / extra, 2)
            rows.append(row)
            print(f"paced {words} {usage_by}: {row}", file=sys.stderr, flush=True)
    return rows


def memory_experiment(workdir: Path, upstream_port: int, a: Args) -> list[dict]:
    rows = []
    for workers in (1, 2, 4):
        plain = bench.Envoy(workdir, f"plain-mem-{workers}", bench.plain_yaml(upstream_port), concurrency=workers)
        w = weir_stack(workdir / f"mem-{workers}", sample_without_default(), upstream_port, concurrency=workers)
        try:
            # Enough connections that every worker serves some (its VM then holds a request's state).
            for proxy, label in ((plain, "plain"), (w["stack"], "weir")):
                run(proxy, workdir, f"mem-{label}-{workers}", CHAT, KEY + ["x-bench: json", "x-weir-policy: standard"],
                    a, 4 * workers)
            rows.append({"workers": workers, "plain_rss_mb": round(bench.rss_mb(plain.proc.pid), 1),
                         "weir_rss_mb": round(bench.rss_mb(w["stack"].envoy.pid), 1)})
        finally:
            w["stack"].stop()
            plain.stop()
        print(f"memory {workers}: {rows[-1]}", file=sys.stderr, flush=True)
    return rows


def markdown(rows: list[dict]) -> str:
    cols = list(dict.fromkeys(k for r in rows for k in r))
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join("" if r.get(c) is None else str(r.get(c)) for c in cols) + " |")
    return "\n".join(lines)


EXPERIMENTS = ("keys", "rules", "body", "stream", "paced", "memory")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--only", default="", help=f"comma-separated, of {', '.join(EXPERIMENTS)}")
    parser.add_argument("--out", type=Path, default=devstack.ROOT / "target/bench/scaling.json")
    a = parser.parse_args(namespace=Args())
    chosen = [e for e in a.only.split(",") if e] or list(EXPERIMENTS)
    if set(chosen) - set(EXPERIMENTS):
        parser.error(f"unknown experiments {sorted(set(chosen) - set(EXPERIMENTS))}")
    workdir = Path(tempfile.mkdtemp(prefix="weir-scaling-"))
    upstream = bench.Envoy(workdir, "upstream", bench.upstream_yaml())
    results: dict = {"machine": {"cpus": __import__("os").cpu_count()}, "seconds": a.seconds}
    try:
        for e in chosen:
            if e == "keys":
                results["keys"] = keys_experiment(workdir, upstream.port, a)
            elif e == "rules":
                results["rules"] = rules_experiment(workdir, upstream.port, a)
            elif e == "body":
                results["body"] = body_experiment(workdir, upstream.port, a)
            elif e == "stream":
                results["stream"] = stream_experiment(workdir, a)
            elif e == "paced":
                results["paced"] = paced_experiment(workdir, a)
            elif e == "memory":
                results["memory"] = memory_experiment(workdir, upstream.port, a)
    finally:
        upstream.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    for e in chosen:
        print(f"\n### {e}\n\n{markdown(results[e])}")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(results, indent=2))
    print(f"\nJSON: {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
