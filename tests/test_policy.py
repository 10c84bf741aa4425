"""Policy as code through the real Envoy: the sample policies enforced, the advice
endpoint, and policy changes picked up without restarting Envoy."""
from __future__ import annotations

import json
import shutil
import subprocess
import time

import anthropic
import httpx
import openai
import pytest

import devstack
from conftest import DEMO_KEY, ROOT, Running, new_key, serving

MESSAGES = [{"role": "user", "content": "hello"}]


class PolicyStack(Running):
    def __init__(self, stack, config, policies):
        super().__init__(stack)
        self.config, self.policies = config, policies

    def key(self, *args: str) -> str:
        return new_key(self.config, "--name", "t", *args)

    def deploy(self) -> None:
        result = self.stack.bundle(self.config)
        assert result.returncode == 0, result.stderr

    def add_policy(self, name: str, text: str, rid: str, headers: dict | None = None) -> httpx.Response:
        """Writes and deploys policy `name`; the first answer once Envoy has it (a 400
        `unknown_policy` until then), for the demo key with `headers`."""
        (self.policies / f"{name}.rego").write_text(text)
        self.deploy()
        chosen = {"x-weir-policy": name, **(headers or {})}
        deadline = time.monotonic() + 10
        while (response := self.chat(DEMO_KEY, rid, None, chosen)).status_code == 400:
            assert time.monotonic() < deadline, response.text
            time.sleep(0.05)
        return response

    def remove_policy(self, name: str) -> None:
        (self.policies / f"{name}.rego").unlink(missing_ok=True)
        self.deploy()

    def chat(self, key, rid, body=None, headers=None, path="/v1/chat/completions") -> httpx.Response:
        body = body or {"model": "fast", "messages": MESSAGES}
        h = {"authorization": f"Bearer {key}", "x-weir-request-id": rid, **(headers or {})}
        return httpx.post(self.url + path, json=body, headers=h, timeout=30)


@pytest.fixture(scope="module")
def pol(built, tmp_path_factory) -> PolicyStack:
    workdir = tmp_path_factory.mktemp("policy")
    policies = workdir / "policies"
    shutil.copytree(ROOT / "policies", policies)
    config = workdir / "weir.toml"
    config.write_text((ROOT / "envoy/weir.toml").read_text().replace('dir = "../policies"', 'dir = "policies"'))
    stack = devstack.Stack(workdir / "stack", config=config)
    p = PolicyStack(stack, config, policies)
    p.free = p.key("--team", "web", "--scopes", "*", "--meta", "plan=free")
    p.support = p.key("--team", "support", "--scopes", "*", "--meta", "plan=pro")
    p.contractor = p.key("--team", "contractors", "--scopes", "*", "--meta", "plan=enterprise")
    # No policy scope, and one for the DLP policies only.
    p.narrow = p.key("--team", "web", "--scopes", "chat,messages,model:*")
    p.dlp_only = p.key("--team", "web", "--scopes", "chat,model:*,policy:dl*")
    with serving(stack, p) as running:
        yield running


def test_plan_restriction_denies_with_the_policys_reason(pol, rid):
    response = pol.chat(pol.free, rid, {"model": "best", "messages": MESSAGES})
    assert response.status_code == 403
    error = response.json()["error"]
    assert error["code"] == "policy_denied"
    assert "Your plan `free` does not include `best`" in error["message"]
    assert pol.received(rid) == []
    record = pol.audit(rid)
    assert (record["policy"], record["decision"], record["outcome"]) == ("standard", "deny", "denied")
    assert "plan `free`" in record["reason"]
    assert record["policy_us"] >= 0


def test_policy_forces_a_tier(pol, rid):
    response = pol.chat(pol.free, rid, {"model": "balanced", "messages": MESSAGES})
    assert response.status_code == 200
    assert response.json()["model"] == "gpt-4o-mini"  # fast's model, not balanced's
    [received] = pol.received(rid)
    assert json.loads(received["body"])["model"] == "gpt-4o-mini"
    record = pol.audit(rid)
    assert (record["requested_model"], record["tier"], record["policy_tier"]) == ("balanced", "fast", "fast")


@pytest.mark.parametrize(
    "path, body, field",
    [
        ("/v1/chat/completions", {"model": "fast", "messages": MESSAGES, "max_tokens": 1000}, "max_tokens"),
        ("/v1/chat/completions", {"model": "fast", "messages": MESSAGES}, "max_completion_tokens"),
        ("/v1/chat/completions", {"model": "fast", "messages": MESSAGES, "max_completion_tokens": 100}, "max_completion_tokens"),
        ("/v1/messages", {"model": "fast", "messages": MESSAGES, "max_tokens": 4096}, "max_tokens"),
    ],
    ids=["lowered", "added", "already-below", "anthropic"],
)
def test_team_cap_is_what_the_provider_receives(pol, rid, path, body, field):
    headers = {"anthropic-version": "2023-06-01"} if path == "/v1/messages" else {}
    response = pol.chat(pol.support, rid, body, headers, path)
    assert response.status_code == 200, response.text
    [received] = pol.received(rid)
    sent = json.loads(received["body"])
    expected = min(body.get(field, 256), 256)
    assert sent[field] == expected
    assert pol.audit(rid)["max_tokens_cap"] == 256


def test_dlp_policy_chosen_by_header_or_body_blocks_secrets(pol, rid):
    card = {"model": "fast", "messages": [{"role": "user", "content": "charge 4111 1111 1111 1111"}]}
    response = pol.chat(DEMO_KEY, rid, card, {"x-weir-policy": "dlp"})
    assert response.status_code == 403
    assert "payment card" in response.json()["error"]["message"]
    assert "4111" not in response.text and "4111" not in json.dumps(pol.audit(rid))
    assert pol.received(rid) == []

    client = openai.OpenAI(base_url=pol.url + "/v1", api_key=DEMO_KEY, max_retries=0)
    with pytest.raises(openai.PermissionDeniedError) as raised:
        client.chat.completions.create(model="fast", messages=[{"role": "user", "content": "key sk-proj-abcdefghijklmnopqrstuvwxyz"}],
                                       extra_body={"weir": {"policy": "dlp"}})
    assert "an OpenAI API key" in str(raised.value) and "abcdefghij" not in str(raised.value)

    # Without the DLP policy (the default applies) the same text passes.
    assert pol.chat(DEMO_KEY, rid + "-std", card).status_code == 200
    # Clean text passes the DLP policy too.
    ok = pol.chat(DEMO_KEY, rid + "-ok", None, {"x-weir-policy": "dlp"})
    assert ok.status_code == 200
    assert pol.audit(rid + "-ok")["policy"] == "dlp"

    # Anthropic clients are checked the same way, system prompt included.
    client = anthropic.Anthropic(base_url=pol.url, api_key=DEMO_KEY, max_retries=0)
    with pytest.raises(anthropic.PermissionDeniedError):
        client.messages.create(model="fast", max_tokens=10, system="token AKIAIOSFODNN7EXAMPLE", messages=MESSAGES,
                               extra_headers={"x-weir-policy": "dlp"})


def test_unknown_policy_is_400(pol, rid):
    response = pol.chat(DEMO_KEY, rid, None, {"x-weir-policy": "nope"})
    assert response.status_code == 400
    assert response.json()["error"]["message"] == "Unknown policy `nope`. Known policies: dlp, standard."
    assert pol.received(rid) == []


def test_choosing_a_policy_needs_a_policy_scope(pol, rid):
    """A header must not step around a key's policy: choosing one needs `policy:<glob>`."""
    narrow, dlp_only = pol.narrow, pol.dlp_only
    secret = "sk-" + "a" * 40
    leaky = {"model": "fast", "messages": [{"role": "user", "content": f"my key is {secret}"}]}
    # Without a policy scope: 403 in the client's shape, nothing forwarded, and audited.
    refused = pol.chat(narrow, rid, leaky, {"x-weir-policy": "dlp"})
    assert refused.status_code == 403
    error = refused.json()["error"]
    assert (error["type"], error["code"]) == ("permission_error", "policy_not_allowed")
    assert error["message"] == "This key may not choose the policy `dlp`: it lacks a scope such as `policy:dlp`."
    assert pol.received(rid) == []
    record = pol.audit(rid)
    assert (record["decision"], record["outcome"], record["error"]) == ("deny", "denied", "policy_not_allowed")
    # The same in the body directive, and in the Anthropic shape.
    body = pol.chat(narrow, rid + "-b", {**leaky, "max_tokens": 5, "weir": {"policy": "dlp"}},
                    {"anthropic-version": "2023-06-01"}, path="/v1/messages")
    assert body.status_code == 403
    assert body.json()["type"] == "error" and body.json()["error"]["type"] == "permission_error"
    assert pol.received(rid + "-b") == []
    assert pol.audit(rid + "-b")["error"] == "policy_not_allowed"
    # Naming the policy that applies anyway needs no scope.
    same = pol.chat(narrow, rid + "-s", None, {"x-weir-policy": "standard"})
    assert same.status_code == 200, same.text
    assert pol.audit(rid + "-s")["policy"] == "standard"
    # A matching scope lets the caller choose: the DLP policy then applies (and denies).
    chosen = pol.chat(dlp_only, rid + "-d", leaky, {"x-weir-policy": "dlp"})
    assert chosen.status_code == 403 and chosen.json()["error"]["code"] == "policy_denied"
    assert pol.audit(rid + "-d")["policy"] == "dlp"
    # ...but only the policies its scope matches.
    other = pol.chat(dlp_only, rid + "-o", None, {"x-weir-policy": "nope"})
    assert other.status_code == 403 and other.json()["error"]["code"] == "policy_not_allowed"


def test_advice_endpoint_answers_without_calling_a_provider(pol, rid):
    allow = pol.chat(DEMO_KEY, rid, {"model": "balanced", "messages": MESSAGES}, path="/v1/weir/advice").json()
    assert allow["decision"] == "allow"
    assert (allow["tier"], allow["model"], allow["provider"], allow["cluster"], allow["policy"]) == (
        "balanced", "gpt-4.1-mini", "openai", "openai", "standard")
    deny = pol.chat(pol.free, rid + "-d", {"model": "best", "messages": MESSAGES}, path="/v1/weir/advice")
    assert deny.status_code == 200
    assert deny.json()["decision"] == "deny" and deny.json()["status"] == 403
    assert "plan `free`" in deny.json()["reason"]
    forced = pol.chat(pol.free, rid + "-f", {"model": "balanced", "messages": MESSAGES}, path="/v1/weir/advice").json()
    assert (forced["tier"], forced["model"]) == ("fast", "gpt-4o-mini")
    capped = pol.chat(pol.support, rid + "-c", None, path="/v1/weir/advice").json()
    assert capped["max_tokens"] == 256
    anthropic_shape = pol.chat(DEMO_KEY, rid + "-a", {"model": "best", "max_tokens": 5, "messages": MESSAGES},
                               {"anthropic-version": "2023-06-01"}, path="/v1/weir/advice").json()
    assert (anthropic_shape["provider"], anthropic_shape["model"]) == ("anthropic", "claude-opus-4-1")
    for suffix in ("", "-d", "-f", "-c", "-a"):
        assert pol.received(rid + suffix) == []
    record = pol.audit(rid + "-d")
    assert (record["endpoint"], record["decision"], record["status"]) == ("advice", "deny", 200)


def test_policy_changes_without_restarting_envoy(pol, rid):
    envoy_pid = pol.stack.envoy.pid
    assert pol.chat(pol.contractor, rid, {"model": "best", "messages": MESSAGES}).status_code in (200, 403)
    data_file = pol.policies / "data.json"
    original = data_file.read_text()
    data = json.loads(original)
    try:
        # Business hours that never include now: contractors lose `best`.
        data["business_hours"].update(days=[], start_hour=0, end_hour=24)
        data_file.write_text(json.dumps(data))
        pol.deploy()
        deadline = time.monotonic() + 10
        while (response := pol.chat(pol.contractor, rid, {"model": "best", "messages": MESSAGES})).status_code != 403:
            assert time.monotonic() < deadline, response.text
            time.sleep(0.05)
        assert "Monday to Friday" in response.json()["error"]["message"]
        # Every day, all day: back.
        data["business_hours"].update(days=[1, 2, 3, 4, 5, 6, 7])
        data_file.write_text(json.dumps(data))
        pol.deploy()
        deadline = time.monotonic() + 10
        while pol.chat(pol.contractor, rid, {"model": "best", "messages": MESSAGES}).status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        # A policy that does not compile is refused by the CLI; Envoy keeps the last good one.
        (pol.policies / "broken.rego").write_text("package weir.policy.broken\n\ndeny contains x if {\n")
        result = pol.stack.bundle(pol.config)
        assert result.returncode != 0 and "broken.rego:" in result.stderr
        assert pol.chat(pol.contractor, rid, {"model": "best", "messages": MESSAGES}).status_code == 200
    finally:
        data_file.write_text(original)
        (pol.policies / "broken.rego").unlink(missing_ok=True)
        pol.deploy()
    assert pol.stack.envoy.pid == envoy_pid and pol.stack.envoy.poll() is None


def test_policies_see_every_input_field_they_read(pol, rid):
    """The filter builds only the input fields the bundled policies read (found in their
    source by `weir bundle`): each field a policy names must still be there."""
    policy = {"x-weir-policy": "fields"}
    try:
        ok = pol.add_policy("fields", (
            "package weir.policy.fields\n\n"
            'deny contains "curl is not welcome" if input.request.headers["user-agent"] == "curl-test"\n\n'
            'deny contains "mallory is blocked" if input.directives.user == "mallory"\n\n'
            'deny contains "at most 1000 tokens" if input.params.max_tokens > 1000\n\n'
            'tags contains sprintf("team-tag:%s", [input.request.headers["x-team-tag"]])\n'
        ), rid, {"x-team-tag": "blue"})
        assert ok.status_code == 200, ok.text
        assert "team-tag:blue" in pol.audit(rid)["tags"]
        denied = {
            "curl is not welcome": pol.chat(DEMO_KEY, rid + "-ua", None, {**policy, "user-agent": "curl-test"}),
            "mallory is blocked": pol.chat(DEMO_KEY, rid + "-user", None, {**policy, "x-weir-user": "mallory"}),
            "at most 1000 tokens": pol.chat(DEMO_KEY, rid + "-max", {"model": "fast", "max_tokens": 2000,
                                                                   "messages": MESSAGES}, policy),
        }
        for reason, response in denied.items():
            assert response.status_code == 403, (reason, response.text)
            assert reason in response.json()["error"]["message"]
    finally:
        pol.remove_policy("fields")


def test_repeated_decisions_come_from_the_cache_and_are_enforced(pol, rid):
    """`standard` reads only the caller, the model and the time: a worker keeps its decision
    for the same key, model and second. A kept decision is enforced like a new one; `dlp`
    reads the messages and is never kept."""
    body = {"model": "balanced", "max_tokens": 4000, "messages": MESSAGES}
    with httpx.Client(timeout=30) as client:  # one connection: one worker's cache
        for i in range(10):
            h = {"authorization": f"Bearer {pol.support}", "x-weir-request-id": f"{rid}-{i}"}
            response = client.post(pol.url + "/v1/chat/completions", json=body, headers=h)
            assert response.status_code == 200, response.text
            dlp = client.post(pol.url + "/v1/chat/completions", json=body,
                              headers={**h, "x-weir-request-id": f"{rid}-dlp-{i}", "x-weir-policy": "dlp"})
            assert dlp.status_code == 200, dlp.text
    records = [pol.audit(f"{rid}-{i}") for i in range(10)]
    cached = [r for r in records if r["policy_cached"]]
    assert len(cached) >= 5, [(r["time"], r["policy_cached"]) for r in records]
    for r in records:
        # The support team's cap, whether decided afresh or kept.
        assert (r["policy"], r["decision"], r["max_tokens_cap"]) == ("standard", "allow", 256)
        assert "policy:standard" in r["tags"]
        [received] = pol.received(r["request_id"])
        assert json.loads(received["body"])["max_tokens"] == 256
    assert not any(pol.audit(f"{rid}-dlp-{i}")["policy_cached"] for i in range(10))


def test_decisions_on_the_end_user_are_kept_per_user(pol, rid):
    """A policy that reads the end user (`input.directives.user`), the endpoint and one
    header by name, not the run or request id (nor Envoy's `x-request-id` header): its
    decisions are kept per user and client, and each gets their own."""
    policy = {"x-weir-policy": "users"}
    try:
        ok = pol.add_policy("users", (
            "package weir.policy.users\n\n"
            'deny contains "mallory is blocked" if input.directives.user == "mallory"\n\n'
            'deny contains "curl is not welcome" if input.request.headers["user-agent"] == "curl-test"\n\n'
            'tags contains sprintf("endpoint:%s", [input.request.endpoint])\n'
        ), rid)
        assert ok.status_code == 200, ok.text
        # Bob calls with curl's user agent.
        users = ["alice", "mallory", "alice", "bob", "mallory"] * 4
        refusals = {"mallory": "mallory is blocked", "bob": "curl is not welcome"}
        with httpx.Client(timeout=30) as client:  # one connection: one worker's cache
            for i, user in enumerate(users):
                h = {"authorization": f"Bearer {DEMO_KEY}", "x-weir-request-id": f"{rid}-{i}",
                     "x-weir-user": user, **policy, **({"user-agent": "curl-test"} if user == "bob" else {})}
                response = client.post(pol.url + "/v1/chat/completions",
                                       json={"model": "fast", "messages": MESSAGES}, headers=h)
                if user in refusals:
                    assert response.status_code == 403, response.text
                    assert refusals[user] in response.json()["error"]["message"]
                else:
                    assert response.status_code == 200, response.text
        records = [pol.audit(f"{rid}-{i}") for i in range(len(users))]
        for user, r in zip(users, records):
            assert r["user"] == user and r["policy"] == "users"
            if user in refusals:
                assert (r["decision"], r["reason"]) == ("deny", refusals[user]), r
            else:
                assert r["decision"] == "allow" and "endpoint:chat_completions" in r["tags"], r
                assert len(pol.received(r["request_id"])) == 1
        # Each user's decision is kept (the run and request ids differ every time).
        for user in ("alice", "mallory", "bob"):
            assert any(r["policy_cached"] for u, r in zip(users, records) if u == user), (user, records)
    finally:
        pol.remove_policy("users")


def test_decision_cache_can_be_turned_off(pol, rid):
    original = pol.config.read_text()
    body = {"model": "balanced", "messages": MESSAGES}

    def cached_in_a_row(tag: str) -> list[bool]:
        with httpx.Client(timeout=30) as client:
            for i in range(6):
                h = {"authorization": f"Bearer {pol.support}", "x-weir-request-id": f"{rid}-{tag}-{i}"}
                assert client.post(pol.url + "/v1/chat/completions", json=body, headers=h).status_code == 200
        return [pol.audit(f"{rid}-{tag}-{i}")["policy_cached"] for i in range(6)]

    try:
        pol.config.write_text(original.replace("[policy]\n", "[policy]\ndecision_cache = false\n"))
        pol.deploy()
        deadline = time.monotonic() + 15
        attempt = 0
        while any(cached := cached_in_a_row(f"off{attempt}")):
            assert time.monotonic() < deadline, cached
            attempt += 1
    finally:
        pol.config.write_text(original)
        pol.deploy()
    deadline = time.monotonic() + 15
    attempt = 0
    while not any(cached_in_a_row(f"on{attempt}")):
        assert time.monotonic() < deadline
        attempt += 1


def test_policy_eval_time_is_a_metric(pol, rid):
    """Evaluations and kept decisions apart, by a `cached` label."""
    with httpx.Client(timeout=30) as client:  # one connection: one worker's cache
        for i in range(4):
            h = {"authorization": f"Bearer {pol.support}", "x-weir-request-id": f"{rid}-{i}"}
            assert client.post(pol.url + "/v1/chat/completions", json={"model": "fast", "messages": MESSAGES},
                               headers=h).status_code == 200
    text = httpx.get(pol.stack.admin + "/stats/prometheus").text
    counts = [line for line in text.splitlines() if line.startswith("weir_policy_eval_us_count{")]
    for cached in ("true", "false"):
        assert any('policy="standard"' in line and f'cached="{cached}"' in line for line in counts), counts


def test_cli_policy_test_and_eval(tmp_path):
    result = subprocess.run([str(devstack.WEIR_BIN), "policy", "test", "-c", str(ROOT / "envoy/weir.toml")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 failed" in result.stdout and "PASS weir.policy.dlp_test.test_card_numbers_are_blocked" in result.stdout
    request = tmp_path / "request.json"
    request.write_text(json.dumps({"model": "fast", "messages": [{"role": "user", "content": "4111 1111 1111 1111"}]}))
    result = subprocess.run([str(devstack.WEIR_BIN), "policy", "eval", "-c", str(ROOT / "envoy/weir.toml"),
                             "--policy", "dlp", "--input", str(request)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    decision = json.loads(result.stdout)
    assert decision["decision"] == "deny" and "payment card" in decision["reason"]
