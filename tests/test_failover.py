"""Failover through the real Envoy: when the chosen target answers 429 or 5xx or cannot be
reached, Envoy retries on the tier's next target and Weir's per-attempt filter rewrites
the model and credential for it."""
from __future__ import annotations

import json
import socket

import anthropic
import httpx
import openai
import pytest

import devstack
from conftest import DEMO_KEY, Running, serving

MESSAGES = [{"role": "user", "content": "fail over"}]
LLAMA = "meta-llama/Llama-3.1-8B-Instruct"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed when the socket is: nothing listens there


@pytest.fixture(scope="module")
def fo(built, tmp_path_factory) -> Running:
    workdir = tmp_path_factory.mktemp("failover")
    config = workdir / "weir.toml"
    config.write_text(devstack.sample_config_text() + f'''
[providers.dead]
api = "openai"
cluster = "dead"
auth = "none"

[tiers.resilient]
failover = true
targets = [
  {{ provider = "openai", model = "gpt-4.1-mini" }},
  {{ provider = "local", model = "{LLAMA}", weight = 0 }},
]

[tiers.cross]
failover = true
targets = [
  {{ provider = "openai", model = "gpt-4.1-mini" }},
  {{ provider = "anthropic", model = "claude-sonnet-4-5" }},
]

[tiers.down-first]
failover = true
targets = [
  {{ provider = "dead", model = "ghost" }},
  {{ provider = "openai", model = "gpt-4o-mini", weight = 0 }},
]
''')
    stack = devstack.Stack(workdir / "stack", config=config, extra_clusters={"dead": closed_port()})
    with serving(stack) as running:
        yield running


def post(fo: Running, model: str, rid: str, extra: dict | None = None, stream: bool = False) -> httpx.Response:
    return httpx.post(fo.url + "/v1/chat/completions", json={"model": model, "messages": MESSAGES, "stream": stream},
                      headers={"authorization": f"Bearer {DEMO_KEY}", "x-weir-request-id": rid, **(extra or {})}, timeout=30)


@pytest.mark.parametrize("status", ["503", "429"])
def test_failover_to_the_next_target_with_its_model_and_credential(fo, rid, status):
    response = post(fo, "resilient", rid, {"x-mock-status": status, "x-mock-status-on": "openai"})
    assert response.status_code == 200, response.text
    assert response.json()["model"] == LLAMA
    assert response.headers["x-weir-model"] == LLAMA
    first, second = fo.received(rid)
    assert (first["listener"], json.loads(first["body"])["model"]) == ("openai", "gpt-4.1-mini")
    assert first["headers"]["authorization"] == "Bearer mock-openai-credential"
    assert (second["listener"], json.loads(second["body"])["model"]) == ("local", LLAMA)
    assert "authorization" not in second["headers"]  # the self-hosted target takes none
    for r in (first, second):
        assert DEMO_KEY not in json.dumps(r)
        assert not any(h.startswith("x-weir-failover") or h == "x-weir-cluster" for h in r["headers"])
        # Each attempt may carry a body of its own length: chunked, never a stale length.
        assert "content-length" not in r["headers"], r["headers"]
    record = fo.audit(rid)
    assert (record["provider"], record["served_model"], record["cluster"]) == ("local", LLAMA, "local")
    assert (record["attempts"], record["outcome"], record["status"]) == (2, "completed", 200)
    assert record["usage"]["total_tokens"] > 0


def test_streamed_failover(fo, rid):
    client = openai.OpenAI(base_url=fo.url + "/v1", api_key=DEMO_KEY, max_retries=0)
    stream = client.chat.completions.create(
        model="resilient", messages=MESSAGES, stream=True,
        extra_headers={"x-weir-request-id": rid, "x-mock-status": "500", "x-mock-status-on": "openai"})
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == f"Mock reply from {LLAMA}: fail over"
    assert {c.model for c in chunks} == {LLAMA}
    record = fo.audit(rid)
    assert (record["attempts"], record["served_model"], record["stream"]) == (2, LLAMA, True)
    assert record["usage"]["completion_tokens"] > 0


def test_failover_from_a_provider_that_is_down(fo, rid):
    response = post(fo, "down-first", rid)
    assert response.status_code == 200, response.text
    assert response.json()["model"] == "gpt-4o-mini"
    [received] = fo.received(rid)  # the dead one received nothing, of course
    assert received["headers"]["authorization"] == "Bearer mock-openai-credential"
    record = fo.audit(rid)
    assert (record["provider"], record["attempts"], record["outcome"]) == ("openai", 2, "completed")


def test_when_every_target_fails_the_client_gets_the_last_error(fo, rid):
    response = post(fo, "resilient", rid, {"x-mock-status": "503"})
    assert response.status_code == 503
    assert "error" in response.json()
    assert len(fo.received(rid)) == 2  # one attempt per target, no more
    record = fo.audit(rid)
    assert (record["attempts"], record["outcome"], record["served_model"]) == (2, "upstream_error", LLAMA)


def test_no_failover_without_a_failure(fo, rid):
    response = post(fo, "resilient", rid)
    assert response.status_code == 200 and response.json()["model"] == "gpt-4.1-mini"
    assert len(fo.received(rid)) == 1
    assert fo.audit(rid)["attempts"] == 1


def test_failover_configuration_is_valid_for_real_providers(built, tmp_path, monkeypatch):
    """The TLS provider clusters with failover clusters over them pass `envoy --mode validate`."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-openai-7f1e2d3c4b5a")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-9a8b7c6d5e4f")
    config = tmp_path / "weir.toml"
    config.write_text(devstack.sample_config_text() + '''
[tiers.resilient]
failover = true
targets = [{ provider = "openai", model = "gpt-4.1-mini" }, { provider = "local", model = "llama" }]
''')
    stack = devstack.Stack(tmp_path / "stack", config=config, real=("openai", "anthropic"))
    try:
        stack.start_mock()
        assert stack.bundle().returncode == 0
        rendered = stack.render().read_text()
        assert "weir-failover.resilient.openai.0" in rendered and "clusters: [openai, local]" in rendered
        assert "weir-failover.resilient.openai.1" in rendered and "clusters: [local, openai]" in rendered
        result = stack.validate()
        assert result.returncode == 0, result.stdout + result.stderr
    finally:
        stack.stop()


# ---- Failover across formats -------------------------------------------------------------------


def test_openai_client_fails_over_to_an_anthropic_model(fo, rid):
    response = post(fo, "cross", rid, {"x-mock-status": "503", "x-mock-status-on": "openai"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "chat.completion" and body["model"] == "claude-sonnet-4-5"
    assert body["choices"][0]["message"]["content"] == "Mock reply from claude-sonnet-4-5: fail over"
    first, second = fo.received(rid)
    assert (first["listener"], first["path"]) == ("openai", "/v1/chat/completions")
    assert (second["listener"], second["path"]) == ("anthropic", "/v1/messages")
    assert second["headers"]["x-api-key"] == "mock-anthropic-credential" and "authorization" not in second["headers"]
    sent = json.loads(second["body"])
    assert sent["model"] == "claude-sonnet-4-5" and sent["messages"] == [{"role": "user", "content": [{"type": "text", "text": "fail over"}]}]
    record = fo.audit(rid)
    assert (record["provider"], record["served_model"], record["attempts"]) == ("anthropic", "claude-sonnet-4-5", 2)
    assert record["usage"]["completion_tokens"] > 0


def test_streamed_failover_across_formats(fo, rid):
    client = openai.OpenAI(base_url=fo.url + "/v1", api_key=DEMO_KEY, max_retries=0)
    chunks = list(client.chat.completions.create(
        model="cross", messages=MESSAGES, stream=True,
        extra_headers={"x-weir-request-id": rid, "x-mock-status": "500", "x-mock-status-on": "openai"}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Mock reply from claude-sonnet-4-5: fail over"
    assert all(c.usage is None for c in chunks)  # the client did not ask for usage
    assert fo.audit(rid)["served_model"] == "claude-sonnet-4-5"


def test_anthropic_client_fails_over_to_an_openai_model(fo, rid):
    client = anthropic.Anthropic(base_url=fo.url, api_key=DEMO_KEY, max_retries=0)
    message = client.messages.create(model="cross", max_tokens=50, messages=MESSAGES,
                                     extra_headers={"x-weir-request-id": rid, "x-mock-status": "503",
                                                    "x-mock-status-on": "anthropic"})
    assert message.type == "message" and message.model == "gpt-4.1-mini"
    assert message.content[0].text == "Mock reply from gpt-4.1-mini: fail over"
    first, second = fo.received(rid)
    assert (first["listener"], second["listener"], second["path"]) == ("anthropic", "openai", "/v1/chat/completions")
    assert second["headers"]["authorization"] == "Bearer mock-openai-credential"
    record = fo.audit(rid)
    assert (record["provider"], record["attempts"]) == ("openai", 2)
