"""Accounting you can bill from, against the real Envoy: usage for every API shape, exact
cost, directives, one audit record per request, the stripped usage chunk, response
metadata and Prometheus metrics."""
from __future__ import annotations

import json
import re
import time
import tomllib
from decimal import Decimal

import anthropic
import httpx
import openai
import pytest

import devstack
from conftest import DEMO_KEY, Running, serving

MESSAGES = [{"role": "user", "content": "count my tokens please"}]
AUTH = {"authorization": f"Bearer {DEMO_KEY}"}


@pytest.fixture(scope="module")
def acct(built, tmp_path_factory) -> Running:
    workdir = tmp_path_factory.mktemp("acct")
    text = devstack.sample_config_text()
    text = text.replace("stream_usage = true", "stream_usage = true\nresponse_metadata = true", 1)
    text += '\n[tiers.unpriced]\ntargets = [{ provider = "openai", model = "gpt-experimental" }]\n'
    config = workdir / "weir.toml"
    config.write_text(text)
    stack = devstack.Stack(workdir / "stack", config=config)
    with serving(stack) as running:
        yield running


PRICES = tomllib.loads(devstack.sample_config_text())["prices"]


def expected_picos(model: str, usage: dict) -> int:
    """The cost, computed independently of Weir with exact decimals."""
    p = {k: Decimal(v) * 1_000_000 for k, v in PRICES[model].items()}
    uncached = usage["prompt_tokens"] - usage["cached_tokens"] - usage["cache_write_tokens"]
    total = (uncached * p["input"] + usage["cached_tokens"] * p.get("cached_input", p["input"])
             + usage["cache_write_tokens"] * p.get("cache_write", p["input"]) + usage["completion_tokens"] * p["output"])
    assert total == int(total)
    return int(total)


def assert_cost(record: dict, model: str) -> None:
    picos = expected_picos(model, record["usage"])
    assert record["cost_status"] == "priced"
    assert record["cost"] == {"currency": "USD", "micros": (picos + 500_000) // 1_000_000, "picos": picos, "priced_as": model}


def openai_usage(reported: dict) -> dict:
    return {
        "prompt_tokens": reported["prompt_tokens"],
        "completion_tokens": reported["completion_tokens"],
        "total_tokens": reported["total_tokens"],
        "cached_tokens": reported["prompt_tokens_details"]["cached_tokens"],
        "cache_write_tokens": 0,
        "reasoning_tokens": reported["completion_tokens_details"]["reasoning_tokens"],
    }


def anthropic_usage(reported: dict) -> dict:
    prompt = reported["input_tokens"] + reported["cache_read_input_tokens"] + reported["cache_creation_input_tokens"]
    return {
        "prompt_tokens": prompt,
        "completion_tokens": reported["output_tokens"],
        "total_tokens": prompt + reported["output_tokens"],
        "cached_tokens": reported["cache_read_input_tokens"],
        "cache_write_tokens": reported["cache_creation_input_tokens"],
        "reasoning_tokens": 0,
    }


@pytest.mark.parametrize("stream", [False, True], ids=["buffered", "stream"])
def test_openai_usage_with_cached_and_reasoning_tokens_and_cost(acct, rid, stream):
    headers = {**AUTH, "x-weir-request-id": rid, "x-mock-cached-tokens": "40", "x-mock-reasoning-tokens": "12"}
    body = {"model": "fast", "messages": MESSAGES, "stream": stream}
    response = httpx.post(acct.url + "/v1/chat/completions", json=body, headers=headers, timeout=30)
    assert response.status_code == 200
    [received] = acct.received(rid)
    record = acct.audit(rid)
    assert record["usage"] == openai_usage(received["reported_usage"])
    assert record["usage"]["cached_tokens"] == 40 and record["usage"]["reasoning_tokens"] == 12
    assert_cost(record, "gpt-4o-mini")


@pytest.mark.parametrize("stream", [False, True], ids=["buffered", "stream"])
def test_anthropic_usage_counts_cache_tokens_once_and_cost(acct, rid, stream):
    headers = {"x-api-key": DEMO_KEY, "anthropic-version": "2023-06-01", "x-weir-request-id": rid,
               "x-mock-cached-tokens": "100"}
    body = {"model": "balanced", "max_tokens": 50, "messages": MESSAGES, "stream": stream}
    response = httpx.post(acct.url + "/v1/messages", json=body, headers=headers, timeout=30)
    assert response.status_code == 200
    [received] = acct.received(rid)
    record = acct.audit(rid)
    assert record["usage"] == anthropic_usage(received["reported_usage"])
    assert record["usage"]["cached_tokens"] == 100
    assert_cost(record, "claude-sonnet-4-5")


def test_unknown_model_is_flagged_unpriced_not_free(acct, rid):
    response = httpx.post(acct.url + "/v1/chat/completions", json={"model": "unpriced", "messages": MESSAGES},
                          headers={**AUTH, "x-weir-request-id": rid}, timeout=30)
    assert response.status_code == 200
    record = acct.audit(rid)
    assert record["usage"]["total_tokens"] > 0
    assert (record["cost"], record["cost_status"]) == (None, "unpriced")


def test_providers_compress_for_sdks_so_weir_asks_for_plain_answers(acct, rid):
    # The mock answers as the real APIs do: gzip for a client that accepts it.
    direct = httpx.post(acct.stack.mock_url("openai") + "/v1/chat/completions",
                        json={"model": "gpt-4o-mini", "messages": MESSAGES}, timeout=30,
                        headers={"authorization": "Bearer mock-openai-credential", "accept-encoding": "gzip"})
    assert direct.headers["content-encoding"] == "gzip" and direct.json()["usage"]["total_tokens"] > 0
    # The SDKs accept gzip: through Weir, their answers are still metered and priced.
    sdk = openai.OpenAI(base_url=acct.url + "/v1", api_key=DEMO_KEY, max_retries=0)
    completion = sdk.chat.completions.create(
        model="fast", messages=MESSAGES,
        extra_headers={"x-weir-request-id": rid, "accept-encoding": "gzip, deflate"})
    claude = anthropic.Anthropic(base_url=acct.url, api_key=DEMO_KEY, max_retries=0)
    message = claude.messages.create(
        model="balanced", max_tokens=50, messages=MESSAGES,
        extra_headers={"x-weir-request-id": rid + "-claude", "accept-encoding": "gzip, deflate"})
    for request_id, usage, model in [(rid, completion.usage.total_tokens, "gpt-4o-mini"),
                                     (rid + "-claude", message.usage.output_tokens, "claude-sonnet-4-5")]:
        [received] = acct.received(request_id)
        assert received["headers"]["accept-encoding"] == "identity"
        record = acct.audit(request_id)
        assert usage > 0 and usage in (record["usage"]["total_tokens"], record["usage"]["completion_tokens"])
        assert_cost(record, model)


def test_an_answer_encoded_anyway_passes_unmetered_and_says_so(acct, rid):
    # A provider that ignores `accept-encoding: identity`: the client (which accepts gzip)
    # gets the answer as sent; the record says why it has no usage.
    response = httpx.post(acct.url + "/v1/chat/completions", json={"model": "fast", "messages": MESSAGES},
                          headers={**AUTH, "x-weir-request-id": rid, "x-mock-gzip": "always"}, timeout=30)
    assert response.status_code == 200 and response.headers["content-encoding"] == "gzip"
    assert response.json()["usage"]["total_tokens"] > 0
    record = acct.audit(rid)
    assert (record["usage"], record["cost"], record["cost_status"]) == (None, None, "encoded_answer")
    assert record["outcome"] == "completed"


def test_an_encoded_answer_that_needs_translating_is_a_502_in_the_clients_shape(acct, rid):
    response = httpx.post(acct.url + "/v1/chat/completions",
                          json={"model": "anthropic/claude-haiku-4-5", "messages": MESSAGES},
                          headers={**AUTH, "x-weir-request-id": rid, "x-mock-gzip": "always"}, timeout=30)
    assert response.status_code == 502 and "content-encoding" not in response.headers
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("server_error", "provider_answer_encoded")
    assert "content-encoded" in error["message"]
    record = acct.audit(rid)
    assert (record["status"], record["error"], record["cost_status"]) == (502, "provider_answer_encoded", "encoded_answer")
    assert record["outcome"] == "upstream_error"


def normalise(stream: bytes) -> str:
    text = stream.decode()
    text = re.sub(r'"id":"chatcmpl-mock\d+"', '"id":"X"', text)
    return re.sub(r'"created":\d+', '"created":0', text)


def test_client_gets_exactly_the_stream_it_asked_for(acct, rid):
    body = {"model": "fast", "messages": MESSAGES, "stream": True}
    through_weir = httpx.post(acct.url + "/v1/chat/completions", json=body,
                              headers={**AUTH, "x-weir-request-id": rid}, timeout=30).content
    # What the provider sends a client that did not ask for usage, straight from the mock.
    direct = httpx.post(acct.stack.mock_url("openai") + "/v1/chat/completions",
                        json={**body, "model": "gpt-4o-mini"},
                        headers={"authorization": "Bearer mock-openai-credential"}, timeout=30).content
    assert b'"usage"' not in through_weir
    assert normalise(through_weir) == normalise(direct)
    assert acct.audit(rid)["usage"]["total_tokens"] > 0


def test_client_abort_keeps_the_tokens_seen_so_far(acct, rid):
    headers = {"x-api-key": DEMO_KEY, "anthropic-version": "2023-06-01", "x-weir-request-id": rid,
               "x-mock-chunk-delay-ms": "300"}
    body = {"model": "fast", "max_tokens": 50, "messages": MESSAGES, "stream": True}
    with httpx.stream("POST", acct.url + "/v1/messages", json=body, headers=headers, timeout=30) as r:
        for line in r.iter_lines():
            if line.startswith("event: content_block_delta"):
                break
    [received] = acct.received(rid)
    record = acct.audit(rid)
    assert record["outcome"] == "client_aborted"
    reported = received["reported_usage"]
    # message_start reported the input tokens; output so far was the initial 1.
    assert record["usage"]["prompt_tokens"] == reported["input_tokens"]
    assert record["usage"]["completion_tokens"] == 1
    assert record["cost_status"] == "priced"


def test_denied_and_failed_requests_have_records_without_cost(acct, rid):
    response = httpx.post(acct.url + "/v1/chat/completions", json={"model": "fast", "messages": MESSAGES},
                          headers={"x-weir-request-id": rid}, timeout=30)
    assert response.status_code == 401
    record = acct.audit(rid)
    assert (record["decision"], record["attempts"], record["cost"], record["cost_status"]) == ("deny", 0, None, None)

    rid2 = rid + "-500"
    response = httpx.post(acct.url + "/v1/chat/completions", json={"model": "fast", "messages": MESSAGES},
                          headers={**AUTH, "x-weir-request-id": rid2, "x-mock-status": "500"}, timeout=30)
    assert response.status_code == 500
    record = acct.audit(rid2)
    assert (record["outcome"], record["decision"], record["attempts"]) == ("upstream_error", "allow", 1)
    assert (record["usage"], record["cost_status"]) == (None, "no_usage")


def test_directives_from_headers_and_from_the_weir_body_object(acct, rid):
    headers = {**AUTH, "x-weir-request-id": rid, "x-weir-user": "user-42@acme", "x-weir-run-id": "run-7",
               "x-weir-tags": "checkout, experiment=b"}
    response = httpx.post(acct.url + "/v1/chat/completions", json={"model": "fast", "messages": MESSAGES},
                          headers=headers, timeout=30)
    assert response.headers["x-weir-run-id"] == "run-7"
    record = acct.audit(rid)
    assert (record["user"], record["run_id"], record["tags"]) == ("user-42@acme", "run-7", ["checkout", "experiment=b", "policy:standard"])
    [received] = acct.received(rid)
    assert not any(h.startswith("x-weir-") and h != "x-weir-request-id" for h in received["headers"])

    # The same through the body, for SDKs that strip headers; the object never goes upstream.
    rid2 = rid + "-body"
    client = openai.OpenAI(base_url=acct.url + "/v1", api_key=DEMO_KEY, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="fast", messages=MESSAGES,
        extra_body={"weir": {"request_id": rid2, "user": "u-9", "run_id": "run-8", "tags": ["sdk"]}})
    assert raw.headers["x-weir-request-id"] == rid2 and raw.headers["x-weir-run-id"] == "run-8"
    record = acct.audit(rid2)
    assert (record["user"], record["run_id"], record["tags"]) == ("u-9", "run-8", ["sdk", "policy:standard"])
    [received] = acct.received(rid2)
    assert "weir" not in json.loads(received["body"])

    # A request with no run id is a run of its own.
    rid3 = rid + "-norun"
    response = httpx.post(acct.url + "/v1/chat/completions", json={"model": "fast", "messages": MESSAGES},
                          headers={**AUTH, "x-weir-request-id": rid3}, timeout=30)
    assert response.headers["x-weir-run-id"] == rid3
    assert acct.audit(rid3)["run_id"] == rid3


@pytest.mark.parametrize(
    "headers, body_extra, message",
    [
        ({"x-weir-user": "has space"}, {}, "x-weir-user"),
        ({"x-weir-tags": "ok,not ok"}, {}, "tag"),
        ({}, {"weir": {"team": "finance"}}, "`weir.team` is not a directive"),
        ({}, {"weir": {"user": 7}}, "`weir` object"),
        ({}, {"weir": "x"}, "`weir` object"),
    ],
    ids=["bad-user", "bad-tag", "forbidden-field", "wrong-type", "not-object"],
)
def test_bad_directives_are_refused(acct, rid, headers, body_extra, message):
    response = httpx.post(acct.url + "/v1/chat/completions", json={"model": "fast", "messages": MESSAGES, **body_extra},
                          headers={**AUTH, **headers, "x-weir-request-id": rid}, timeout=30)
    assert response.status_code == 400
    assert message in response.json()["error"]["message"]
    assert acct.received(rid) == []
    assert acct.audit(rid)["outcome"] == "denied"


def test_response_metadata_on_buffered_successes(acct, rid):
    client = openai.OpenAI(base_url=acct.url + "/v1", api_key=DEMO_KEY, max_retries=0)
    completion = client.chat.completions.create(model="fast", messages=MESSAGES, extra_headers={"x-weir-request-id": rid})
    weir = completion.model_extra["weir"]
    record = acct.audit(rid)
    assert weir["request_id"] == rid and weir["tier"] == "fast" and weir["served_model"] == "gpt-4o-mini"
    assert weir["usage"] == record["usage"] and weir["cost"] == record["cost"]
    assert completion.usage.total_tokens == record["usage"]["total_tokens"]
    # Anthropic responses get it too, and the SDK still parses them.
    message = anthropic.Anthropic(base_url=acct.url, api_key=DEMO_KEY, max_retries=0).messages.create(
        model="fast", max_tokens=10, messages=MESSAGES)
    assert message.model_extra["weir"]["tier"] == "fast"


def scrape(stack: devstack.Stack) -> dict[tuple, float]:
    text = httpx.get(stack.admin + "/stats/prometheus", timeout=10).text
    samples = {}
    for line in text.splitlines():
        m = re.match(r'^(weir_[a-z_]+)\{(.*)\} (\S+)$', line)
        if m:
            labels = tuple(sorted(re.findall(r'(\w+)="([^"]*)"', m.group(2))))
            samples[(m.group(1), labels)] = float(m.group(3))
    return samples


def test_prometheus_metrics_have_real_labels(built, tmp_path):
    with devstack.Stack(tmp_path) as stack:
        client = openai.OpenAI(base_url=stack.url + "/v1", api_key=DEMO_KEY, max_retries=0)
        usages = [client.chat.completions.create(model="fast", messages=MESSAGES).usage for _ in range(3)]
        client.chat.completions.create(model="balanced", messages=MESSAGES)
        for _ in range(2):
            httpx.post(stack.url + "/v1/chat/completions", json={"model": "fast"}, timeout=10)  # 401
        time.sleep(0.5)
        m = scrape(stack)

        def get(name, **labels):
            return m.get((name, tuple(sorted(labels.items()))), 0)

        assert get("weir_requests_total", endpoint="chat_completions", tier="fast", decision="allow", status="200") == 3
        assert get("weir_requests_total", endpoint="chat_completions", tier="balanced", decision="allow", status="200") == 1
        assert get("weir_requests_total", endpoint="chat_completions", tier="none", decision="deny", status="401") == 2
        assert get("weir_tokens_total", direction="prompt", model="gpt-4o-mini") == sum(u.prompt_tokens for u in usages)
        assert get("weir_tokens_total", direction="completion", model="gpt-4o-mini") == sum(u.completion_tokens for u in usages)
        expected = sum(
            (expected_picos("gpt-4o-mini", {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
                                            "cached_tokens": 0, "cache_write_tokens": 0}) + 500_000) // 1_000_000
            for u in usages)
        assert get("weir_cost_micros_total", model="gpt-4o-mini", team="demo") == expected
        assert any(name == "weir_ttfb_ms_count" for name, _ in m)

        # A client may name any `provider/model`; a model the configuration does not name is
        # labelled `other`, so made-up names cannot add stats without bound (Envoy never frees one).
        made_up = [client.chat.completions.create(model=f"openai/made-up-{i}", messages=MESSAGES).usage
                   for i in range(5)]
        time.sleep(0.5)
        m = scrape(stack)
        assert not [key for key in m if any("made-up" in value for _, value in key[1])]
        assert get("weir_tokens_total", direction="prompt", model="other") == sum(u.prompt_tokens for u in made_up)
        assert get("weir_unpriced_requests_total", model="other") == 5
