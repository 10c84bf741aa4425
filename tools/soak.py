#!/usr/bin/env python3
"""Soak: mixed traffic through Envoy + Weir (two Envoy workers) for a bounded time, on
loopback only. Passes when no request got an unexpected status, Envoy's memory is flat
after warm-up, and the audit log holds exactly one record per request sent.

    make soak                 # 4 minutes (SOAK_SECONDS to change)
    tools/soak.py --seconds 20
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import devstack  # noqa: E402

KEY = devstack.DEMO_KEY
MSG = [{"role": "user", "content": "soak test"}]
OA = {"authorization": f"Bearer {KEY}"}
AN = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}

# (name, method, path, json body or raw bytes, headers, expected status, stream)
MIX = [
    ("chat", "POST", "/v1/chat/completions", {"model": "fast", "messages": MSG}, OA, 200, False),
    ("chat-stream", "POST", "/v1/chat/completions", {"model": "balanced", "messages": MSG, "stream": True}, OA, 200, True),
    ("messages", "POST", "/v1/messages", {"model": "best", "max_tokens": 20, "messages": MSG}, AN, 200, False),
    ("messages-stream", "POST", "/v1/messages", {"model": "fast", "max_tokens": 20, "messages": MSG, "stream": True}, AN, 200, True),
    ("models", "GET", "/v1/models", None, OA, 200, False),
    ("model", "GET", "/v1/models/fast", None, OA, 200, False),
    ("count-tokens", "POST", "/v1/messages/count_tokens?beta=true", {"model": "balanced", "messages": MSG}, AN, 200, False),
    ("advice", "POST", "/v1/weir/advice", {"model": "fast", "messages": MSG}, OA, 200, False),
    ("bad-key", "POST", "/v1/chat/completions", {"model": "fast", "messages": MSG}, {"authorization": "Bearer wk_live_nope"}, 401, False),
    ("unknown-tier", "POST", "/v1/chat/completions", {"model": "nope", "messages": MSG}, OA, 404, False),
    ("bad-json", "POST", "/v1/chat/completions", b"{not json", {**OA, "content-type": "application/json"}, 400, False),
    ("provider-500", "POST", "/v1/chat/completions", {"model": "fast", "messages": MSG}, {**OA, "x-mock-status": "500"}, 500, False),
    ("dlp", "POST", "/v1/chat/completions", {"model": "fast", "messages": [{"role": "user", "content": "4111 1111 1111 1111"}]},
     {**OA, "x-weir-policy": "dlp"}, 403, False),
]


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


# Every request names a new end user, and users have (never reached) limits of every kind: Envoy's
# shared data cannot delete keys, so memory stays flat only if the users' counters live in
# bounded tables. The table is small so that it is full early in the warm-up.
LIMITS = """
[limits]
user_slots = 4096

[limits.per_user]
requests_per_minute = 1000000
requests_per_hour = 1000000
requests_per_day = 1000000
tokens_per_minute = 1000000000
tokens_per_day = 1000000000
spend_per_day = "1000000"
spend_per_month = "1000000"
"""


def soak(seconds: float, clients: int = 8, workdir: Path | None = None, log=print) -> dict:
    workdir = workdir or Path(tempfile.mkdtemp(prefix="weir-soak-"))
    config = workdir / "weir.toml"
    config.write_text(devstack.sample_config_text() + LIMITS)
    stack = devstack.Stack(workdir / "stack", config=config, concurrency=2, flush_ms=500)
    stack.start()
    sent = itertools.count()
    counts: dict[str, int] = {}
    unexpected: list[str] = []
    lock = threading.Lock()
    deadline = time.monotonic() + seconds
    samples: list[tuple[float, int]] = []

    def client(n: int) -> None:
        with httpx.Client(base_url=stack.url, timeout=30) as http:
            i = n
            while time.monotonic() < deadline:
                name, method, path, body, headers, expected, stream = MIX[i % len(MIX)]
                i += 1
                rid = f"soak-{n}-{i}"
                h = {**headers, "x-weir-request-id": rid, "x-weir-user": rid}
                kwargs = {"content": body} if isinstance(body, bytes) else ({"json": body} if body is not None else {})
                next(sent)
                try:
                    if stream:
                        with http.stream(method, path, headers=h, **kwargs) as r:
                            for _ in r.iter_bytes():
                                pass
                            status = r.status_code
                    else:
                        status = http.request(method, path, headers=h, **kwargs).status_code
                except httpx.HTTPError as e:
                    status = f"{type(e).__name__}"
                with lock:
                    counts[name] = counts.get(name, 0) + 1
                    if status != expected:
                        unexpected.append(f"{rid} {name}: {status} (expected {expected})")

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    start = time.monotonic()
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        samples.append((time.monotonic() - start, rss_kb(stack.envoy.pid)))
        time.sleep(1)
    for t in threads:
        t.join()
    total = next(sent)

    # Every request must have its record: wait for Envoy's access log flush.
    records = 0
    flush_deadline = time.monotonic() + 15
    while time.monotonic() < flush_deadline:
        records = len(stack.audit_log.read_text().splitlines()) if stack.audit_log.exists() else 0
        if records >= total:
            break
        time.sleep(0.2)
    time.sleep(1)
    records = len(stack.audit_log.read_text().splitlines())
    stack.stop()

    # Memory after warm-up: the first third of the run is warm-up; compare the medians of
    # the second and last thirds.
    after = [kb for t, kb in samples if t >= seconds / 3]
    third = max(1, len(after) // 2)
    early, late = statistics.median(after[:third] or [0]), statistics.median(after[-third:] or [0])
    growth_kb = late - early
    result = {
        "seconds": seconds,
        "requests": total,
        "rps": round(total / max(seconds, 1), 1),
        "by_kind": counts,
        "unexpected": len(unexpected),
        "audit_records": records,
        "rss_mb_after_warmup": round(early / 1024, 1),
        "rss_mb_end": round(late / 1024, 1),
        "rss_growth_mb": round(growth_kb / 1024, 1),
        "workdir": str(workdir),
    }
    result["passed"] = (
        not unexpected
        and records == total
        # Flat: less than 5% or 8 MB of growth between the two halves after warm-up.
        and growth_kb <= max(0.05 * early, 8 * 1024)
    )
    for line in unexpected[:10]:
        log("unexpected: " + line)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=240)
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()
    result = soak(args.seconds, args.clients)
    # The run's directory (audit log of every request: hundreds of MB) is kept only when
    # the soak failed, or when asked (SOAK_KEEP=1), to look into.
    if result["passed"] and not os.environ.get("SOAK_KEEP"):
        shutil.rmtree(result["workdir"], ignore_errors=True)
        result["workdir"] = "(removed; SOAK_KEEP=1 keeps it)"
    print(json.dumps(result, indent=2))
    print("soak: " + ("PASSED" if result["passed"] else "FAILED"))
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
