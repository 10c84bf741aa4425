"""Integration harness: builds weir.wasm and the host tools once per run, then starts the
real system (mock provider + Envoy with the filter) on free ports and always stops it."""
from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
import uuid
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))  # devstack, soak

import devstack  # noqa: E402

DEMO_KEY = devstack.DEMO_KEY


@pytest.fixture(scope="session")
def built() -> None:
    """Builds once per test run (a no-op when `make` already built everything)."""
    for args in (["cargo", "build", "--target", "wasm32-wasip1", "--release", "--lib"], ["cargo", "build", "--bins"]):
        subprocess.run(args, cwd=ROOT, check=True)


class Running:
    """A started stack plus the helpers tests use to look at what happened."""

    def __init__(self, stack: devstack.Stack):
        self.stack = stack

    @property
    def url(self) -> str:
        return self.stack.url

    def audit_records(self) -> list[dict]:
        if not self.stack.audit_log.exists():
            return []
        records = []
        text = self.stack.audit_log.read_text()
        # Envoy may be writing while we read: a last line without its newline is not
        # finished yet (it is read complete next time), every other line must be a record.
        lines = text.split("\n")[:-1]
        for line in lines:
            records.append(json.loads(line))  # every line must be a JSON record
        return records

    def audit(self, request_id: str, timeout: float = 10.0) -> dict:
        """The one audit record of `request_id` (waits for Envoy's flush, then checks it is alone)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [r for r in self.audit_records() if r["request_id"] == request_id]
            if found:
                time.sleep(2 * self.stack.flush_ms / 1000)
                found = [r for r in self.audit_records() if r["request_id"] == request_id]
                assert len(found) == 1, f"expected one audit record for {request_id}, got {found}"
                return found[0]
            time.sleep(0.05)
        raise AssertionError(f"no audit record for {request_id} within {timeout}s")

    def received(self, request_id: str) -> list[dict]:
        """What the mock provider received for `request_id`."""
        url = f"{self.stack.mock_url('openai')}/_mock/requests?request_id={request_id}"
        with urllib.request.urlopen(url, timeout=5) as r:
            return json.loads(r.read())

    def stats(self) -> dict[str, int]:
        with urllib.request.urlopen(self.stack.admin + "/stats?format=json", timeout=5) as r:
            data = json.loads(r.read())
        return {s["name"]: s["value"] for s in data["stats"] if "name" in s and "value" in s}


def new_key(config: Path, *args: str) -> str:
    """A fresh client key made with the real CLI (`weir keys new`) into `config`; returns the secret."""
    result = subprocess.run([str(devstack.WEIR_BIN), "keys", "new", "-c", str(config), *args],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@contextmanager
def serving(stack: devstack.Stack, running: Running | None = None):
    """Starts `stack` and always stops it; yields `running` (a plain `Running` when not given)."""
    stack.start()
    try:
        yield running or Running(stack)
    finally:
        stack.stop()


@pytest.fixture(scope="session")
def weir(built, tmp_path_factory) -> Running:
    with serving(devstack.Stack(tmp_path_factory.mktemp("stack"))) as running:
        yield running


@pytest.fixture
def rid() -> str:
    """A fresh request id, sent as x-weir-request-id to find the request everywhere."""
    return "test-" + uuid.uuid4().hex
