"""Rate limits, budgets, runs and idempotency against Envoy with two workers and
concurrent clients: the counters live in Envoy's shared data, shared by both workers."""
from __future__ import annotations

import concurrent.futures
import re
import threading
import time

import httpx
import pytest

import shutil

import devstack
from conftest import ROOT, Running, new_key, serving

MESSAGES = [{"role": "user", "content": "count me"}]


@pytest.fixture(scope="module")
def lim(built, tmp_path_factory) -> Running:
    workdir = tmp_path_factory.mktemp("limits")
    policies = workdir / "policies"
    shutil.copytree(ROOT / "policies", policies)
    # A policy that tightens a limit using the usage Weir puts in its input.
    (policies / "throttle.rego").write_text('''package weir.policy.throttle

deny contains {"reason": "This key may make 2 requests a day under the throttle policy.", "status": 429, "retry_after": input.usage.key.requests_per_day.reset_seconds} if {
	input.usage.key.requests_per_day.used >= 2
}
''')
    config = workdir / "weir.toml"
    text = devstack.sample_config_text().replace(f'dir = "{ROOT / "policies"}"', f'dir = "{policies}"')
    config.write_text(text + '''
[limits]
idempotency_window_seconds = 600

[limits.keys.rl-key]
requests_per_minute = 20

[limits.keys.count-key]
requests_per_day = 100000

[limits.teams.tok-team]
tokens_per_day = 300

[limits.teams.spend-team]
spend_per_day = "0.00003"

[limits.per_run]
calls = 3

[limits.per_user]
requests_per_minute = 3

[limits.keys.ct-key]
requests_per_minute = 3
''')
    keys = {}
    for key_id, team in [("rl-key", "rl"), ("count-key", "count"), ("tok-key", "tok-team"), ("spend-key", "spend-team"),
                         ("run-key", "runs"), ("user-key", "users"),
                         ("ct-key", "ct")]:
        keys[key_id] = new_key(config, "--name", key_id, "--id", key_id, "--team", team, "--scopes", "*")
    stack = devstack.Stack(workdir / "stack", config=config, concurrency=2)
    running = Running(stack)
    running.keys = keys
    with serving(stack, running):
        yield running


HTTP = httpx.Client(timeout=30, limits=httpx.Limits(max_connections=32))


def chat(lim, key, headers=None, body=None):
    return HTTP.post(lim.url + "/v1/chat/completions", json=body or {"model": "fast", "messages": MESSAGES},
                     headers={"authorization": f"Bearer {key}", **(headers or {})})


def same_minute() -> None:
    """Bursts must not straddle a minute boundary (fixed windows)."""
    if time.time() % 60 > 50:
        time.sleep(61 - time.time() % 60)


def test_requests_per_minute_allows_exactly_n_across_both_workers(lim):
    same_minute()
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(lambda i: chat(lim, lim.keys["rl-key"], {"x-weir-request-id": f"rl-{i}-{time.time_ns()}"}), range(35)))
    statuses = sorted(r.status_code for r in responses)
    assert statuses.count(200) == 20 and statuses.count(429) == 15, statuses
    refused = [r for r in responses if r.status_code == 429]
    for r in refused:
        retry = int(r.headers["retry-after"])
        assert 1 <= retry <= 60
        assert r.headers["x-ratelimit-limit-requests"] == "20"
        assert r.headers["x-ratelimit-remaining-requests"] == "0"
        assert r.headers["x-ratelimit-reset-requests"] == f"{retry}s"
        assert r.json()["error"]["code"] == "rate_limit_exceeded"
        assert "20 requests per minute (key rl-key)" in r.json()["error"]["message"]
    allowed = [r for r in responses if r.status_code == 200]
    remaining = sorted(int(r.headers["x-ratelimit-remaining-requests"]) for r in allowed)
    assert remaining == list(range(20)), remaining  # each of the 20 got its own slot


def test_each_end_user_has_a_limit_of_their_own_per_key(lim):
    same_minute()
    key = lim.keys["user-key"]
    user = f"alice-{time.time_ns()}"
    assert [chat(lim, key, {"x-weir-user": user}).status_code for _ in range(3)] == [200, 200, 200]
    refused = chat(lim, key, {"x-weir-user": user})
    assert refused.status_code == 429
    assert refused.headers["x-ratelimit-limit-requests"] == "3"
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    error = refused.json()["error"]
    assert error["code"] == "rate_limit_exceeded"
    assert f"3 requests per minute (user user-key/{user})" in error["message"]
    # Another user of the same key, the same user of another key, and no user: not limited.
    assert chat(lim, key, {"x-weir-user": user + "-bob"}).status_code == 200
    assert chat(lim, lim.keys["run-key"], {"x-weir-user": user}).status_code == 200
    assert chat(lim, key).status_code == 200


def test_a_new_counters_first_writes_on_both_workers_both_count(lim):
    """Pairs of simultaneous first requests of a new user, each on a new connection (so often
    on both workers): the second first write must not overwrite the first. Before a write
    after reading no value was create-only, ~10% of such pairs both got "2 remaining"."""
    key = lim.keys["user-key"]
    body = {"model": "fast", "messages": MESSAGES}
    lost = []
    for i in range(200):
        if time.time() % 60 > 58:  # both requests of a pair in one minute window
            time.sleep(61 - time.time() % 60)
        user = f"pair-{i}-{time.time_ns()}"
        clients = [httpx.Client(timeout=30) for _ in range(2)]
        results = [None, None]
        try:
            for client in clients:  # connected first, so the two race only in Weir
                client.get(lim.url + "/v1/models", headers={"authorization": f"Bearer {key}"})
            start = threading.Barrier(2)

            def send(j: int) -> None:
                start.wait()
                r = clients[j].post(lim.url + "/v1/chat/completions", json=body,
                                    headers={"authorization": f"Bearer {key}", "x-weir-user": user})
                results[j] = (r.status_code, r.headers.get("x-ratelimit-remaining-requests"))

            threads = [threading.Thread(target=send, args=(j,)) for j in range(2)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        finally:
            for client in clients:
                client.close()
        if sorted(results) != [(200, "1"), (200, "2")]:
            lost.append((user, results))
    assert not lost, f"{len(lost)} of 200 pairs lost a count: {lost[:3]}"


def test_counting_tokens_is_not_a_request_against_the_limits(lim):
    same_minute()
    key = lim.keys["ct-key"]
    for _ in range(6):
        counted = HTTP.post(lim.url + "/v1/messages/count_tokens?beta=true",
                            json={"model": "fast", "messages": MESSAGES},
                            headers={"x-api-key": key, "anthropic-version": "2023-06-01"})
        assert counted.status_code == 200 and counted.json()["input_tokens"] > 0
    assert [chat(lim, key).status_code for _ in range(4)] == [200, 200, 200, 429]


def test_counters_agree_with_the_audit_records_across_workers(lim):
    key = lim.keys["count-key"]
    ids = [f"count-{i}-{time.time_ns()}" for i in range(120)]
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(lambda rid: chat(lim, key, {"x-weir-request-id": rid}), ids))
    assert all(r.status_code == 200 for r in responses)
    remaining = min(int(r.headers["x-ratelimit-remaining-requests"]) for r in responses)
    counted = 100000 - remaining
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        records = [r for r in lim.audit_records() if r.get("key_id") == "count-key"]
        if len(records) >= counted:
            break
        time.sleep(0.1)
    assert counted == len(records) == len(ids)


def test_a_token_budget_stops_the_team_without_overshoot(lim):
    key = lim.keys["tok-key"]
    body = {"model": "fast", "messages": MESSAGES, "max_tokens": 20}
    statuses = []
    for i in range(40):
        r = chat(lim, key, {"x-weir-request-id": f"tok-{i}-{time.time_ns()}"}, body)
        statuses.append(r.status_code)
        if r.status_code == 429:
            assert "300 tokens per day (team tok-team)" in r.json()["error"]["message"]
            break
    assert 429 in statuses and statuses.count(200) >= 3
    time.sleep(0.5)
    used = sum(r["usage"]["total_tokens"] for r in lim.audit_records() if r.get("team") == "tok-team" and r.get("usage"))
    # Reservations (prompt estimate + max_tokens) cover the real usage here, so no overshoot.
    assert used <= 300, used


def test_a_spend_budget_is_402(lim):
    key = lim.keys["spend-key"]
    body = {"model": "fast", "messages": MESSAGES, "max_tokens": 10}
    for i in range(30):
        r = chat(lim, key, {"x-weir-request-id": f"spend-{i}-{time.time_ns()}"}, body)
        if r.status_code != 200:
            break
    assert r.status_code == 402
    error = r.json()["error"]
    assert error["code"] == "budget_exhausted" and "team budget of 0.00003 per day" in error["message"]
    time.sleep(0.5)
    spent = sum(r["cost"]["picos"] for r in lim.audit_records() if r.get("team") == "spend-team" and r.get("cost"))
    assert spent <= 30 * 10**6  # 0.00003 = 30 micro-units


def test_a_run_closes_at_its_limit_and_can_start_again(lim):
    key = lim.keys["run-key"]
    run = f"run-{time.time_ns()}"
    statuses = [chat(lim, key, {"x-weir-run-id": run}).status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 409]
    r = chat(lim, key, {"x-weir-run-id": run})
    assert r.status_code == 409 and r.json()["error"]["code"] == "run_closed"
    assert "x-weir-new-run: true" in r.json()["error"]["message"]
    assert chat(lim, key, {"x-weir-run-id": run, "x-weir-new-run": "true"}).status_code == 200
    assert chat(lim, key, {"x-weir-run-id": run + "-other"}).status_code == 200


def test_a_repeated_request_id_is_409_naming_the_original(lim, rid):
    key = lim.keys["run-key"]
    first = chat(lim, key, {"x-weir-request-id": rid})
    assert first.status_code == 200
    again = chat(lim, key, {"x-weir-request-id": rid})
    assert again.status_code == 409
    error = again.json()["error"]
    assert error["code"] == "duplicate_request" and rid in error["message"]
    assert len(lim.received(rid)) == 1  # the repeat was not paid for
    # Another key may use the same id.
    assert chat(lim, lim.keys["count-key"], {"x-weir-request-id": rid}).status_code == 200


def test_ratelimit_headers_on_every_response(lim, rid):
    r = chat(lim, lim.keys["count-key"], {"x-weir-request-id": rid})
    assert r.status_code == 200
    assert r.headers["x-ratelimit-limit-requests"] == "100000"
    assert int(r.headers["x-ratelimit-remaining-requests"]) < 100000
    assert r.headers["x-ratelimit-reset-requests"].endswith("s")


def test_policies_see_current_usage_and_can_tighten_limits(lim):
    # count-key has used its daily counter in the tests above; the policy sees that.
    refused = chat(lim, lim.keys["count-key"], {"x-weir-policy": "throttle"})
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert error["code"] == "policy_denied" and "2 requests a day" in error["message"]
    assert 1 <= int(refused.headers["retry-after"]) <= 86400
    # A key without key limits has no such usage: the policy lets it through.
    assert chat(lim, lim.keys["run-key"], {"x-weir-policy": "throttle"}).status_code == 200


@pytest.fixture(scope="module")
def tiny(built, tmp_path_factory) -> Running:
    """A stack whose per-user counter tables have 8 slots each, its run and request id tables 4."""
    workdir = tmp_path_factory.mktemp("tiny-user-table")
    config = workdir / "weir.toml"
    config.write_text(devstack.sample_config_text() + '''
[limits]
user_slots = 8
run_slots = 4
idempotency_slots = 4

[limits.per_user]
requests_per_minute = 2

[limits.per_run]
calls = 2

[limits.keys.tiny-key]
requests_per_minute = 1000
''')
    running = Running(devstack.Stack(workdir / "stack", config=config, concurrency=2))
    running.keys = {"tiny-key": new_key(config, "--name", "tiny", "--id", "tiny-key", "--team", "tiny", "--scopes", "*")}
    with serving(running.stack, running):
        yield running


def test_end_users_beyond_the_table_pass_uncounted_and_the_key_still_counts(tiny):
    """Envoy's shared data cannot delete keys, so end users (named by the client) are counted
    in fixed tables: a request of a user with no free slot in this window goes through
    uncounted, says so in its audit record, and still counts against its key."""
    same_minute()
    key = tiny.keys["tiny-key"]
    stamp = time.time_ns()
    ids = [f"tiny-{i}-{stamp}" for i in range(40)]
    for i, rid in enumerate(ids):
        r = chat(tiny, key, {"x-weir-user": rid, "x-weir-request-id": rid})
        assert r.status_code == 200, r.text
        # The tightest limit: the user's own (1 of 2 left) while it has a slot, else the key's.
        expected = "1" if i < 8 else str(1000 - (i + 1))
        assert r.headers["x-ratelimit-remaining-requests"] == expected, (i, dict(r.headers))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        records = {r["request_id"]: r for r in tiny.audit_records() if r["request_id"] in ids}
        if len(records) == len(ids):
            break
        time.sleep(0.1)
    assert [records[rid]["limits_uncounted"] for rid in ids] == [False] * 8 + [True] * 32
    # And in a metric, for alerts: the table is too small for the users of a window.
    stats = httpx.get(tiny.stack.admin + "/stats/prometheus", timeout=10).text
    uncounted = re.search(r"^weir_limits_uncounted_total(?:\{\})? (\d+)$", stats, re.M)
    assert uncounted and int(uncounted.group(1)) >= 32, [l for l in stats.splitlines() if "uncounted" in l]
    # The users with a slot are still held to their limit (2 a minute), on either worker.
    first = ids[0]
    assert chat(tiny, key, {"x-weir-user": first}).status_code == 200
    refused = chat(tiny, key, {"x-weir-user": first})
    assert refused.status_code == 429
    assert f"2 requests per minute (user tiny-key/{first})" in refused.json()["error"]["message"]


def test_runs_beyond_the_table_pass_uncounted(tiny):
    """The run table (4 slots here) counts 4 runs at once; a fifth is let through uncounted
    rather than refused, and says so in its audit record."""
    key = tiny.keys["tiny-key"]
    stamp = time.time_ns()
    runs = [f"run-{i}-{stamp}" for i in range(6)]
    rids = []
    for run in runs:
        for call in range(3):
            rid = f"{run}-{call}"
            rids.append(rid)
            r = chat(tiny, key, {"x-weir-run-id": run, "x-weir-request-id": rid})
            # Counted runs close after 2 calls; uncounted ones never do.
            counted = run in runs[:4]
            assert r.status_code == (409 if counted and call == 2 else 200), (run, call, r.text)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        records = {r["request_id"]: r for r in tiny.audit_records() if r["request_id"] in rids}
        if len(records) == len(rids):
            break
        time.sleep(0.1)
    assert [records[rid]["limits_uncounted"] for rid in rids] == [False] * 12 + [True] * 6


def test_a_full_request_id_table_still_catches_every_repeat(tiny):
    """Four request ids in a table of four slots: every repeat is caught (an id is written
    to a free slot of its neighbourhood, not over another live id; with one slot per id, as
    before, four ids shared a slot nine times in ten); a fifth id still gets through."""
    key = tiny.keys["tiny-key"]
    time.sleep(1.1)  # newer than every id the other tests left in the table
    stamp = time.time_ns()
    ids = [f"idem-{i}-{stamp}" for i in range(4)]
    assert [chat(tiny, key, {"x-weir-request-id": rid}).status_code for rid in ids] == [200] * 4
    repeats = [chat(tiny, key, {"x-weir-request-id": rid}) for rid in ids]
    assert [r.status_code for r in repeats] == [409] * 4
    assert all(r.json()["error"]["code"] == "duplicate_request" for r in repeats)
    # It takes the oldest one's slot, and a metric says an id was evicted (size the table).
    before = evictions(tiny)
    assert chat(tiny, key, {"x-weir-request-id": f"idem-new-{stamp}"}).status_code == 200
    time.sleep(0.3)  # the metric is written in the log phase, after the response
    assert evictions(tiny) == before + 1


def evictions(running: Running) -> int:
    stats = httpx.get(running.stack.admin + "/stats/prometheus", timeout=10).text
    found = re.search(r"^weir_idempotency_evictions_total(?:\{\})? (\d+)$", stats, re.M)
    return int(found.group(1)) if found else 0
