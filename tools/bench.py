#!/usr/bin/env python3
"""make bench: what Weir adds over plain Envoy, measured side by side in one run.

Three Envoys on loopback: a fast upstream (direct_response with canned OpenAI answers),
plain Envoy proxying to it, and Envoy + Weir (sample configuration: auth, the `standard`
policy, tier rewrite, usage, audit) proxying to it. Each proxy has one worker. For each
scenario and connection count, weir-load drives the proxy for a fixed time; CPU per
request comes from the proxy's /proc/PID/stat. Prints a table and writes JSON.

`--rounds N` (`BENCH_ROUNDS`, default 3) measures every row N times, the rounds one after
the other and plain Envoy and Weir taking turns to go first, and reports each figure's
median with the spread of the per-round ratio and added CPU: on a shared machine one
run of a few seconds can land in a slow moment for one proxy and not the other.

`--split` (`make bench-split`) adds where each proxy's CPU goes, from `perf record` samples
on the full buffered path at 16 connections: the filter's own code (V8's compiled Wasm, which
perf sees as anonymous "[JIT]" memory), Envoy's binary (its C++, V8's runtime and the Wasm host
functions), the kernel and shared libraries.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import devstack  # noqa: E402

# The load generator and the mock, built by `make bench` (optimised); `BENCH_TOOLS_DIR`
# points elsewhere (the test suite's smoke run uses the debug builds).
TOOLS = Path(os.environ.get("BENCH_TOOLS_DIR", devstack.ROOT / "target/bench-tools"))
LOAD = TOOLS / "weir-load"
MOCK = TOOLS / "weir-mock"
TICKS = os.sysconf("SC_CLK_TCK")

CHAT_JSON = json.dumps({
    "id": "chatcmpl-bench", "object": "chat.completion", "created": 1, "model": "gpt-4.1-mini",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello from the bench upstream."},
                 "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19,
              "prompt_tokens_details": {"cached_tokens": 0}, "completion_tokens_details": {"reasoning_tokens": 0}},
})
CHUNK = '{"id":"c","object":"chat.completion.chunk","created":1,"model":"gpt-4.1-mini","choices":[{"index":0,"delta":{"content":"%s"},"finish_reason":null}],"usage":null}'
SSE = "".join(f"data: {CHUNK % w}\n\n" for w in ["Hello ", "from ", "the ", "bench ", "upstream."]) + \
    'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"gpt-4.1-mini","choices":[],"usage":{"prompt_tokens":12,"completion_tokens":5,"total_tokens":17}}\n\n' + \
    "data: [DONE]\n\n"
MODELS_JSON = json.dumps({"object": "list", "data": [{"id": "balanced", "object": "model", "created": 0, "owned_by": "x"}]})


def upstream_yaml(mock_port: int = 0) -> str:
    """The fast upstream; with `mock_port`, requests marked `x-bench: paced` go on to the mock."""
    paced = """
              - match: { prefix: "/", headers: [{ name: x-bench, string_match: { exact: paced } }] }
                route: { cluster: mock, timeout: 60s }""" if mock_port else ""
    mock_cluster = f"""
  clusters:
  - name: mock
    type: STATIC
    load_assignment:
      cluster_name: mock
      endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {mock_port} }} }} }} }}] }}]
""" if mock_port else "\n"
    return f"""
admin: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }} }}
static_resources:
  listeners:
  - name: upstream
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: upstream
          http_filters:
          # Read the whole request before answering, as a provider does: a direct_response
          # sent before the request body has arrived makes Envoy close the connection, and
          # every request would then pay for a new upstream connection.
          - name: envoy.filters.http.buffer
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer
              max_request_bytes: 10485760
          - name: envoy.filters.http.router
            typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              # A stream paced as a model's is (the mock: first event at once, the rest later),
              # so the client's first byte is not also the stream's end.{paced}
              - match: {{ prefix: "/", headers: [{{ name: x-bench, string_match: {{ exact: sse }} }}] }}
                direct_response: {{ status: 200, body: {{ inline_string: {json.dumps(SSE)} }} }}
                response_headers_to_add: [{{ header: {{ key: content-type, value: text/event-stream }} }}]
              - match: {{ prefix: "/v1/models" }}
                direct_response: {{ status: 200, body: {{ inline_string: {json.dumps(MODELS_JSON)} }} }}
                response_headers_to_add: [{{ header: {{ key: content-type, value: application/json }} }}]
              - match: {{ prefix: "/" }}
                direct_response: {{ status: 200, body: {{ inline_string: {json.dumps(CHAT_JSON)} }} }}
                response_headers_to_add: [{{ header: {{ key: content-type, value: application/json }} }}]{mock_cluster}"""


def plain_yaml(upstream_port: int) -> str:
    return f"""
admin: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }} }}
static_resources:
  listeners:
  - name: weir
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: plain
          # As Weir's envoy.yaml: the path normalised (Envoy's own work, not Weir's), so the
          # comparison is of Weir alone.
          normalize_path: true
          merge_slashes: true
          path_with_escaped_slashes_action: REJECT_REQUEST
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                route: {{ cluster: upstream, timeout: 300s }}
  clusters:
  - name: upstream
    type: STATIC
    load_assignment:
      cluster_name: upstream
      endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {upstream_port} }} }} }} }}] }}]
"""


class Envoy:
    """An Envoy from a config string, on OS-chosen ports, stopped by PID."""

    def __init__(self, workdir: Path, name: str, yaml: str, concurrency: int = 1):
        self.dir = workdir / name
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "envoy.yaml").write_text(yaml)
        admin_file = self.dir / "admin.txt"
        self.proc = subprocess.Popen(
            devstack.envoy_command() + ["-c", str(self.dir / "envoy.yaml"), "--disable-hot-restart",
                                        "--base-id", str(devstack.unique_base_id()), "--concurrency", str(concurrency),
                                        "--admin-address-path", str(admin_file), "-l", "error"],
            stdout=open(self.dir / "envoy.log", "w"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while not (admin_file.exists() and admin_file.read_text().strip()):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"{name} did not start: {(self.dir / 'envoy.log').read_text()[-500:]}")
            time.sleep(0.05)
        self.admin = "http://" + admin_file.read_text().strip()
        while devstack.http_get(self.admin + "/ready")[0] != 200:
            time.sleep(0.05)
        listeners = json.loads(devstack.http_get(self.admin + "/listeners?format=json")[1])["listener_statuses"]
        self.port = listeners[0]["local_address"]["socket_address"]["port_value"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait(timeout=10)


def weir_stack(directory: Path, config: Path, upstream_port: int, concurrency: int = 1,
               edit_filter=None) -> tuple[devstack.Stack, dict]:
    """Envoy + Weir with `config`, every provider cluster pointed at the bench's upstream, as
    `make bench` runs it. `edit_filter(stack)` may change the bundled filter configuration
    before Envoy starts (floor.py puts its filter in Weir's place). Returns the stack, whose
    `proc` is Envoy (the interface `measure` uses), and its timings. An Envoy that fails to
    become ready is stopped before the error goes on; the caller stops a started one."""
    stack = devstack.Stack(directory, config=config, flush_ms=1000, concurrency=concurrency)
    stack.mock_addrs = {name: f"127.0.0.1:{upstream_port}" for name in devstack.CLUSTERS}
    started = time.monotonic()
    built = stack.bundle()
    if built.returncode != 0:
        raise RuntimeError(f"weir bundle failed: {built.stderr}")
    bundle_s = time.monotonic() - started
    if edit_filter:
        edit_filter(stack)
    stack.render()
    started = time.monotonic()
    try:
        stack.start_envoy()
    except BaseException:
        stack.stop()
        raise
    stack.proc = stack.envoy
    return stack, {"bundle_s": round(bundle_s, 2), "ready_s": round(time.monotonic() - started, 2),
                   "bundle_bytes": stack.filter_config.stat().st_size}


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


SCENARIOS = {
    # name: (method, path, body, headers)
    # The full path: auth, the `standard` Rego policy, tier rewrite, usage, cost, audit, metrics.
    "buffered": ("POST", "/v1/chat/completions", {"model": "balanced", "messages": [{"role": "user", "content": "Hi"}]},
                 [f"authorization: Bearer {devstack.DEMO_KEY}", "content-type: application/json", "x-bench: json",
                  "x-weir-policy: standard"]),
    # The same with the policy run for every request: Weir's `[policy] decision_cache = false`
    # (the `buffered` scenario's requests repeat, so its policy decisions are kept).
    "buffered-uncached": ("POST", "/v1/chat/completions", {"model": "balanced", "messages": [{"role": "user", "content": "Hi"}]},
                          [f"authorization: Bearer {devstack.DEMO_KEY}", "content-type: application/json", "x-bench: json",
                           "x-weir-policy: standard"]),
    # The same without a policy.
    "buffered-no-policy": ("POST", "/v1/chat/completions", {"model": "balanced", "messages": [{"role": "user", "content": "Hi"}]},
                           [f"authorization: Bearer {devstack.DEMO_KEY}", "content-type: application/json", "x-bench: json"]),
    "streamed": ("POST", "/v1/chat/completions", {"model": "balanced", "stream": True, "messages": [{"role": "user", "content": "Hi"}]},
                 [f"authorization: Bearer {devstack.DEMO_KEY}", "content-type: application/json", "x-bench: sse",
                  "x-weir-policy: standard"]),
    # The streaming target's measure: the same stream paced as a model sends one (the first
    # event at once, then one every 2 ms, from the mock provider behind the upstream), so the
    # first byte waits only for what Weir does before it; above, the whole answer arrives at
    # once, and Envoy handles all of it (Weir meters every event) before writing to the client.
    "streamed-paced": ("POST", "/v1/chat/completions",
                       {"model": "balanced", "stream": True, "messages": [{"role": "user", "content": "Hi"}]},
                       [f"authorization: Bearer {devstack.DEMO_KEY}", "content-type: application/json",
                        "x-bench: paced", "x-mock-chunk-delay-ms: 2", "x-mock-reply-words: 3",
                        "x-weir-policy: standard"]),
    "denied": ("POST", "/v1/chat/completions", {"model": "balanced", "messages": [{"role": "user", "content": "Hi"}]},
               ["authorization: Bearer wk_live_not_a_key", "content-type: application/json", "x-bench: json"]),
    "models": ("GET", "/v1/models", None, [f"authorization: Bearer {devstack.DEMO_KEY}"]),
}


# The status each proxy must answer with in each scenario: a run that got anything else
# measured something other than its scenario, and is reported as such.
EXPECTED_STATUS = {"denied": {"plain": 200, "weir": 401}}


def unexpected_statuses(scenario: str, proxy_name: str, result: dict) -> dict:
    expected = str(EXPECTED_STATUS.get(scenario, {}).get(proxy_name, 200))
    return {status: n for status, n in result.get("statuses", {}).items() if status != expected}


# Connection counts per scenario (default 1 and 16): a paced stream's first byte is a
# latency, measured on an otherwise idle proxy.
CONNECTIONS = {"streamed-paced": (1,)}


def run_load(proxy, workdir: Path, scenario: str, connections: int, seconds: float, warmup: float) -> dict:
    method, path, body, headers = SCENARIOS[scenario]
    return measure(proxy, workdir, scenario, method, path, body, headers, connections, seconds, warmup)


def load_command(proxy, workdir: Path, label: str, method: str, path: str, body, headers: list[str],
                 connections: int, seconds: float, warmup: float) -> list[str]:
    args = [str(LOAD), "--addr", f"127.0.0.1:{proxy.port}", "--method", method, "--path", path,
            "--connections", str(connections), "--seconds", str(seconds), "--warmup", str(warmup)]
    if body is not None:
        body_file = workdir / f"{label}.json"
        body_file.write_text(json.dumps(body))
        args += ["--body", str(body_file)]
    for h in headers:
        args += ["--header", h]
    return args


def measure(proxy, workdir: Path, label: str, method: str, path: str, body, headers: list[str],
            connections: int, seconds: float, warmup: float) -> dict:
    """Drives `proxy` with weir-load; adds the proxy's CPU time per request."""
    args = load_command(proxy, workdir, label, method, path, body, headers, connections, seconds, warmup)
    pid = proxy.proc.pid
    load = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    time.sleep(warmup)
    cpu0 = cpu_seconds(pid)
    out, _ = load.communicate(timeout=seconds + warmup + 60)
    cpu1 = cpu_seconds(pid)
    result = json.loads(out)
    result["cpu_us_per_request"] = round((cpu1 - cpu0) * 1e6 / max(result["requests"], 1), 1)
    return result


# Where a sample ran, by perf's "dso" (shared object) name.
SPLIT_PARTS = {
    "wasm": "Weir's compiled Wasm code ([JIT])",
    "envoy": "Envoy's binary (C++, V8 runtime, host functions)",
    "kernel": "kernel",
    "libs": "shared libraries (libc, vdso)",
}


def split_part(dso: str) -> str:
    if dso.startswith("[JIT]"):
        return "wasm"
    if dso.startswith("[kernel"):
        return "kernel"
    if dso.startswith("lib") or dso == "[vdso]":
        return "libs"
    return "envoy"


def cpu_split(proxy, workdir: Path, scenario: str, seconds: float) -> dict:
    """CPU per request of `proxy` under load, and its shares by code region (perf samples)."""
    # Load for longer than perf records: from 1.5 s in to the end of the recording.
    args = load_command(proxy, workdir, scenario, *SCENARIOS[scenario], 16, seconds + 2, 1)
    data = workdir / f"perf-{proxy.proc.pid}.data"
    load = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(1.5)
        cpu0 = cpu_seconds(proxy.proc.pid)
        started = time.monotonic()
        # 999 Hz, no call graphs: a percent or so of the proxy's CPU.
        perf = subprocess.run(["perf", "record", "-F", "999", "-o", str(data), "-p", str(proxy.proc.pid),
                               "--", "sleep", str(seconds)], capture_output=True, text=True)
        cpu_s, wall_s = cpu_seconds(proxy.proc.pid) - cpu0, time.monotonic() - started
    finally:
        out, _ = load.communicate(timeout=seconds + 60)
    if perf.returncode != 0:
        raise RuntimeError(f"perf record failed: {perf.stderr.strip()[-300:]}")
    rps = json.loads(out)["rps"]
    report = subprocess.run(["perf", "report", "-i", str(data), "--no-children", "--sort", "dso", "--stdio",
                             "-g", "none"], capture_output=True, text=True, check=True).stdout
    cpu_us = cpu_s * 1e6 / max(rps * wall_s, 1)
    shares = {part: 0.0 for part in SPLIT_PARTS}
    for line in report.splitlines():
        if "%" not in line or line.lstrip().startswith("#"):
            continue
        percent, dso = line.split("%", 1)
        shares[split_part(dso.strip())] += float(percent)
    return {"rps": round(rps), "cpu_us_per_request": round(cpu_us, 1),
            "us_per_request": {part: round(cpu_us * share / 100, 1) for part, share in shares.items()}}


def split_table(split: dict) -> str:
    plain, weir = split["plain"], split["weir"]
    lines = [
        f"Where the CPU goes (`{split['scenario']}`, 16 connections, perf samples; "
        f"plain {plain['rps']} rps, weir {weir['rps']} rps):",
        "",
        "| code | plain µs/req | weir µs/req | added µs/req |",
        "|---|---|---|---|",
    ]
    for part, label in SPLIT_PARTS.items():
        p, w = plain["us_per_request"][part], weir["us_per_request"][part]
        lines.append(f"| {label} | {p:.1f} | {w:.1f} | {w - p:+.1f} |")
    lines.append(f"| all | {plain['cpu_us_per_request']:.1f} | {weir['cpu_us_per_request']:.1f} | "
                 f"{weir['cpu_us_per_request'] - plain['cpu_us_per_request']:+.1f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=float(os.environ.get("BENCH_SECONDS", "3")))
    parser.add_argument("--rounds", type=int, default=int(os.environ.get("BENCH_ROUNDS", "3")))
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--out", type=Path, default=devstack.ROOT / "target/bench/results.json")
    parser.add_argument("--only", default=os.environ.get("BENCH_ONLY", ""),
                        help="comma-separated scenarios to run (default: all)")
    parser.add_argument("--split", action="store_true", default=os.environ.get("BENCH_SPLIT") == "1",
                        help="also measure where the CPU goes (needs perf)")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.split and not shutil.which("perf"):
        parser.error("--split needs perf (Debian: linux-perf)")
    chosen = [s for s in args.only.split(",") if s] or list(SCENARIOS)
    unknown = [s for s in chosen if s not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenarios {unknown}; known: {list(SCENARIOS)}")
    workdir = Path(tempfile.mkdtemp(prefix="weir-bench-"))
    # Whatever was started is stopped, in reverse order, however the run ends.
    stoppers: list = []
    try:
        mock = subprocess.Popen([str(MOCK), "--listen", "bench=127.0.0.1:0"], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True)
        stoppers.append(lambda: (mock.terminate(), mock.wait(timeout=10)))
        mock_port = int(json.loads(mock.stdout.readline())["listening"]["bench"].rsplit(":", 1)[1])
        upstream = Envoy(workdir, "upstream", upstream_yaml(mock_port))
        stoppers.append(upstream.stop)
        plain = Envoy(workdir, "plain", plain_yaml(upstream.port))
        stoppers.append(plain.stop)
        # The sample configuration without a global default policy, so the scenarios choose:
        # with `x-weir-policy: standard`, or without any policy.
        config = workdir / "weir.toml"
        config.write_text(devstack.sample_config_text().replace('default = "standard"\n', ""))

        def start_weir(name: str, config: Path) -> tuple[devstack.Stack, float]:
            stack, timings = weir_stack(workdir / name, config, upstream.port)
            stoppers.append(stack.stop)
            return stack, timings["ready_s"]

        weir, ready_s = start_weir("weir", config)
        weirs = {"": weir}
        results = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                               "python": platform.python_version()},
                   "wasm_bytes": devstack.WASM.stat().st_size, "weir_ready_s": round(ready_s, 2),
                   "rounds": args.rounds, "seconds": args.seconds, "runs": []}
        if "buffered-uncached" in chosen:
            uncached = workdir / "weir-uncached.toml"
            uncached.write_text(config.read_text().replace("[policy]\n", "[policy]\ndecision_cache = false\n"))
            weirs["uncached"] = start_weir("weir-uncached", uncached)[0]
        proxies = {"plain": plain}
        rows = [(scenario, connections) for scenario in chosen for connections in CONNECTIONS.get(scenario, (1, 16))]
        rounds: dict[tuple, list[dict]] = {row: [] for row in rows}
        for round_ in range(args.rounds):
            for scenario, connections in rows:
                proxies["weir"] = weirs["uncached" if scenario == "buffered-uncached" else ""]
                # Plain Envoy and Weir take turns to go first.
                order = ("plain", "weir") if round_ % 2 == 0 else ("weir", "plain")
                sample = {name: run_load(proxies[name], workdir, scenario, connections, args.seconds, args.warmup)
                          for name in order}
                rounds[(scenario, connections)].append(sample)
                print(f"round {round_ + 1}/{args.rounds} {scenario:9} c={connections:<2} plain "
                      f"{sample['plain']['rps']:8.0f} rps  weir {sample['weir']['rps']:8.0f} rps", file=sys.stderr,
                      flush=True)
        for scenario, connections in rows:
            results["runs"].append(summarise(scenario, connections, rounds[(scenario, connections)]))
        if args.split:
            results["split"] = {"scenario": "buffered",
                                "plain": cpu_split(plain, workdir, "buffered", args.seconds),
                                "weir": cpu_split(weir, workdir, "buffered", args.seconds)}
        results["rss_mb"] = {"plain": round(rss_mb(plain.proc.pid), 1), "weir": round(rss_mb(weir.envoy.pid), 1),
                             "upstream": round(rss_mb(upstream.proc.pid), 1)}
    finally:
        for stop in reversed(stoppers):
            stop()
        # The proxies' logs and the audit file of every request: gigabytes over time.
        shutil.rmtree(workdir, ignore_errors=True)

    print(table(results))
    if "split" in results:
        print()
        print(split_table(results["split"]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"\nJSON: {args.out}")
    return 0


def median_result(results: list[dict]) -> dict:
    """One load result from several rounds: each figure's median; statuses and errors summed."""
    merged = {}
    for field, value in results[0].items():
        values = [r.get(field, 0) for r in results]
        if field == "statuses":
            merged[field] = {}
            for r in results:
                for status, count in r.get("statuses", {}).items():
                    merged[field][status] = merged[field].get(status, 0) + count
        elif field == "errors":
            merged[field] = sum(values)
        elif isinstance(value, (int, float)):
            merged[field] = statistics.median(values)
        else:
            merged[field] = value
    return merged


# Plain Envoy does the same work in every round, so its own rps should barely move between a
# row's rounds. In a quiet window it moves by up to ~1.4x (three processes share two cores);
# in a noisy one it moved 3,200 -> 14,600 and the medians ranked filters above plain Envoy.
# Past this spread the machine, not the proxies, set the row's numbers.
NOISY_SPREAD = 1.5


def noisy_rounds(plain_rps: list[float]) -> dict | None:
    """Plain Envoy's rps range across a row's rounds when its largest is more than
    NOISY_SPREAD times its smallest; None for a steady row (or a single round)."""
    if len(plain_rps) < 2 or min(plain_rps) <= 0:
        return None
    low, high = min(plain_rps), max(plain_rps)
    if high / low <= NOISY_SPREAD:
        return None
    return {"plain_rps_min": round(low), "plain_rps_max": round(high), "spread": round(high / low, 2)}


def summarise(scenario: str, connections: int, samples: list[dict]) -> dict:
    """A table row from a scenario's rounds: the medians, the ratios of the medians, and the
    spread of the per-round ratio and added CPU."""
    row = {"scenario": scenario, "connections": connections, "rounds": samples}
    for name in ("plain", "weir"):
        row[name] = median_result([s[name] for s in samples])
        statuses = row[name]["statuses"]
        wrong = unexpected_statuses(scenario, name, row[name])
        if wrong or row[name].get("errors"):
            row.setdefault("unexpected", {})[name] = {"statuses": wrong, "errors": row[name].get("errors")}
            print(f"WARNING: {scenario} c={connections} {name}: unexpected statuses {wrong}, "
                  f"{row[name].get('errors')} failed requests (all rounds: {statuses})", file=sys.stderr, flush=True)
    p, w = row["plain"], row["weir"]
    row["rps_ratio"] = round(w["rps"] / p["rps"], 3) if p["rps"] else None
    row["added_cpu_us"] = round(w["cpu_us_per_request"] - p["cpu_us_per_request"], 1)
    row["added_p50_ms"] = round(w["p50_ms"] - p["p50_ms"], 3)
    # The streaming target: what Weir adds before a client can read anything.
    row["added_first_byte_p50_ms"] = round(w["first_byte_p50_ms"] - p["first_byte_p50_ms"], 3)
    ratios = [s["weir"]["rps"] / s["plain"]["rps"] for s in samples if s["plain"]["rps"]]
    added = [s["weir"]["cpu_us_per_request"] - s["plain"]["cpu_us_per_request"] for s in samples]
    row["rps_ratio_range"] = [round(min(ratios), 3), round(max(ratios), 3)] if ratios else None
    row["added_cpu_us_range"] = [round(min(added), 1), round(max(added), 1)]
    noisy = noisy_rounds([s["plain"]["rps"] for s in samples])
    if noisy:
        row["noisy"] = noisy
    return row


def table(results: dict) -> str:
    rounds = results.get("rounds", 1)
    spread = rounds > 1
    lines = [
        f"Medians of {rounds} rounds (per-round range in brackets)." if spread else "One round.",
        "",
        "| scenario | conns | plain rps | weir rps | weir/plain | plain p50 / p99 ms | weir p50 / p99 ms "
        "| first byte p50 ms plain / weir | plain CPU µs/req | weir CPU µs/req | added CPU µs |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["runs"]:
        p, w = r["plain"], r["weir"]
        ratio, added = f"{r['rps_ratio']:.2f}", f"{r['added_cpu_us']:+.0f}"
        if spread and r.get("rps_ratio_range"):
            low, high = r["rps_ratio_range"]
            ratio += f" ({low:.2f}–{high:.2f})"
            low, high = r["added_cpu_us_range"]
            added += f" ({low:+.0f} to {high:+.0f})"
        lines.append(
            f"| {r['scenario']} | {r['connections']} | {p['rps']:.0f} | {w['rps']:.0f} | {ratio} | "
            f"{p['p50_ms']:.3f} / {p['p99_ms']:.3f} | {w['p50_ms']:.3f} / {w['p99_ms']:.3f} | "
            f"{p['first_byte_p50_ms']:.3f} / {w['first_byte_p50_ms']:.3f} | "
            f"{p['cpu_us_per_request']:.0f} | {w['cpu_us_per_request']:.0f} | {added} |"
        )
    noisy = [r for r in results["runs"] if r.get("noisy")]
    if noisy:
        lines.append("")
        lines.append(f"Noisy rows (plain Envoy's own rps moved more than {NOISY_SPREAD}x between rounds: the "
                     "machine set these numbers; run again): " + ", ".join(
                         f"{r['scenario']} at {r['connections']} ({r['noisy']['plain_rps_min']}–"
                         f"{r['noisy']['plain_rps_max']} rps)" for r in noisy))
    rss = results.get("rss_mb", {})
    lines.append("")
    lines.append(f"weir.wasm {results['wasm_bytes'] / 1e6:.2f} MB; Envoy with Weir ready in {results['weir_ready_s']} s; "
                 f"RSS after the run: plain {rss.get('plain')} MB, weir {rss.get('weir')} MB")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
