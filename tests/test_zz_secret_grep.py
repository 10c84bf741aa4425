"""Runs last (pytest runs files in order): greps every file the test run produced —
audit logs, Envoy logs, rendered configs, key files — for every secret the tests used.

Secrets: the demo key, every key issued by `weir keys new` (they all look like
`wk_live_` + 32 characters), the mock provider credentials, the fake real-provider keys,
and JWTs. Only the filter bundle (which must carry provider credentials to Envoy) and the
mock provider's own log are exempt; so is the per-attempt filter's bundle."""
from __future__ import annotations

import re
from pathlib import Path

from conftest import DEMO_KEY

SECRET_PATTERNS = [
    re.escape(DEMO_KEY),
    r"wk_live_[A-Za-z0-9]{32}",
    r"mock-openai-credential",
    r"mock-anthropic-credential",
    r"sk-test-openai-7f1e2d3c4b5a",
    r"sk-ant-test-9a8b7c6d5e4f",
    r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]+",
]
EXEMPT = {"weir-filter.json", "weir-upstream-filter.json", "mock.log"}


def test_no_secret_in_any_output_of_the_run(tmp_path_factory):
    base = Path(tmp_path_factory.getbasetemp())
    scanned, leaks = 0, []
    pattern = re.compile("|".join(SECRET_PATTERNS).encode())
    for path in base.rglob("*"):
        if not path.is_file() or path.name in EXEMPT or any(path.name.startswith(f".{e}") for e in EXEMPT):
            continue
        data = path.read_bytes()
        scanned += 1
        for m in pattern.finditer(data):
            leaks.append(f"{path.relative_to(base)}: {m.group(0)[:16].decode(errors='replace')}...")
    assert scanned > 20, f"only {scanned} files scanned: did the other tests run?"
    assert not leaks, "secrets found in outputs:\n" + "\n".join(leaks[:20])
