"""Clients served by a model of the other API — the OpenAI SDK on an Anthropic model, the
Anthropic SDK on an OpenAI model: Weir translates the request, the response and the stream
(event by event), and errors, through the real Envoy."""
from __future__ import annotations

import json

import anthropic
import httpx
import openai
import pytest

import devstack
from conftest import DEMO_KEY, Running, serving

CLAUDE = "claude-sonnet-4-5"
GPT = "gpt-4o-mini"


@pytest.fixture(scope="module")
def tr(built, tmp_path_factory) -> Running:
    workdir = tmp_path_factory.mktemp("translate")
    config = workdir / "weir.toml"
    config.write_text(devstack.sample_config_text() + f'''
[tiers.claude]
description = "Claude, for OpenAI clients too"
targets = [{{ provider = "anthropic", model = "{CLAUDE}" }}]

[tiers.gpt]
description = "GPT, for Anthropic clients too"
targets = [{{ provider = "openai", model = "{GPT}" }}]
''')
    stack = devstack.Stack(workdir / "stack", config=config)
    with serving(stack) as running:
        yield running


def client(tr: Running) -> openai.OpenAI:
    return openai.OpenAI(base_url=tr.url + "/v1", api_key=DEMO_KEY, max_retries=0)


def test_plain_text_system_prompt_and_multi_turn(tr, rid):
    raw = client(tr).chat.completions.with_raw_response.create(
        model="claude",
        messages=[
            {"role": "system", "content": "Answer in one line."},
            {"role": "user", "content": "Hello"},
            {"role": "assistant", "content": "Hi, how can I help?"},
            {"role": "user", "content": "Tell me about Weir"},
        ],
        temperature=0.2, stop=["END"], extra_headers={"x-weir-request-id": rid})
    completion = raw.parse()
    assert completion.object == "chat.completion"
    assert completion.model == CLAUDE
    assert completion.choices[0].message.content == f"Mock reply from {CLAUDE}: Tell me about Weir"
    assert completion.choices[0].finish_reason == "stop"
    assert raw.headers["x-weir-model"] == CLAUDE

    [received] = tr.received(rid)
    assert received["listener"] == "anthropic" and received["path"] == "/v1/messages"
    assert received["headers"]["x-api-key"] == "mock-anthropic-credential"
    assert "authorization" not in received["headers"] and DEMO_KEY not in json.dumps(received)
    sent = json.loads(received["body"])
    assert sent["system"] == "Answer in one line."
    assert [m["role"] for m in sent["messages"]] == ["user", "assistant", "user"]
    assert (sent["model"], sent["max_tokens"], sent["temperature"], sent["stop_sequences"]) == (CLAUDE, 4096, 0.2, ["END"])

    # Usage and cost are what the serving provider (Anthropic) reported.
    record = tr.audit(rid)
    reported = received["reported_usage"]
    assert record["usage"]["prompt_tokens"] == reported["input_tokens"] + reported["cache_read_input_tokens"]
    assert record["usage"]["completion_tokens"] == reported["output_tokens"]
    assert completion.usage.prompt_tokens == record["usage"]["prompt_tokens"]
    assert (record["provider"], record["served_model"], record["cost"]["priced_as"]) == ("anthropic", CLAUDE, CLAUDE)


def test_stop_reason_length(tr):
    completion = client(tr).chat.completions.create(model="claude", messages=[{"role": "user", "content": "a b c d e"}],
                                                    max_tokens=3)
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage.completion_tokens == 3


@pytest.mark.parametrize("include_usage", [False, True])
def test_streaming_is_translated_event_by_event(tr, rid, include_usage):
    kwargs = {"stream_options": {"include_usage": True}} if include_usage else {}
    stream = client(tr).chat.completions.create(
        model="claude", messages=[{"role": "user", "content": "Stream this please"}], stream=True,
        extra_headers={"x-weir-request-id": rid, "x-mock-chunk-delay-ms": "20"}, **kwargs)
    chunks = list(stream)
    content = [c for c in chunks if c.choices]
    assert content[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in content) == f"Mock reply from {CLAUDE}: Stream this please"
    assert content[-1].choices[0].finish_reason == "stop"
    assert {c.model for c in chunks} == {CLAUDE}
    usage_chunks = [c for c in chunks if c.usage]
    record = tr.audit(rid)
    if include_usage:
        [u] = usage_chunks
        assert u.usage.completion_tokens == record["usage"]["completion_tokens"]
    else:
        assert usage_chunks == []
    assert record["stream"] is True and record["usage"]["completion_tokens"] > 0


def test_provider_errors_come_back_in_openai_shape_with_the_providers_status(tr):
    with pytest.raises(openai.InternalServerError) as raised:
        client(tr).chat.completions.create(model="claude", messages=[{"role": "user", "content": "x"}],
                                           extra_headers={"x-mock-status": "500"})
    assert raised.value.status_code == 500
    assert "failing on request" in raised.value.message
    with pytest.raises(openai.RateLimitError):
        client(tr).chat.completions.create(model="claude", messages=[{"role": "user", "content": "x"}],
                                           extra_headers={"x-mock-status": "429"})


TOOLS = [{"type": "function", "function": {
    "name": "lookup_order", "description": "Find an order by its number",
    "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}}}]


def test_tool_calling_round_trip(tr, rid):
    c = client(tr)
    messages = [{"role": "user", "content": "Where is order 42?"}]
    first = c.chat.completions.create(model="claude", messages=messages, tools=TOOLS, tool_choice="auto",
                                      extra_headers={"x-weir-request-id": rid})
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "lookup_order"
    assert json.loads(call.function.arguments) == {"query": "Where is order 42?"}
    [received] = tr.received(rid)
    sent = json.loads(received["body"])
    assert sent["tools"][0]["name"] == "lookup_order" and sent["tool_choice"] == {"type": "auto"}
    assert sent["tools"][0]["input_schema"]["required"] == ["query"]

    # The tool's answer goes back; Claude answers from it.
    messages += [choice.message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": "Shipped yesterday"}]
    second = c.chat.completions.create(model="claude", messages=messages, tools=TOOLS,
                                       extra_headers={"x-weir-request-id": rid + "-2"})
    assert second.choices[0].finish_reason == "stop"
    assert second.choices[0].message.content == f"Mock reply from {CLAUDE}: Shipped yesterday"
    [received] = tr.received(rid + "-2")
    sent = json.loads(received["body"])
    assert sent["messages"][1]["content"][0] == {"type": "tool_use", "id": call.id, "name": "lookup_order",
                                                  "input": {"query": "Where is order 42?"}}
    assert sent["messages"][2] == {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id,
                                                                  "content": "Shipped yesterday"}]}


def test_streamed_tool_call_deltas(tr):
    stream = client(tr).chat.completions.create(
        model="claude", messages=[{"role": "user", "content": "Where is order 7?"}], tools=TOOLS, stream=True)
    chunks = list(stream)
    deltas = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert deltas[0].id and deltas[0].function.name == "lookup_order"
    arguments = "".join(d.function.arguments or "" for d in deltas)
    assert json.loads(arguments) == {"query": "Where is order 7?"}
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"


def test_images_are_sent_as_image_blocks(tr, rid):
    client(tr).chat.completions.create(model="claude", messages=[{"role": "user", "content": [
        {"type": "text", "text": "Describe"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]}],
        extra_headers={"x-weir-request-id": rid})
    [received] = tr.received(rid)
    block = json.loads(received["body"])["messages"][0]["content"][1]
    assert block == {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}


@pytest.mark.parametrize(
    "extra, param",
    [
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"n": 2}, "n"),
        ({"temperature": 1.7}, "temperature"),
        ({"logprobs": True}, None),
    ],
    ids=["legacy-functions", "n", "temperature", "logprobs"],
)
def test_what_cannot_be_translated_is_refused_naming_the_parameter(tr, rid, extra, param):
    response = httpx.post(tr.url + "/v1/chat/completions",
                          json={"model": "claude", "messages": [{"role": "user", "content": "x"}], **extra},
                          headers={"authorization": f"Bearer {DEMO_KEY}", "x-weir-request-id": rid}, timeout=10)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == param and next(iter(extra)) in error["message"]
    assert tr.received(rid) == []


def test_concrete_anthropic_model_for_an_openai_client(tr):
    completion = client(tr).chat.completions.create(model="anthropic/claude-haiku-4-5",
                                                    messages=[{"role": "user", "content": "hi"}])
    assert completion.model == "claude-haiku-4-5"


# ---- The Anthropic SDK on an OpenAI model ----------------------------------------------------


def claude_client(tr: Running) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=tr.url, api_key=DEMO_KEY, max_retries=0)


def test_anthropic_sdk_on_an_openai_model(tr, rid):
    message = claude_client(tr).messages.create(
        model="gpt", max_tokens=100, system="Answer briefly.",
        messages=[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                  {"role": "user", "content": "What is Weir"}],
        extra_headers={"x-weir-request-id": rid})
    assert message.type == "message" and message.model == GPT
    assert message.content[0].text == f"Mock reply from {GPT}: What is Weir"
    assert message.stop_reason == "end_turn"
    [received] = tr.received(rid)
    assert (received["listener"], received["path"]) == ("openai", "/v1/chat/completions")
    assert received["headers"]["authorization"] == "Bearer mock-openai-credential"
    assert "x-api-key" not in received["headers"] and "anthropic-version" not in received["headers"]
    sent = json.loads(received["body"])
    assert sent["messages"][0] == {"role": "system", "content": "Answer briefly."}
    assert [m["role"] for m in sent["messages"]] == ["system", "user", "assistant", "user"]
    record = tr.audit(rid)
    assert record["usage"]["completion_tokens"] == message.usage.output_tokens
    assert (record["provider"], record["served_model"]) == ("openai", GPT)
    assert claude_client(tr).messages.create(model="gpt", max_tokens=2, messages=[{"role": "user", "content": "a b c"}]).stop_reason == "max_tokens"


def test_anthropic_sdk_streaming_on_an_openai_model(tr, rid):
    with claude_client(tr).messages.stream(model="gpt", max_tokens=100, messages=[{"role": "user", "content": "Stream it"}],
                                           extra_headers={"x-weir-request-id": rid}) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == f"Mock reply from {GPT}: Stream it"
    assert final.stop_reason == "end_turn" and final.usage.output_tokens > 0
    [received] = tr.received(rid)
    assert json.loads(received["body"])["stream_options"] == {"include_usage": True}
    assert tr.audit(rid)["usage"]["completion_tokens"] == final.usage.output_tokens


CLAUDE_TOOLS = [{"name": "lookup_order", "description": "Find an order",
                 "input_schema": {"type": "object", "properties": {"query": {"type": "string"}}}}]


def test_anthropic_sdk_tool_round_trip_on_an_openai_model(tr):
    c = claude_client(tr)
    messages = [{"role": "user", "content": "Where is order 9?"}]
    first = c.messages.create(model="gpt", max_tokens=100, tools=CLAUDE_TOOLS, messages=messages)
    assert first.stop_reason == "tool_use"
    [use] = [b for b in first.content if b.type == "tool_use"]
    assert use.name == "lookup_order" and use.input == {"query": "Where is order 9?"}
    messages += [{"role": "assistant", "content": [b.model_dump() for b in first.content]},
                 {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "Delivered"}]}]
    second = c.messages.create(model="gpt", max_tokens=100, tools=CLAUDE_TOOLS, messages=messages)
    assert second.stop_reason == "end_turn"
    assert second.content[0].text == f"Mock reply from {GPT}: Delivered"
    with c.messages.stream(model="gpt", max_tokens=100, tools=CLAUDE_TOOLS,
                           messages=[{"role": "user", "content": "Order 3?"}]) as stream:
        final = stream.get_final_message()
    [use] = [b for b in final.content if b.type == "tool_use"]
    assert use.input == {"query": "Order 3?"} and final.stop_reason == "tool_use"


def test_anthropic_sdk_tool_result_with_an_image_on_an_openai_model(tr, rid):
    """A screenshot returned by a tool reaches the OpenAI model: `tool` messages carry
    text only, so the image follows them in a user message."""
    png = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}
    messages = [{"role": "user", "content": "Look at the screen"},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_s", "name": "lookup_order",
                                                   "input": {"query": "screen"}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_s",
                                              "content": [{"type": "text", "text": "Screenshot"}, png]}]}]
    reply = claude_client(tr).messages.create(model="gpt", max_tokens=100, tools=CLAUDE_TOOLS, messages=messages,
                                              extra_headers={"x-weir-request-id": rid})
    assert reply.type == "message" and reply.model == GPT
    [received] = tr.received(rid)
    sent = json.loads(received["body"])["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "tool", "user"]
    assert sent[2]["tool_call_id"] == "toolu_s" and sent[2]["content"].startswith("Screenshot\n")
    assert sent[3]["content"][1] == {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    assert tr.audit(rid)["outcome"] == "completed"


def test_anthropic_sdk_errors_and_refusals_on_an_openai_model(tr):
    c = claude_client(tr)
    with pytest.raises(anthropic.InternalServerError) as raised:
        c.messages.create(model="gpt", max_tokens=5, messages=[{"role": "user", "content": "x"}],
                          extra_headers={"x-mock-status": "500"})
    assert raised.value.body["type"] == "error" and raised.value.body["error"]["type"] == "api_error"
    with pytest.raises(anthropic.RateLimitError):
        c.messages.create(model="gpt", max_tokens=5, messages=[{"role": "user", "content": "x"}],
                          extra_headers={"x-mock-status": "429"})
    with pytest.raises(anthropic.BadRequestError) as raised:
        c.messages.create(model="gpt", max_tokens=5, messages=[{"role": "user", "content": "x"}], extra_body={"top_k": 3})
    assert "top_k" in raised.value.body["error"]["message"]
