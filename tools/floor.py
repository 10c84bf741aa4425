#!/usr/bin/env python3
"""make bench-floor: what any proxy-wasm filter of Weir's shape costs in this Envoy, beside Weir.

#9 asks for the full buffered path at >= 0.85 of plain Envoy's requests per second and for at
most 0.1 ms more before a stream's first byte. This puts numbers on the part of that no
filter code can avoid. The same load as `make bench`, against the same upstream, through:

- plain: Envoy without filters (the `make bench` baseline);
- empty: plain + a proxy-wasm filter whose callbacks all continue at once;
- body: plain + a filter that holds the headers until the body has arrived, reads the body
  and writes it back, and sets the routing header (what any filter that routes on the model
  named in the body must do);
- shape: `body` + Weir's moves on the answer (response headers read and four set, a JSON
  answer read whole and written back, a stream's events read and written one by one, a
  record left in filter state);
- shape-in-weir-config: `shape` in Weir's place in Weir's own Envoy configuration (its
  access logs, local-reply mappers, health check, routing by header);
- weir: Envoy + Weir, as in `make bench`.

The filters are tools/floor-filter (one module; the plugin configuration names the mode).
Rounds alternate the proxies (`--rounds`, default 5) and the medians are reported: for each
proxy `buffered` at 16 connections (requests per second, CPU per request) and the paced
stream's first byte at one connection (`streamed-paced`, the streaming target's measure).
Prints a Markdown table, then Weir's own share (Weir less `shape-in-weir-config`, the part of
the cost Weir's code decides), and writes target/bench/floor.json. A benchmark, not a test: it
fails only when a proxy does not do what it stands for (every answer 200; the shape
filters' headers on the answer).
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402
import devstack  # noqa: E402

FLOOR_WASM = devstack.ROOT / "target/weir-floor.wasm"
MODES = ("empty", "body", "shape")
PROXIES = ("plain", "empty", "body", "shape", "shape-in-weir-config", "weir")


def with_filter(yaml: str, mode: str) -> str:
    """`bench.plain_yaml` with the floor filter in `mode` before the router."""
    wasm = f"""          - name: envoy.filters.http.wasm
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                vm_config:
                  runtime: envoy.wasm.runtime.v8
                  code: {{ local: {{ filename: {FLOOR_WASM} }} }}
                configuration:
                  "@type": type.googleapis.com/google.protobuf.StringValue
                  value: {mode}
                allow_on_headers_stop_iteration: true
"""
    marker = "          http_filters:\n"
    if marker not in yaml:
        raise RuntimeError("bench.plain_yaml changed: no http_filters list to put the floor filter in")
    return yaml.replace(marker, marker + wasm, 1)


def weir_stack(workdir: Path, name: str, upstream_port: int, floor_mode: str | None = None) -> devstack.Stack:
    """Envoy with Weir's configuration (as `make bench` runs it); with `floor_mode`, the
    floor filter takes Weir's module's place in it."""
    config = workdir / "weir.toml"
    config.write_text(devstack.sample_config_text().replace('default = "standard"\n', ""))

    def floor_in_weirs_place(stack: devstack.Stack) -> None:
        ecds = json.loads(stack.filter_config.read_text())
        wasm = ecds["resources"][0]["typed_config"]["config"]
        wasm["vm_config"]["code"]["local"]["filename"] = str(FLOOR_WASM)
        wasm["vm_config"]["vm_id"] = "floor"
        wasm["configuration"]["value"] = floor_mode
        stack.filter_config.write_text(json.dumps(ecds))

    stack, _ = bench.weir_stack(workdir / name, config, upstream_port,
                                edit_filter=floor_in_weirs_place if floor_mode else None)
    return stack


def check(name: str, proxy) -> None:
    """One request before measuring: each proxy must do what it stands for."""
    method, path, body, headers = bench.SCENARIOS["buffered"]
    request = urllib.request.Request(f"http://127.0.0.1:{proxy.port}{path}", data=json.dumps(body).encode(),
                                     method=method)
    for header in headers:
        key, value = header.split(": ", 1)
        request.add_header(key, value)
    with urllib.request.urlopen(request, timeout=10) as answer:
        got = dict(answer.headers)
        if answer.status != 200:
            raise RuntimeError(f"{name}: status {answer.status}")
    shaped = name.startswith("shape") or name == "weir"
    if shaped != ("x-weir-tier" in {k.lower() for k in got}):
        raise RuntimeError(f"{name}: answer headers {sorted(got)} are not what this proxy sets")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--out", type=Path, default=devstack.ROOT / "target/bench/floor.json")
    args = parser.parse_args()
    if not FLOOR_WASM.exists():
        parser.error(f"{FLOOR_WASM} is missing: run `make bench-floor`")
    workdir = Path(tempfile.mkdtemp(prefix="weir-floor-"))
    stoppers: list = []
    unexpected: list[str] = []
    samples: dict[str, list[dict]] = {name: [] for name in PROXIES}
    try:
        mock = subprocess.Popen([str(bench.MOCK), "--listen", "bench=127.0.0.1:0"], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True)
        stoppers.append(lambda: (mock.terminate(), mock.wait(timeout=10)))
        mock_port = int(json.loads(mock.stdout.readline())["listening"]["bench"].rsplit(":", 1)[1])
        upstream = bench.Envoy(workdir, "upstream", bench.upstream_yaml(mock_port))
        stoppers.append(upstream.stop)
        proxies = {}
        for name in PROXIES:
            if name == "plain":
                proxies[name] = bench.Envoy(workdir, name, bench.plain_yaml(upstream.port))
            elif name in MODES:
                proxies[name] = bench.Envoy(workdir, name, with_filter(bench.plain_yaml(upstream.port), name))
            else:
                floor_mode = "shape" if name == "shape-in-weir-config" else None
                proxies[name] = weir_stack(workdir, name, upstream.port, floor_mode)
            stoppers.append(proxies[name].stop)
            check(name, proxies[name])
        for round_ in range(args.rounds):
            for name, proxy in proxies.items():
                sample = {}
                for scenario, connections in (("buffered", 16), ("streamed-paced", 1)):
                    result = bench.run_load(proxy, workdir, scenario, connections, args.seconds, args.warmup)
                    wrong = bench.unexpected_statuses(scenario, "weir" if name == "weir" else "plain", result)
                    if wrong or result.get("errors"):
                        unexpected.append(f"{name} {scenario}: statuses {wrong}, {result.get('errors')} failed")
                    sample[scenario] = result
                samples[name].append(sample)
                print(f"round {round_ + 1}/{args.rounds} {name:22} {sample['buffered']['rps']:8.0f} rps  "
                      f"first byte {sample['streamed-paced']['first_byte_p50_ms']:.3f} ms", file=sys.stderr, flush=True)
    finally:
        for stop in reversed(stoppers):
            stop()
        shutil.rmtree(workdir, ignore_errors=True)

    def median(name: str, scenario: str, field: str) -> float:
        return statistics.median(s[scenario][field] for s in samples[name])

    rows = []
    for name in PROXIES:
        rows.append({
            "proxy": name,
            "rps": round(median(name, "buffered", "rps")),
            "cpu_us_per_request": round(median(name, "buffered", "cpu_us_per_request"), 1),
            "paced_first_byte_ms": round(median(name, "streamed-paced", "first_byte_p50_ms"), 3),
        })
    plain = rows[0]
    for row in rows:
        row["rps_ratio"] = round(row["rps"] / plain["rps"], 2) if plain["rps"] else None
        row["added_cpu_us"] = round(row["cpu_us_per_request"] - plain["cpu_us_per_request"], 1)
        row["added_first_byte_ms"] = round(row["paced_first_byte_ms"] - plain["paced_first_byte_ms"], 3)
    noisy = bench.noisy_rounds([s["buffered"]["rps"] for s in samples["plain"]])
    # What Weir's own work adds: Weir against a filter of its shape in its own Envoy
    # configuration, in the same rounds (the part of the cost Weir's code decides).
    by_proxy = {row["proxy"]: row for row in rows}
    weir, shape = by_proxy["weir"], by_proxy["shape-in-weir-config"]
    weir_over_shape = {
        "added_cpu_us": round(weir["cpu_us_per_request"] - shape["cpu_us_per_request"], 1),
        "added_first_byte_ms": round(weir["paced_first_byte_ms"] - shape["paced_first_byte_ms"], 3),
    }
    results = {"rounds": args.rounds, "seconds": args.seconds, "rows": rows, "unexpected": unexpected,
               "noisy": noisy, "weir_over_shape": weir_over_shape, "samples": samples}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(table(rows, args.rounds))
    print(f"\nWeir's own work (weir − shape-in-weir-config, same rounds): "
          f"{weir_over_shape['added_cpu_us']:+} µs CPU per request, "
          f"{weir_over_shape['added_first_byte_ms']:+.3f} ms paced first byte")
    if noisy:
        print(f"\nNoisy run: plain Envoy's own rps moved {noisy['plain_rps_min']}–{noisy['plain_rps_max']} between "
              f"rounds (more than {bench.NOISY_SPREAD}x): the machine set these numbers; run again.")
    print(f"\nJSON: {args.out}")
    for line in unexpected:
        print(f"WARNING: {line}", file=sys.stderr)
    return 1 if unexpected else 0


def table(rows: list[dict], rounds: int) -> str:
    lines = [f"Medians of {rounds} alternating rounds. buffered: 16 connections; first byte: the paced stream, "
             "1 connection.", "",
             "| proxy | buffered rps | share of plain | CPU µs/req | added CPU µs | paced first byte ms | added ms |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['proxy']} | {r['rps']} | {r['rps_ratio']} | {r['cpu_us_per_request']} | "
                     f"{r['added_cpu_us']:+} | {r['paced_first_byte_ms']} | {r['added_first_byte_ms']:+.3f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
