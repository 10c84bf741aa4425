"""The first end-to-end path through the real Envoy with the built weir.wasm: keys, tiers,
credentials, streaming and the audit record."""
from __future__ import annotations

import json
import time

import anthropic
import httpx
import openai
import pytest

from conftest import DEMO_KEY

MESSAGES = [{"role": "user", "content": "Say hello to the tests"}]


def openai_client(weir, key: str = DEMO_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=weir.url + "/v1", api_key=key, max_retries=0)


def assert_no_client_key(received: list[dict]) -> None:
    for request in received:
        assert DEMO_KEY not in json.dumps(request), "the client's key reached the provider"


def assert_openai_error(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    return body["error"]


def post_chat(weir, rid: str, body, headers: dict | None = None) -> httpx.Response:
    h = {"x-weir-request-id": rid}
    h.update(headers or {})
    if isinstance(body, (dict, list)):
        return httpx.post(weir.url + "/v1/chat/completions", json=body, headers=h, timeout=30)
    return httpx.post(weir.url + "/v1/chat/completions", content=body, headers=h, timeout=30)


# -- the OpenAI SDK, buffered and streamed ---------------------------------------------------


def test_openai_sdk_buffered_tier_rewrite_and_credentials(weir, rid):
    raw = openai_client(weir).chat.completions.with_raw_response.create(
        model="balanced", messages=MESSAGES, extra_headers={"x-weir-request-id": rid}
    )
    completion = raw.parse()
    assert raw.headers["x-weir-request-id"] == rid
    assert completion.model == "gpt-4.1-mini"
    assert completion.choices[0].message.content == "Mock reply from gpt-4.1-mini: Say hello to the tests"

    [received] = weir.received(rid)
    assert received["listener"] == "openai"  # routed to the tier's cluster
    assert json.loads(received["body"])["model"] == "gpt-4.1-mini"  # rewritten in the body
    assert received["headers"]["authorization"] == "Bearer mock-openai-credential"
    assert "x-api-key" not in received["headers"]
    assert "x-weir-cluster" not in received["headers"]
    assert_no_client_key([received])

    record = weir.audit(rid)
    usage = completion.usage
    assert record["usage"]["prompt_tokens"] == usage.prompt_tokens
    assert record["usage"]["completion_tokens"] == usage.completion_tokens
    assert record["usage"]["total_tokens"] == usage.total_tokens
    assert record["key_id"] == "demo" and record["team"] == "demo"
    assert (record["requested_model"], record["tier"], record["served_model"]) == ("balanced", "balanced", "gpt-4.1-mini")
    assert (record["provider"], record["cluster"]) == ("openai", "openai")
    assert (record["status"], record["stream"], record["outcome"]) == (200, False, "completed")
    assert record["duration_ms"] > 0 and record["time"].endswith("Z")
    assert DEMO_KEY not in json.dumps(record)


def test_openai_sdk_streaming_is_metered_without_the_client_seeing_the_usage_chunk(weir, rid):
    stream = openai_client(weir).chat.completions.create(
        model="fast", messages=MESSAGES, stream=True, extra_headers={"x-weir-request-id": rid}
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Mock reply from gpt-4o-mini: Say hello to the tests"
    assert {c.model for c in chunks} == {"gpt-4o-mini"}
    # The client did not ask for usage: no usage chunk, no `usage` field at all.
    assert all(c.choices for c in chunks)
    assert all("usage" not in c.model_dump(exclude_unset=True) for c in chunks)

    [received] = weir.received(rid)
    body = json.loads(received["body"])
    assert body["stream"] is True and body["model"] == "gpt-4o-mini"
    assert body["stream_options"] == {"include_usage": True}  # Weir asked the provider
    assert_no_client_key([received])

    reported = received["reported_usage"]
    record = weir.audit(rid)
    assert record["stream"] is True and record["usage_requested_by_weir"] is True
    assert record["usage"]["prompt_tokens"] == reported["prompt_tokens"]
    assert record["usage"]["completion_tokens"] == reported["completion_tokens"]
    assert record["usage"]["total_tokens"] == reported["total_tokens"]
    assert (record["status"], record["outcome"], record["served_model"]) == (200, "completed", "gpt-4o-mini")


def test_client_that_asks_for_usage_itself_is_left_alone(weir, rid):
    body = {"model": "fast", "messages": MESSAGES, "stream": True, "stream_options": {"include_usage": True}}
    response = post_chat(weir, rid, body, {"authorization": f"Bearer {DEMO_KEY}"})
    assert response.status_code == 200
    [received] = weir.received(rid)
    assert json.loads(received["body"])["stream_options"] == {"include_usage": True}
    record = weir.audit(rid)
    assert record["usage_requested_by_weir"] is False
    assert record["usage"]["total_tokens"] > 0


def test_stream_passes_through_chunk_by_chunk(weir, rid):
    """Events paced 250 ms apart by the provider reach the client as they are sent."""
    body = {"model": "fast", "messages": MESSAGES, "stream": True}
    headers = {"authorization": f"Bearer {DEMO_KEY}", "x-weir-request-id": rid, "x-mock-chunk-delay-ms": "250"}
    arrivals = []
    start = time.monotonic()
    with httpx.stream("POST", weir.url + "/v1/chat/completions", json=body, headers=headers, timeout=30) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: "):
                arrivals.append(time.monotonic() - start)
    # 13 events, 12 gaps of 250 ms: ~3 s in all. A buffering proxy would deliver all at the end.
    assert len(arrivals) >= 10
    assert arrivals[0] < 1.5, arrivals
    assert arrivals[-1] - arrivals[0] > 2.0, arrivals
    assert weir.audit(rid)["outcome"] == "completed"


# -- keys ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"authorization": "Bearer wk_live_not_a_real_key"},
        {"x-api-key": "wk_live_not_a_real_key"},
        {"authorization": f"Basic {DEMO_KEY}"},
        {"authorization": "Bearer"},
    ],
    ids=["missing", "unknown-bearer", "unknown-x-api-key", "wrong-scheme", "empty"],
)
def test_requests_without_a_valid_key_get_401_and_never_reach_the_provider(weir, rid, headers):
    response = post_chat(weir, rid, {"model": "balanced", "messages": MESSAGES}, headers)
    error = assert_openai_error(response, 401, "invalid_api_key")
    assert error["type"] == "invalid_request_error"
    assert response.headers["x-weir-request-id"] == rid
    assert weir.received(rid) == []
    record = weir.audit(rid)
    assert (record["status"], record["outcome"], record["error"]) == (401, "denied", "invalid_api_key")
    assert record["key_id"] is None
    assert "wk_live_not_a_real_key" not in json.dumps(record)


def test_openai_sdk_maps_401_to_its_exception(weir):
    with pytest.raises(openai.AuthenticationError) as raised:
        openai_client(weir, key="wk_live_wrong").chat.completions.create(model="balanced", messages=MESSAGES)
    assert raised.value.status_code == 401
    assert raised.value.code == "invalid_api_key"


def test_x_api_key_form_is_accepted(weir, rid):
    response = post_chat(weir, rid, {"model": "balanced", "messages": MESSAGES}, {"x-api-key": DEMO_KEY})
    assert response.status_code == 200, response.text
    [received] = weir.received(rid)
    assert received["headers"]["authorization"] == "Bearer mock-openai-credential"
    assert "x-api-key" not in received["headers"]
    assert_no_client_key([received])
    assert weir.audit(rid)["key_id"] == "demo"


# -- tiers and clusters ----------------------------------------------------------------------------


def test_without_a_request_id_envoys_names_the_request_everywhere(weir):
    # No x-weir-request-id: the id is Envoy's x-request-id (client-sent here, so the test
    # knows it), in the response, the provider's request and the one audit record; also
    # for a request Weir refuses before it reads the body.
    for envoy_id, key, status in [("envoy-rid-ok-" + str(time.time_ns()), DEMO_KEY, 200),
                                  ("envoy-rid-401-" + str(time.time_ns()), "wk_live_nope", 401)]:
        response = httpx.post(weir.url + "/v1/chat/completions", json={"model": "fast", "messages": MESSAGES},
                              headers={"authorization": f"Bearer {key}", "x-request-id": envoy_id}, timeout=30)
        assert response.status_code == status, response.text
        assert response.headers["x-weir-request-id"] == envoy_id
        record = weir.audit(envoy_id)
        assert record["status"] == status
        assert len(weir.received(envoy_id)) == (1 if status == 200 else 0)


def test_unknown_tier_is_404_and_not_forwarded(weir, rid):
    response = post_chat(weir, rid, {"model": "gpt-9-ultra", "messages": MESSAGES}, {"authorization": f"Bearer {DEMO_KEY}"})
    error = assert_openai_error(response, 404, "model_not_found")
    assert error["param"] == "model"
    assert "gpt-9-ultra" in error["message"] and "balanced" in error["message"]
    assert weir.received(rid) == []
    record = weir.audit(rid)
    assert (record["status"], record["outcome"], record["requested_model"], record["key_id"]) == (
        404, "denied", "gpt-9-ultra", "demo")


def test_openai_sdk_maps_404_to_its_exception(weir):
    with pytest.raises(openai.NotFoundError):
        openai_client(weir).chat.completions.create(model="no-such-tier", messages=MESSAGES)


def test_each_tier_goes_to_its_own_cluster_with_its_own_credential(weir, rid):
    response = post_chat(weir, rid, {"model": "local", "messages": MESSAGES}, {"authorization": f"Bearer {DEMO_KEY}"})
    assert response.status_code == 200, response.text
    assert response.json()["model"] == "meta-llama/Llama-3.1-8B-Instruct"
    [received] = weir.received(rid)
    assert received["listener"] == "local"
    assert "authorization" not in received["headers"]  # self-hosted: no credential at all
    record = weir.audit(rid)
    assert (record["cluster"], record["provider"]) == ("local", "local")


def test_client_cannot_choose_the_cluster(weir, rid):
    headers = {"authorization": f"Bearer {DEMO_KEY}", "x-weir-cluster": "local"}
    response = post_chat(weir, rid, {"model": "balanced", "messages": MESSAGES}, headers)
    assert response.status_code == 200
    [received] = weir.received(rid)
    assert received["listener"] == "openai"


# -- Anthropic Messages, same-format -------------------------------------------------------------------


def test_anthropic_sdk_buffered_and_streamed(weir, rid):
    client = anthropic.Anthropic(base_url=weir.url, api_key=DEMO_KEY, max_retries=0)
    message = client.messages.create(
        model="balanced", max_tokens=100, messages=MESSAGES, extra_headers={"x-weir-request-id": rid}
    )
    assert message.model == "claude-sonnet-4-5"
    assert message.content[0].text == "Mock reply from claude-sonnet-4-5: Say hello to the tests"
    [received] = weir.received(rid)
    assert received["listener"] == "anthropic"
    assert received["headers"]["x-api-key"] == "mock-anthropic-credential"
    assert "authorization" not in received["headers"]
    assert_no_client_key([received])
    record = weir.audit(rid)
    assert record["usage"]["prompt_tokens"] == message.usage.input_tokens
    assert record["usage"]["completion_tokens"] == message.usage.output_tokens

    rid2 = rid + "-stream"
    with client.messages.stream(
        model="best", max_tokens=100, messages=MESSAGES, extra_headers={"x-weir-request-id": rid2}
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "Mock reply from claude-opus-4-1: Say hello to the tests"
    record = weir.audit(rid2)
    assert record["stream"] is True and record["outcome"] == "completed"
    assert record["usage"]["prompt_tokens"] == final.usage.input_tokens
    assert record["usage"]["completion_tokens"] == final.usage.output_tokens


def test_anthropic_sdk_counts_tokens_on_the_tiers_anthropic_model(weir, rid):
    """Claude Code calls `POST /v1/messages/count_tokens?beta=true` every turn."""
    client = anthropic.Anthropic(base_url=weir.url, api_key=DEMO_KEY, max_retries=0)
    counted = client.messages.count_tokens(model="balanced", messages=MESSAGES, system="Be brief.",
                                           extra_headers={"x-weir-request-id": rid})
    message = client.messages.create(model="balanced", max_tokens=20, messages=MESSAGES, system="Be brief.")
    assert counted.input_tokens == message.usage.input_tokens > 0
    [received] = weir.received(rid)
    assert (received["listener"], received["path"]) == ("anthropic", "/v1/messages/count_tokens")
    assert json.loads(received["body"])["model"] == "claude-sonnet-4-5"
    assert received["headers"]["x-api-key"] == "mock-anthropic-credential"
    assert_no_client_key([received])
    record = weir.audit(rid)
    assert (record["endpoint"], record["provider"], record["served_model"]) == ("count_tokens", "anthropic", "claude-sonnet-4-5")
    assert (record["outcome"], record["usage"], record["cost"]) == ("completed", None, None)
    # Claude Code's form: the beta method, `?beta=true`.
    beta = client.beta.messages.count_tokens(model="fast", messages=MESSAGES)
    assert beta.input_tokens > 0
    # A tier with no Anthropic model: a 404, so the client estimates for itself rather than
    # trusting a made-up count.
    with pytest.raises(anthropic.NotFoundError) as raised:
        client.messages.count_tokens(model="local", messages=MESSAGES, extra_headers={"x-weir-request-id": rid + "-local"})
    assert raised.value.body["error"]["type"] == "not_found_error"
    assert "Token counting needs an Anthropic model" in raised.value.body["error"]["message"]
    assert weir.received(rid + "-local") == []
    assert weir.audit(rid + "-local")["status"] == 404


def test_anthropic_errors_are_in_anthropic_shape(weir, rid):
    client = anthropic.Anthropic(base_url=weir.url, api_key="wk_live_wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as raised:
        client.messages.create(model="balanced", max_tokens=10, messages=MESSAGES)
    body = raised.value.body
    assert body["type"] == "error" and body["error"]["type"] == "authentication_error"
    client = anthropic.Anthropic(base_url=weir.url, api_key=DEMO_KEY, max_retries=0)
    with pytest.raises(anthropic.NotFoundError):
        client.messages.create(model="nope", max_tokens=10, messages=MESSAGES)


# -- bad input and upstream trouble -----------------------------------------------------------------


@pytest.mark.parametrize(
    "body, param",
    [
        (b"this is not json", None),
        (b"[1, 2, 3]", None),
        (b'{"messages": []}', "model"),
        (b'{"model": 42}', "model"),
        (b'{"model": "fast", "model": "best"}', None),
        (b'{"model": "fast", "stream": "yes"}', "stream"),
    ],
    ids=["not-json", "not-object", "no-model", "model-not-string", "model-twice", "stream-not-bool"],
)
def test_bad_bodies_get_400_in_openai_shape(weir, rid, body, param):
    headers = {"authorization": f"Bearer {DEMO_KEY}", "content-type": "application/json"}
    response = post_chat(weir, rid, body, headers)
    error = assert_openai_error(response, 400, "invalid_request")
    assert error["param"] == param
    assert weir.received(rid) == []
    record = weir.audit(rid)
    assert (record["status"], record["outcome"]) == (400, "denied")


def test_unknown_endpoint_is_404(weir, rid):
    response = httpx.get(weir.url + "/v1/nothing-here", headers={"x-weir-request-id": rid})
    assert_openai_error(response, 404, "unknown_url")
    assert weir.audit(rid)["outcome"] == "denied"


def test_provider_error_passes_through_and_is_recorded(weir, rid):
    headers = {"authorization": f"Bearer {DEMO_KEY}", "x-mock-status": "500"}
    response = post_chat(weir, rid, {"model": "balanced", "messages": MESSAGES}, headers)
    assert response.status_code == 500
    assert response.json()["error"]["type"] == "server_error"
    record = weir.audit(rid)
    assert (record["status"], record["outcome"], record["cluster"]) == (500, "upstream_error", "openai")


def test_provider_reset_mid_stream_is_recorded(weir, rid):
    headers = {"authorization": f"Bearer {DEMO_KEY}", "x-weir-request-id": rid, "x-mock-drop-after": "3"}
    body = {"model": "fast", "messages": MESSAGES, "stream": True}
    with pytest.raises(httpx.HTTPError):
        with httpx.stream("POST", weir.url + "/v1/chat/completions", json=body, headers=headers, timeout=30) as r:
            for _ in r.iter_lines():
                pass
    record = weir.audit(rid)
    assert record["outcome"] == "upstream_error", record
    assert record["status"] == 200  # the headers had been sent


def test_client_abort_mid_stream_is_recorded(weir, rid):
    headers = {"authorization": f"Bearer {DEMO_KEY}", "x-weir-request-id": rid, "x-mock-chunk-delay-ms": "300"}
    body = {"model": "fast", "messages": MESSAGES, "stream": True}
    with httpx.stream("POST", weir.url + "/v1/chat/completions", json=body, headers=headers, timeout=30) as r:
        for line in r.iter_lines():
            if line.startswith("data: "):
                break  # leave after the first event
    record = weir.audit(rid)
    assert record["outcome"] == "client_aborted", record


def test_every_audit_line_is_json_and_never_holds_the_key(weir):
    # Runs after the others in this module: the whole audit log so far.
    text = weir.stack.audit_log.read_text()
    assert DEMO_KEY not in text and "mock-openai-credential" not in text
    records = weir.audit_records()
    assert records and all(r["request_id"] for r in records)
