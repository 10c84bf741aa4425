"""Routing through the real Envoy: weighted targets (canaries), concrete model names,
the other OpenAI endpoints, response headers and pass-through of other /v1/ paths."""
from __future__ import annotations

import collections
import concurrent.futures
import http.client
import json

import httpx
import openai
import pytest

import devstack
from conftest import DEMO_KEY, Running, new_key, serving

MESSAGES = [{"role": "user", "content": "route me"}]


@pytest.fixture(scope="module")
def routing(built, tmp_path_factory) -> Running:
    workdir = tmp_path_factory.mktemp("routing")
    text = devstack.sample_config_text().replace(
        'stream_usage = true', 'stream_usage = true\npassthrough_provider = "openai"', 1)
    text += '''
[tiers.canary]
description = "90% the current model, 10% the candidate"
targets = [
  { provider = "openai", model = "gpt-4.1-mini", weight = 90 },
  { provider = "openai", model = "gpt-4.1-mini-candidate", weight = 10 },
]
'''
    config = workdir / "weir.toml"
    config.write_text(text)

    def key(*scopes: str) -> str:
        return new_key(config, "--name", "r", "--team", "t", "--scopes", ",".join(scopes))

    keys = {
        "all": key("*"),
        "fast-only": key("chat", "model:fast"),
        "openai-models": key("chat", "model:openai/*", "model:gpt-4o-mini"),
        "no-embeddings": key("chat", "model:*"),
        "embeddings": key("embeddings", "completions", "responses", "model:*"),
        "no-passthrough": key("chat", "model:*"),
    }
    stack = devstack.Stack(workdir / "stack", config=config)
    running = Running(stack)
    running.keys = keys
    with serving(stack, running):
        yield running


# One client for the module: creating one per request costs ~20 ms (its SSL context).
HTTP = httpx.Client(timeout=30, limits=httpx.Limits(max_connections=16))


def chat(r: Running, key: str, model: str, rid: str) -> httpx.Response:
    return HTTP.post(r.url + "/v1/chat/completions", json={"model": model, "messages": MESSAGES},
                     headers={"authorization": f"Bearer {key}", "x-weir-request-id": rid})


def test_weights_split_traffic_within_a_few_percent(routing):
    ids = [f"canary-{i}" for i in range(2000)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda rid: chat(routing, DEMO_KEY, "canary", rid), ids))
    assert all(r.status_code == 200 for r in responses)
    served = collections.Counter(r.headers["x-weir-model"] for r in responses)
    share = served["gpt-4.1-mini-candidate"] / len(ids)
    assert 0.07 <= share <= 0.13, served
    # What the provider received agrees with the header, and the choice is stable per id.
    for r, rid in list(zip(responses, ids))[:20]:
        [received] = routing.received(rid)
        assert json.loads(received["body"])["model"] == r.headers["x-weir-model"]
        again = chat(routing, DEMO_KEY, "canary", rid)
        assert again.headers["x-weir-model"] == r.headers["x-weir-model"]


def test_response_headers_name_the_tier_and_model(routing, rid):
    response = chat(routing, DEMO_KEY, "balanced", rid)
    assert (response.headers["x-weir-tier"], response.headers["x-weir-model"]) == ("balanced", "gpt-4.1-mini")
    assert response.headers["x-weir-request-id"] == rid


def test_concrete_models_when_the_scope_allows(routing, rid):
    keys = routing.keys
    # A model some tier serves, by name.
    response = chat(routing, keys["openai-models"], "gpt-4o-mini", rid)
    assert response.status_code == 200 and response.json()["model"] == "gpt-4o-mini"
    assert "x-weir-tier" not in response.headers
    record = routing.audit(rid)
    assert (record["tier"], record["requested_model"], record["provider"]) == (None, "gpt-4o-mini", "openai")
    # provider/model: any model of that provider.
    response = chat(routing, keys["openai-models"], "openai/gpt-5-preview", rid + "-p")
    assert response.status_code == 200 and response.json()["model"] == "gpt-5-preview"
    [received] = routing.received(rid + "-p")
    assert json.loads(received["body"])["model"] == "gpt-5-preview" and received["listener"] == "openai"
    # Not in the key's scopes: 403, nothing forwarded.
    response = chat(routing, keys["fast-only"], "openai/gpt-5-preview", rid + "-s")
    assert response.status_code == 403 and routing.received(rid + "-s") == []
    # Unknown bare model: 404.
    assert chat(routing, keys["all"], "gpt-nonexistent", rid + "-u").status_code == 404
    # A provider of the other API is reached through translation (see test_translation.py).
    assert chat(routing, keys["all"], "anthropic/claude-opus-4-1", rid + "-a").status_code == 200


def test_a_large_embeddings_answer_is_metered(routing, rid):
    """A batch of embeddings answers with megabytes of numbers around its usage: Weir finds
    the usage without parsing them (json_top), as numbers and as base64 strings."""
    inputs = [f"document {i} has five words" for i in range(64)]
    response = httpx.post(routing.url + "/v1/embeddings", timeout=30,
                          headers={"authorization": f"Bearer {routing.keys['embeddings']}", "x-weir-request-id": rid},
                          json={"model": "fast", "input": inputs, "dimensions": 1536, "encoding_format": "float"})
    assert response.status_code == 200
    assert len(response.content) > 1_000_000
    data = response.json()["data"]
    assert len(data) == 64 and all(len(d["embedding"]) == 1536 for d in data)
    record = routing.audit(rid)
    assert record["usage"]["prompt_tokens"] == 64 * 5 and record["served_model"] == "gpt-4o-mini"
    assert record["cost_status"] == "priced"

    client = openai.OpenAI(base_url=routing.url + "/v1", api_key=routing.keys["embeddings"], max_retries=0)
    batch = client.embeddings.create(model="fast", input=inputs, dimensions=1536,
                                     extra_headers={"x-weir-request-id": rid + "-b64"})
    assert len(batch.data) == 64 and len(batch.data[0].embedding) == 1536
    assert routing.audit(rid + "-b64")["usage"]["prompt_tokens"] == batch.usage.prompt_tokens == 64 * 5


def test_other_openai_endpoints_get_auth_rewrite_and_audit(routing, rid):
    client = openai.OpenAI(base_url=routing.url + "/v1", api_key=routing.keys["embeddings"], max_retries=0)
    raw = client.embeddings.with_raw_response.create(model="fast", input="three words here",
                                                     extra_headers={"x-weir-request-id": rid})
    embedding = raw.parse()
    assert embedding.model == "gpt-4o-mini" and len(embedding.data[0].embedding) == 3
    [received] = routing.received(rid)
    assert received["path"] == "/v1/embeddings" and json.loads(received["body"])["model"] == "gpt-4o-mini"
    assert received["headers"]["authorization"] == "Bearer mock-openai-credential"
    record = routing.audit(rid)
    assert (record["endpoint"], record["tier"], record["usage"]["prompt_tokens"]) == ("embeddings", "fast", embedding.usage.prompt_tokens)

    completion = client.completions.create(model="balanced", prompt="Say hi", extra_headers={"x-weir-request-id": rid + "-c"})
    assert completion.model == "gpt-4.1-mini"
    assert routing.audit(rid + "-c")["usage"]["total_tokens"] == completion.usage.total_tokens

    response = client.responses.create(model="best", input="Hello there", extra_headers={"x-weir-request-id": rid + "-r"})
    assert response.model == "gpt-4.1" and "Mock response" in response.output_text
    record = routing.audit(rid + "-r")
    assert (record["endpoint"], record["usage"]["prompt_tokens"], record["usage"]["completion_tokens"]) == (
        "responses", response.usage.input_tokens, response.usage.output_tokens)

    # Each endpoint has its scope.
    other = openai.OpenAI(base_url=routing.url + "/v1", api_key=routing.keys["no-embeddings"], max_retries=0)
    with pytest.raises(openai.PermissionDeniedError) as raised:
        other.embeddings.create(model="fast", input="x")
    assert "`embeddings`" in str(raised.value)


def test_other_v1_paths_pass_through_with_auth_when_configured(routing, rid):
    headers = {"authorization": f"Bearer {routing.keys['all']}", "x-weir-request-id": rid}
    response = httpx.get(routing.url + "/v1/files?purpose=batch", headers=headers, timeout=10)
    assert response.status_code == 200 and response.json()["path"] == "/v1/files"
    [received] = routing.received(rid)
    assert received["headers"]["authorization"] == "Bearer mock-openai-credential"
    assert routing.keys["all"] not in json.dumps(received)
    record = routing.audit(rid)
    assert (record["endpoint"], record["provider"], record["outcome"]) == ("passthrough", "openai", "completed")
    # Needs a key, and the scope.
    assert httpx.get(routing.url + "/v1/files", timeout=10).status_code == 401
    response = httpx.get(routing.url + "/v1/files", headers={"authorization": f"Bearer {routing.keys['no-passthrough']}"}, timeout=10)
    assert response.status_code == 403 and "`passthrough`" in response.json()["error"]["message"]


def verbatim(running: Running, method: str, path: str, headers: dict, body: dict | None = None) -> httpx.Response:
    """A request whose path goes out exactly as written (HTTP clients tidy paths)."""
    host, port = running.url.split("//")[1].rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        data = json.dumps(body).encode() if body is not None else None
        connection.request(method, path, body=data, headers={**headers, "content-type": "application/json"})
        answer = connection.getresponse()
        return httpx.Response(answer.status, headers=answer.getheaders(), content=answer.read())
    finally:
        connection.close()


def test_other_spellings_of_a_path_weir_serves_are_that_path_never_a_pass_through(routing, rid):
    """With pass-through on, `/v1//chat/completions` and the like used to pass through
    unclassified (with the provider's credential), where a server that merges slashes or
    decodes escapes would read them as the chat endpoint: no policy, scopes or metering.
    Envoy now normalises the path before Weir reads it, and refuses what it cannot."""
    headers = {"authorization": f"Bearer {routing.keys['all']}"}
    body = {"model": "fast", "messages": MESSAGES}
    for i, path in enumerate(["/v1//chat/completions", "/v1/./chat/completions", "/v1/x/../chat/completions",
                              "/v1/%63hat/completions", "/v1/chat\\completions"]):
        request_id = f"{rid}-{i}"
        response = verbatim(routing, "POST", path, {**headers, "x-weir-request-id": request_id}, body)
        assert response.status_code == 200, (path, response.text)
        assert response.headers["x-weir-tier"] == "fast", path
        record = routing.audit(request_id)
        assert (record["endpoint"], record["path"], record["tier"]) == ("chat_completions", "/v1/chat/completions",
                                                                      "fast"), path
        assert [r["path"] for r in routing.received(request_id)] == ["/v1/chat/completions"], path
    # What Envoy cannot normalise (an escaped slash, a NUL) is refused in the client's shape,
    # forwarded nowhere, and recorded.
    for i, (path, extra) in enumerate([("/v1/chat%2Fcompletions", {}), ("/v1/chat/completions%00", {}),
                                       ("/v1/messages%2F", {"anthropic-version": "2023-06-01"})]):
        request_id = f"{rid}-refused-{i}"
        response = verbatim(routing, "POST", path,
                            {**headers, **extra, "x-request-id": request_id, "x-weir-request-id": request_id}, body)
        assert response.status_code == 400, (path, response.text)
        error = response.json()["error"]
        assert error["type"] == "invalid_request_error" and "escaped slash" in error["message"], path
        if extra:
            assert response.json()["type"] == "error"
        else:
            assert error["code"] == "invalid_path"
        assert routing.received(request_id) == []
        record = routing.audit(request_id)
        assert (record["status"], record["error"], record["detail"]) == (400, "rejected_by_envoy",
                                                                        "path_normalization_failed"), path


def test_weir_itself_refuses_to_pass_through_a_path_that_reads_more_than_one_way(built, tmp_path):
    """The same guard in Weir, for an Envoy configured without path normalisation."""
    config = tmp_path / "weir.toml"
    config.write_text(devstack.sample_config_text().replace(
        'stream_usage = true', 'stream_usage = true\npassthrough_provider = "openai"', 1))
    key = new_key(config, "--name", "p", "--team", "t", "--scopes", "*")
    stack = devstack.Stack(tmp_path / "stack", config=config)
    render = stack.render

    def render_without_normalisation():
        path = render()
        text = path.read_text()
        for line in ("normalize_path: true", "merge_slashes: true", "path_with_escaped_slashes_action: REJECT_REQUEST"):
            assert line in text
            text = text.replace(line, "")
        path.write_text(text)
        return path

    stack.render = render_without_normalisation
    with serving(stack) as running:
        headers = {"authorization": f"Bearer {key}"}
        for i, path in enumerate(["/v1//chat/completions", "/v1/./chat/completions", "/v1/x/../chat/completions",
                                  "/v1/%63hat/completions", "/v1/chat%2Fcompletions"]):
            request_id = f"raw-{i}"
            response = verbatim(running, "POST", path, {**headers, "x-weir-request-id": request_id},
                                {"model": "fast", "messages": MESSAGES})
            assert response.status_code == 400, (path, response.text)
            assert response.json()["error"]["code"] == "invalid_path", path
            assert running.received(request_id) == []
            record = running.audit(request_id)
            assert (record["endpoint"], record["status"], record["outcome"]) == ("passthrough", 400, "denied"), path
        # A path in its one spelling still passes through.
        response = HTTP.get(running.url + "/v1/files", headers={**headers, "x-weir-request-id": "raw-ok"})
        assert response.status_code == 200 and response.json()["path"] == "/v1/files"


def test_other_v1_paths_are_refused_by_default(weir, rid):
    response = httpx.get(weir.url + "/v1/files", headers={"authorization": f"Bearer {DEMO_KEY}", "x-weir-request-id": rid})
    assert response.status_code == 404
    assert weir.received(rid) == []


def test_the_provider_gets_the_rewritten_body_with_its_length(routing, rid):
    """The tier's model and the usage option change the body's length: the provider gets
    the new `content-length` (not a chunked body, which some servers handle worse), for
    the client's API and translated to the other one."""
    key = routing.keys["all"]
    response = chat(routing, key, "balanced", rid)
    assert response.status_code == 200, response.text
    # An Anthropic client: `balanced` has an Anthropic target; `local` only an OpenAI-style
    # one, so that request is translated.
    for model, suffix in (("balanced", "-a"), ("local", "-t")):
        anthropic = HTTP.post(routing.url + "/v1/messages", json={"model": model, "max_tokens": 20,
                                                                  "messages": MESSAGES},
                              headers={"x-api-key": key, "anthropic-version": "2023-06-01",
                                       "x-weir-request-id": rid + suffix})
        assert anthropic.status_code == 200, anthropic.text
    assert routing.received(rid + "-t")[0]["path"] == "/v1/chat/completions"
    for request_id in (rid, rid + "-a", rid + "-t"):
        [received] = routing.received(request_id)
        body = received["body"].encode()
        assert received["headers"].get("content-length") == str(len(body)), received["headers"]
        assert "transfer-encoding" not in received["headers"]
    assert json.loads(routing.received(rid)[0]["body"])["model"] == "gpt-4.1-mini"


def test_a_canary_seed_keys_the_split_of_self_hosted_tiers(built, tmp_path, monkeypatch):
    """With only `auth = "none"` providers no credential keys the canary pick, so its key
    would come from the configuration alone; `[gateway] canary_seed_env` keys it with a
    secret. Under another seed the same request ids land elsewhere (about half of them on a
    50/50 split), and each split still follows the weights."""
    sample = devstack.sample_config_text()
    demo_key = sample[sample.index("[[keys]]"):]
    sides = {}
    for seed in ("seed-one", "seed-two"):
        monkeypatch.setenv("WEIR_TEST_CANARY_SEED", seed)
        config = tmp_path / f"{seed}.toml"
        config.write_text(f'''
[gateway]
cluster_header = "x-weir-cluster"
canary_seed_env = "WEIR_TEST_CANARY_SEED"

[providers.local]
api = "openai"
cluster = "local"
auth = "none"

[tiers.canary]
targets = [{{ provider = "local", model = "llama-a" }}, {{ provider = "local", model = "llama-b" }}]

{demo_key}''')
        with serving(devstack.Stack(tmp_path / seed, config=config)) as running:
            responses = [chat(running, DEMO_KEY, "canary", f"seeded-{i}") for i in range(200)]
        assert all(r.status_code == 200 for r in responses), responses[0].text
        sides[seed] = [r.headers["x-weir-model"] for r in responses]
        assert 60 <= sides[seed].count("llama-b") <= 140, collections.Counter(sides[seed])
    moved = sum(a != b for a, b in zip(sides["seed-one"], sides["seed-two"]))
    assert 60 <= moved <= 140, moved
