//! An OpenAI Chat Completions client served by an Anthropic Messages target: the request,
//! the buffered response, the SSE stream (event by event, as it arrives) and errors.
//!
//! Rules for what has no exact counterpart (the README lists them): system and developer
//! messages become `system`; `max_tokens` defaults to 4096 (Anthropic requires one);
//! `stop` becomes `stop_sequences`; `user` becomes `metadata.user_id`; `seed`, `store`,
//! `metadata`, `service_tier`, `stream_options` and zero penalties are dropped; a
//! `temperature` above 1, `n` other than 1, logprobs, logit bias, non-zero penalties,
//! response formats, audio and the legacy `functions` are refused with a 400 naming the
//! parameter — never silently wrong. Tools, tool calls and results, and images are mapped.

use serde_json::{json, Map, Value};

use crate::body::BodyError;
use crate::sse::SseParser;

pub const DEFAULT_MAX_TOKENS: u64 = 4096;

fn refuse(param: &'static str, why: &str) -> BodyError {
    BodyError {
        message: format!("The `{param}` parameter cannot be sent to this model's provider: {why}."),
        param: Some(param),
    }
}

/// Text of an OpenAI `content` (a string or text parts), for system prompts.
fn text_content(content: &Value) -> Result<String, BodyError> {
    match content {
        Value::String(s) => Ok(s.clone()),
        Value::Null => Ok(String::new()),
        Value::Array(parts) => {
            let mut out = Vec::new();
            for p in parts {
                match p.get("type").and_then(Value::as_str) {
                    Some("text") => out.push(
                        p.get("text")
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .to_string(),
                    ),
                    _ => return Err(refuse("messages", "system messages may only hold text")),
                }
            }
            Ok(out.join("\n"))
        }
        _ => Err(refuse(
            "messages",
            "message content must be a string or an array of parts",
        )),
    }
}

/// An OpenAI `image_url` part as an Anthropic image block: data URLs inline, others by URL.
fn image_block(part: &Value) -> Result<Value, BodyError> {
    let url = part
        .pointer("/image_url/url")
        .and_then(Value::as_str)
        .unwrap_or("");
    if let Some(rest) = url.strip_prefix("data:") {
        let (media, data) = rest
            .split_once(";base64,")
            .ok_or_else(|| refuse("messages", "image data URLs must be base64"))?;
        return Ok(
            json!({"type": "image", "source": {"type": "base64", "media_type": media, "data": data}}),
        );
    }
    if url.starts_with("https://") || url.starts_with("http://") {
        return Ok(json!({"type": "image", "source": {"type": "url", "url": url}}));
    }
    Err(refuse(
        "messages",
        "an image must be a data URL or an http(s) URL",
    ))
}

/// An OpenAI message `content` as Anthropic content blocks.
fn content_blocks(content: &Value) -> Result<Vec<Value>, BodyError> {
    match content {
        Value::String(s) if s.is_empty() => Ok(Vec::new()),
        Value::String(s) => Ok(vec![json!({"type": "text", "text": s})]),
        Value::Null => Ok(Vec::new()),
        Value::Array(parts) => parts
            .iter()
            .map(|p| match p.get("type").and_then(Value::as_str) {
                Some("text") => Ok(json!({"type": "text", "text": p.get("text").and_then(Value::as_str).unwrap_or("")})),
                Some("image_url") => image_block(p),
                _ => Err(refuse("messages", "only text and image content parts are translated")),
            })
            .collect(),
        _ => Err(refuse("messages", "message content must be a string or an array of parts")),
    }
}

/// An assistant's `tool_calls` as `tool_use` blocks.
fn tool_use_blocks(calls: &Value) -> Result<Vec<Value>, BodyError> {
    let Some(calls) = calls.as_array() else {
        return Ok(Vec::new());
    };
    calls
        .iter()
        .map(|c| {
            let arguments = c
                .pointer("/function/arguments")
                .and_then(Value::as_str)
                .unwrap_or("{}");
            let input: Value = serde_json::from_str(if arguments.trim().is_empty() {
                "{}"
            } else {
                arguments
            })
            .map_err(|_| refuse("messages", "tool call arguments must be JSON"))?;
            Ok(json!({
                "type": "tool_use",
                "id": c.get("id").and_then(Value::as_str).unwrap_or(""),
                "name": c.pointer("/function/name").and_then(Value::as_str).unwrap_or(""),
                "input": input,
            }))
        })
        .collect()
}

/// OpenAI `tools` as Anthropic tools.
fn tools(value: &Value) -> Result<Value, BodyError> {
    let Some(list) = value.as_array() else {
        return Err(refuse("tools", "it must be an array"));
    };
    list.iter()
        .map(|t| {
            if t.get("type").and_then(Value::as_str) != Some("function") {
                return Err(refuse("tools", "only function tools are translated"));
            }
            let f = &t["function"];
            let mut tool = json!({
                "name": f.get("name").and_then(Value::as_str).unwrap_or(""),
                "input_schema": f.get("parameters").cloned().unwrap_or(json!({"type": "object", "properties": {}})),
            });
            if let Some(d) = f.get("description") {
                tool["description"] = d.clone();
            }
            Ok(tool)
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Value::Array)
}

/// OpenAI `tool_choice` as Anthropic's.
fn tool_choice(value: &Value) -> Result<Value, BodyError> {
    match value {
        Value::String(s) if s == "auto" => Ok(json!({"type": "auto"})),
        Value::String(s) if s == "none" => Ok(json!({"type": "none"})),
        Value::String(s) if s == "required" => Ok(json!({"type": "any"})),
        Value::Object(_) => match value.pointer("/function/name").and_then(Value::as_str) {
            Some(name) => Ok(json!({"type": "tool", "name": name})),
            None => Err(refuse("tool_choice", "a named choice needs function.name")),
        },
        _ => Err(refuse(
            "tool_choice",
            "use auto, none, required or a named function",
        )),
    }
}

type Object = Map<String, Value>;

/// The request as an object, and the translation's first field: the target's model.
fn start_request(body: &[u8], model: &str) -> Result<(Object, Object), BodyError> {
    let Ok(Value::Object(req)) = serde_json::from_slice::<Value>(body) else {
        return Err(BodyError {
            message: "The request body must be a JSON object.".into(),
            param: None,
        });
    };
    let mut out = Map::new();
    out.insert("model".into(), json!(model));
    Ok((req, out))
}

/// A parameter with no rule: refused, never silently dropped.
fn unknown_parameter(name: &str) -> BodyError {
    BodyError {
        message: format!("The `{name}` parameter cannot be sent to this model's provider."),
        param: None,
    }
}

/// The Anthropic request for an OpenAI chat request, for `model`.
pub fn openai_request_to_anthropic(body: &[u8], model: &str) -> Result<Vec<u8>, BodyError> {
    let (req, mut out) = start_request(body, model)?;
    let mut system = Vec::new();
    let mut messages: Vec<Value> = Vec::new();
    for (name, value) in &req {
        match name.as_str() {
            "model" | "weir" => {}
            "messages" => {
                let Some(list) = value.as_array() else {
                    return Err(refuse("messages", "it must be an array"));
                };
                for m in list {
                    let role = m.get("role").and_then(Value::as_str).unwrap_or("");
                    let content = m.get("content").unwrap_or(&Value::Null);
                    let (role, blocks) = match role {
                        "system" | "developer" => {
                            system.push(text_content(content)?);
                            continue;
                        }
                        "user" => ("user", content_blocks(content)?),
                        "assistant" => {
                            let mut blocks = content_blocks(content)?;
                            blocks.extend(tool_use_blocks(
                                m.get("tool_calls").unwrap_or(&Value::Null),
                            )?);
                            ("assistant", blocks)
                        }
                        // A tool's answer is a user turn holding a tool_result.
                        "tool" => (
                            "user",
                            vec![json!({
                                "type": "tool_result",
                                "tool_use_id": m.get("tool_call_id").and_then(Value::as_str).unwrap_or(""),
                                "content": text_content(content)?,
                            })],
                        ),
                        other => {
                            return Err(refuse(
                                "messages",
                                &format!("the role `{other}` has no Anthropic equivalent"),
                            ))
                        }
                    };
                    // Anthropic wants alternating turns: consecutive ones are merged.
                    match messages.last_mut() {
                        Some(last) if last["role"] == role => {
                            if let Some(existing) = last["content"].as_array_mut() {
                                existing.extend(blocks);
                            }
                        }
                        _ => messages.push(json!({"role": role, "content": blocks})),
                    }
                }
            }
            "max_tokens" | "max_completion_tokens" => {
                if !value.is_null() {
                    out.insert("max_tokens".into(), value.clone());
                }
            }
            "temperature" => {
                if let Some(t) = value.as_f64() {
                    if t > 1.0 {
                        return Err(refuse("temperature", "Anthropic accepts 0 to 1"));
                    }
                    out.insert("temperature".into(), value.clone());
                }
            }
            "top_p" => {
                out.insert("top_p".into(), value.clone());
            }
            "stop" => match value {
                Value::String(s) => {
                    out.insert("stop_sequences".into(), json!([s]));
                }
                Value::Array(_) => {
                    out.insert("stop_sequences".into(), value.clone());
                }
                Value::Null => {}
                _ => return Err(refuse("stop", "it must be a string or an array of strings")),
            },
            "stream" => {
                out.insert("stream".into(), value.clone());
            }
            "user" => {
                out.insert("metadata".into(), json!({"user_id": value}));
            }
            "n" => {
                if !(value.is_null() || value.as_u64() == Some(1)) {
                    return Err(refuse("n", "Anthropic returns one choice per request"));
                }
            }
            "presence_penalty" | "frequency_penalty" => {
                if value.as_f64().is_some_and(|p| p != 0.0) {
                    return Err(refuse(
                        if name == "presence_penalty" {
                            "presence_penalty"
                        } else {
                            "frequency_penalty"
                        },
                        "Anthropic has no penalties",
                    ));
                }
            }
            // No effect on the answer, or no Anthropic counterpart worth refusing for.
            "seed" | "store" | "metadata" | "service_tier" | "stream_options"
            | "prompt_cache_key" => {}
            "tools" => {
                out.insert("tools".into(), tools(value)?);
            }
            "tool_choice" => {
                let choice = tool_choice(value)?;
                let disable = out
                    .get("tool_choice")
                    .and_then(|c| c.get("disable_parallel_tool_use"))
                    .cloned();
                out.insert("tool_choice".into(), choice);
                if let Some(d) = disable {
                    out["tool_choice"]["disable_parallel_tool_use"] = d;
                }
            }
            "parallel_tool_calls" => {
                if value.as_bool() == Some(false) {
                    let choice = out.entry("tool_choice").or_insert(json!({"type": "auto"}));
                    choice["disable_parallel_tool_use"] = json!(true);
                }
            }
            "functions" | "function_call" => {
                return Err(refuse(
                    static_name(name),
                    "the legacy functions API is not translated; use tools",
                ));
            }
            other => return Err(unknown_parameter(other)),
        }
    }
    if messages.is_empty() {
        return Err(refuse(
            "messages",
            "at least one user or assistant message is needed",
        ));
    }
    if !system.is_empty() {
        out.insert("system".into(), json!(system.join("\n\n")));
    }
    out.insert("messages".into(), Value::Array(messages));
    out.entry("max_tokens").or_insert(json!(DEFAULT_MAX_TOKENS));
    serde_json::to_vec(&Value::Object(out)).map_err(|_| BodyError {
        message: "The request could not be translated.".into(),
        param: None,
    })
}

fn static_name(name: &str) -> &'static str {
    match name {
        "functions" => "functions",
        _ => "function_call",
    }
}

/// Anthropic `stop_reason` → OpenAI `finish_reason`.
pub fn finish_reason(stop_reason: Option<&str>) -> Value {
    match stop_reason {
        None => Value::Null,
        Some("max_tokens") => json!("length"),
        Some("tool_use") => json!("tool_calls"),
        Some("refusal") => json!("content_filter"),
        Some(_) => json!("stop"), // end_turn, stop_sequence, pause_turn
    }
}

fn openai_usage(u: &Value) -> Value {
    let n = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
    let prompt =
        n("input_tokens") + n("cache_read_input_tokens") + n("cache_creation_input_tokens");
    let completion = n("output_tokens");
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": n("cache_read_input_tokens")},
    })
}

/// A buffered Anthropic response (a message, or an error) in OpenAI's shape.
pub fn anthropic_response_to_openai(body: &[u8], created: u64) -> Vec<u8> {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return body.to_vec();
    };
    let out = if v.get("type").and_then(Value::as_str) == Some("error") {
        let kind = v
            .pointer("/error/type")
            .and_then(Value::as_str)
            .unwrap_or("api_error");
        json!({"error": {
            "message": v.pointer("/error/message").and_then(Value::as_str).unwrap_or(""),
            "type": if kind == "api_error" || kind == "overloaded_error" { "server_error" } else { "invalid_request_error" },
            "param": null,
            "code": kind,
        }})
    } else {
        let blocks = v
            .get("content")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let text: String = blocks
            .iter()
            .filter_map(|b| b.get("text").and_then(Value::as_str))
            .collect();
        let calls: Vec<Value> = blocks
            .iter()
            .filter(|b| b.get("type").and_then(Value::as_str) == Some("tool_use"))
            .map(|b| {
                json!({
                    "id": b.get("id"),
                    "type": "function",
                    "function": {"name": b.get("name"), "arguments": b.get("input").map(Value::to_string).unwrap_or_else(|| "{}".into())},
                })
            })
            .collect();
        let mut message = json!({"role": "assistant", "content": if text.is_empty() && !calls.is_empty() { Value::Null } else { json!(text) }, "refusal": null});
        if !calls.is_empty() {
            message["tool_calls"] = Value::Array(calls);
        }
        json!({
            "id": format!("chatcmpl-{}", v.get("id").and_then(Value::as_str).unwrap_or("weir")),
            "object": "chat.completion",
            "created": created,
            "model": v.get("model"),
            "choices": [{
                "index": 0,
                "message": message,
                "logprobs": null,
                "finish_reason": finish_reason(v.get("stop_reason").and_then(Value::as_str)),
            }],
            "usage": openai_usage(v.get("usage").unwrap_or(&Value::Null)),
        })
    };
    serde_json::to_vec(&out).unwrap_or_default()
}

/// Turns an Anthropic SSE stream into OpenAI chunks as it arrives.
#[derive(Debug)]
pub struct AnthropicToOpenAiStream {
    parser: SseParser,
    id: String,
    model: Value,
    created: u64,
    include_usage: bool,
    usage: Value,
    /// Anthropic content block index → OpenAI tool call index.
    tool_index: std::collections::HashMap<u64, u64>,
}

impl AnthropicToOpenAiStream {
    /// `include_usage`: the client asked for the final usage chunk.
    pub fn new(created: u64, include_usage: bool) -> Self {
        AnthropicToOpenAiStream {
            parser: SseParser::new(),
            id: "chatcmpl-weir".into(),
            model: Value::Null,
            created,
            include_usage,
            usage: json!({}),
            tool_index: std::collections::HashMap::new(),
        }
    }

    fn chunk(&self, delta: Value, finish: Value) -> String {
        let c = json!({
            "id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
        });
        format!("data: {c}\n\n")
    }

    /// The OpenAI bytes for this piece of the Anthropic stream (possibly none yet).
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<u8> {
        let mut events = Vec::new();
        self.parser.feed(chunk, &mut |e| {
            if let Ok(v) = serde_json::from_slice::<Value>(e.data) {
                events.push(v);
            }
        });
        let mut out = String::new();
        for v in events {
            match v.get("type").and_then(Value::as_str) {
                Some("message_start") => {
                    let m = &v["message"];
                    self.id = format!(
                        "chatcmpl-{}",
                        m.get("id").and_then(Value::as_str).unwrap_or("weir")
                    );
                    self.model = m.get("model").cloned().unwrap_or(Value::Null);
                    if let Some(u) = m.get("usage").and_then(Value::as_object) {
                        for (k, x) in u {
                            self.usage[k] = x.clone();
                        }
                    }
                    out.push_str(
                        &self.chunk(json!({"role": "assistant", "content": ""}), Value::Null),
                    );
                }
                // A tool call starts: OpenAI numbers tool calls, Anthropic numbers blocks.
                Some("content_block_start")
                    if v.pointer("/content_block/type").and_then(Value::as_str)
                        == Some("tool_use") =>
                {
                    let block = v.get("index").and_then(Value::as_u64).unwrap_or(0);
                    let index = self.tool_index.len() as u64;
                    self.tool_index.insert(block, index);
                    let call = json!({
                        "index": index,
                        "id": v.pointer("/content_block/id"),
                        "type": "function",
                        "function": {"name": v.pointer("/content_block/name"), "arguments": ""},
                    });
                    out.push_str(&self.chunk(json!({"tool_calls": [call]}), Value::Null));
                }
                Some("content_block_delta") => {
                    if let Some(text) = v.pointer("/delta/text").and_then(Value::as_str) {
                        out.push_str(&self.chunk(json!({"content": text}), Value::Null));
                    } else if let Some(partial) =
                        v.pointer("/delta/partial_json").and_then(Value::as_str)
                    {
                        let block = v.get("index").and_then(Value::as_u64).unwrap_or(0);
                        let index = self.tool_index.get(&block).copied().unwrap_or(0);
                        let call = json!({"index": index, "function": {"arguments": partial}});
                        out.push_str(&self.chunk(json!({"tool_calls": [call]}), Value::Null));
                    }
                }
                Some("message_delta") => {
                    if let Some(u) = v.get("usage").and_then(Value::as_object) {
                        for (k, x) in u {
                            self.usage[k] = x.clone();
                        }
                    }
                    let reason =
                        finish_reason(v.pointer("/delta/stop_reason").and_then(Value::as_str));
                    out.push_str(&self.chunk(json!({}), reason));
                }
                Some("message_stop") => {
                    if self.include_usage {
                        let c = json!({
                            "id": self.id, "object": "chat.completion.chunk", "created": self.created,
                            "model": self.model, "choices": [], "usage": openai_usage(&self.usage),
                        });
                        out.push_str(&format!("data: {c}\n\n"));
                    }
                    out.push_str("data: [DONE]\n\n");
                }
                Some("error") => {
                    let e = json!({"error": {
                        "message": v.pointer("/error/message").and_then(Value::as_str).unwrap_or(""),
                        "type": "server_error", "param": null,
                        "code": v.pointer("/error/type").and_then(Value::as_str).unwrap_or("api_error"),
                    }});
                    out.push_str(&format!("data: {e}\n\n"));
                }
                _ => {} // ping, content_block_stop
            }
        }
        out.into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn translate(v: Value) -> Result<Value, BodyError> {
        openai_request_to_anthropic(v.to_string().as_bytes(), "claude-sonnet-4-5")
            .map(|b| serde_json::from_slice(&b).unwrap())
    }

    #[test]
    fn request_messages_system_and_parameters() {
        let out = translate(json!({
            "model": "best",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "developer", "content": [{"type": "text", "text": "Use French."}]},
                {"role": "user", "content": "Hello"},
                {"role": "user", "content": [{"type": "text", "text": "Again"}]},
                {"role": "assistant", "content": "Bonjour"},
                {"role": "user", "content": "Thanks"}
            ],
            "temperature": 0.3, "top_p": 0.9, "stop": "END", "stream": true, "user": "u-1",
            "max_completion_tokens": 200, "seed": 7, "stream_options": {"include_usage": true}, "n": 1
        }))
        .unwrap();
        assert_eq!(out["model"], "claude-sonnet-4-5");
        assert_eq!(out["system"], "Be brief.\n\nUse French.");
        assert_eq!(
            out["messages"],
            json!([
                {"role": "user", "content": [{"type": "text", "text": "Hello"}, {"type": "text", "text": "Again"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "Bonjour"}]},
                {"role": "user", "content": [{"type": "text", "text": "Thanks"}]}
            ])
        );
        assert_eq!(
            (out["temperature"].as_f64(), out["top_p"].as_f64()),
            (Some(0.3), Some(0.9))
        );
        assert_eq!(out["stop_sequences"], json!(["END"]));
        assert_eq!(
            (out["stream"].as_bool(), out["max_tokens"].as_u64()),
            (Some(true), Some(200))
        );
        assert_eq!(out["metadata"]["user_id"], "u-1");
        assert!(out.get("seed").is_none() && out.get("stream_options").is_none());
    }

    #[test]
    fn tools_calls_results_and_images() {
        let out = translate(json!({
            "model": "m",
            "messages": [
                {"role": "user", "content": [
                    {"type": "text", "text": "What is in this image, and the weather?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                    {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}}
                ]},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}}
                ]},
                {"role": "tool", "tool_call_id": "call_1", "content": "18C and sunny"}
            ],
            "tools": [{"type": "function", "function": {"name": "weather", "description": "Weather now",
                       "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
            "tool_choice": {"type": "function", "function": {"name": "weather"}},
            "parallel_tool_calls": false
        }))
        .unwrap();
        let m = &out["messages"];
        assert_eq!(
            m[0]["content"][1]["source"],
            json!({"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="})
        );
        assert_eq!(
            m[0]["content"][2]["source"],
            json!({"type": "url", "url": "https://example.com/cat.jpg"})
        );
        assert_eq!(
            m[1]["content"],
            json!([{"type": "tool_use", "id": "call_1", "name": "weather", "input": {"city": "Paris"}}])
        );
        assert_eq!(
            m[2],
            json!({"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_1", "content": "18C and sunny"}]})
        );
        assert_eq!(
            out["tools"][0]["input_schema"]["properties"]["city"]["type"],
            "string"
        );
        assert_eq!(out["tools"][0]["description"], "Weather now");
        assert_eq!(
            out["tool_choice"],
            json!({"type": "tool", "name": "weather", "disable_parallel_tool_use": true})
        );
        let e = translate(json!({"model": "m", "messages": [{"role": "assistant", "tool_calls": [{"id": "x", "function": {"name": "f", "arguments": "not json"}}]}]})).unwrap_err();
        assert!(e.message.contains("JSON"));
    }

    #[test]
    fn tool_use_responses() {
        let anthropic = json!({"id": "msg_2", "model": "claude-x", "stop_reason": "tool_use",
            "content": [{"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris"}}],
            "usage": {"input_tokens": 5, "output_tokens": 9}});
        let out: Value = serde_json::from_slice(&anthropic_response_to_openai(
            anthropic.to_string().as_bytes(),
            1,
        ))
        .unwrap();
        let msg = &out["choices"][0]["message"];
        assert!(msg["content"].is_null());
        assert_eq!(msg["tool_calls"][0]["id"], "toolu_1");
        assert_eq!(msg["tool_calls"][0]["function"]["name"], "weather");
        assert_eq!(
            serde_json::from_str::<Value>(
                msg["tool_calls"][0]["function"]["arguments"]
                    .as_str()
                    .unwrap()
            )
            .unwrap(),
            json!({"city": "Paris"})
        );
        assert_eq!(out["choices"][0]["finish_reason"], "tool_calls");

        let stream = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"model\":\"c\",\"usage\":{\"input_tokens\":3}}}\n\n\
event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_9\",\"name\":\"weather\",\"input\":{}}}\n\n\
event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"city\\\": \"}}\n\n\
event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"\\\"Paris\\\"}\"}}\n\n\
event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\"},\"usage\":{\"output_tokens\":4}}\n\n\
event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";
        let mut t = AnthropicToOpenAiStream::new(1, false);
        let c = chunks(&t.feed(stream.as_bytes()));
        let calls: Vec<&Value> = c
            .iter()
            .filter_map(|x| x["choices"][0]["delta"].get("tool_calls"))
            .collect();
        assert_eq!(calls[0][0]["id"], "toolu_9");
        assert_eq!(calls[0][0]["function"]["name"], "weather");
        let args: String = calls
            .iter()
            .filter_map(|x| x[0]["function"]["arguments"].as_str())
            .collect();
        assert_eq!(
            serde_json::from_str::<Value>(&args).unwrap(),
            json!({"city": "Paris"})
        );
        assert_eq!(
            c.last().unwrap()["choices"][0]["finish_reason"],
            "tool_calls"
        );
    }

    #[test]
    fn default_max_tokens() {
        let out = translate(json!({"model": "m", "messages": [{"role": "user", "content": "x"}]}))
            .unwrap();
        assert_eq!(out["max_tokens"], DEFAULT_MAX_TOKENS);
    }

    #[test]
    fn untranslatable_parameters_are_refused_by_name() {
        let base = || json!({"model": "m", "messages": [{"role": "user", "content": "x"}]});
        for (field, value, param) in [
            ("temperature", json!(1.5), Some("temperature")),
            ("n", json!(2), Some("n")),
            ("tools", json!([{"type": "retrieval"}]), Some("tools")),
            ("tool_choice", json!(7), Some("tool_choice")),
            ("functions", json!([]), Some("functions")),
            ("presence_penalty", json!(0.5), Some("presence_penalty")),
            ("logprobs", json!(true), None),
            ("response_format", json!({"type": "json_object"}), None),
        ] {
            let mut req = base();
            req[field] = value;
            let e = translate(req).unwrap_err();
            assert_eq!(e.param, param, "{field}");
            assert!(e.message.contains(field), "{}", e.message);
        }
        let e = translate(json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]})).unwrap_err();
        assert!(e.message.contains("image"));
    }

    #[test]
    fn buffered_response() {
        let anthropic = json!({
            "id": "msg_01", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
            "content": [{"type": "text", "text": "Hi there"}], "stop_reason": "max_tokens", "stop_sequence": null,
            "usage": {"input_tokens": 10, "output_tokens": 5, "cache_read_input_tokens": 3, "cache_creation_input_tokens": 0}
        });
        let out: Value = serde_json::from_slice(&anthropic_response_to_openai(
            anthropic.to_string().as_bytes(),
            1,
        ))
        .unwrap();
        assert_eq!(out["object"], "chat.completion");
        assert_eq!(out["choices"][0]["message"]["content"], "Hi there");
        assert_eq!(out["choices"][0]["finish_reason"], "length");
        assert_eq!(
            out["usage"],
            json!({"prompt_tokens": 13, "completion_tokens": 5, "total_tokens": 18, "prompt_tokens_details": {"cached_tokens": 3}})
        );
        let err = json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}});
        let out: Value =
            serde_json::from_slice(&anthropic_response_to_openai(err.to_string().as_bytes(), 1))
                .unwrap();
        assert_eq!(out["error"]["message"], "Overloaded");
        assert_eq!(out["error"]["type"], "server_error");
    }

    const STREAM: &str = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"model\":\"claude-x\",\"usage\":{\"input_tokens\":12,\"output_tokens\":1}}}\n\n\
event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n\
event: ping\ndata: {\"type\":\"ping\"}\n\n\
event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hel\"}}\n\n\
event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"lo\"}}\n\n\
event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n\
event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":7}}\n\n\
event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";

    fn chunks(out: &[u8]) -> Vec<Value> {
        String::from_utf8_lossy(out)
            .split("\n\n")
            .filter_map(|e| e.strip_prefix("data: "))
            .filter(|d| *d != "[DONE]")
            .map(|d| serde_json::from_str(d).unwrap())
            .collect()
    }

    #[test]
    fn stream_translation_in_any_chunking() {
        let mut whole = AnthropicToOpenAiStream::new(1, true);
        let all = whole.feed(STREAM.as_bytes());
        let c = chunks(&all);
        assert_eq!(c[0]["choices"][0]["delta"]["role"], "assistant");
        let text: String = c
            .iter()
            .filter_map(|x| x["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(text, "Hello");
        assert_eq!(c[c.len() - 2]["choices"][0]["finish_reason"], "stop");
        assert_eq!(c.last().unwrap()["usage"]["completion_tokens"], 7);
        assert_eq!(c.last().unwrap()["usage"]["prompt_tokens"], 12);
        assert!(String::from_utf8_lossy(&all).ends_with("data: [DONE]\n\n"));
        // Byte by byte gives the same output.
        let mut split = AnthropicToOpenAiStream::new(1, true);
        let mut out = Vec::new();
        for b in STREAM.as_bytes() {
            out.extend(split.feed(std::slice::from_ref(b)));
        }
        assert_eq!(out, all);
        // Without include_usage: no usage chunk.
        let mut plain = AnthropicToOpenAiStream::new(1, false);
        assert!(chunks(&plain.feed(STREAM.as_bytes()))
            .iter()
            .all(|x| x.get("usage").is_none()));
    }
}

// ---- An Anthropic Messages client served by an OpenAI Chat Completions target ----------

/// Text of an Anthropic `content` or `system` (a string or blocks with `text`).
fn anthropic_text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(blocks) => blocks
            .iter()
            .filter_map(|b| b.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// An Anthropic image block as an OpenAI `image_url` content part.
fn openai_image_part(block: &Value) -> Result<Value, BodyError> {
    let source = &block["source"];
    let url = match source.get("type").and_then(Value::as_str) {
        Some("base64") => format!(
            "data:{};base64,{}",
            source
                .get("media_type")
                .and_then(Value::as_str)
                .unwrap_or("image/png"),
            source.get("data").and_then(Value::as_str).unwrap_or("")
        ),
        Some("url") => source
            .get("url")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
        _ => return Err(refuse("messages", "images must be base64 or URL sources")),
    };
    Ok(json!({"type": "image_url", "image_url": {"url": url}}))
}

/// The OpenAI messages for one Anthropic message (a user turn with tool results becomes
/// `tool` messages; an assistant turn with `tool_use` blocks carries `tool_calls`).
fn openai_messages(m: &Value) -> Result<Vec<Value>, BodyError> {
    let role = m.get("role").and_then(Value::as_str).unwrap_or("");
    if !matches!(role, "user" | "assistant") {
        return Err(refuse(
            "messages",
            &format!("the role `{role}` is not a Messages role"),
        ));
    }
    let blocks = match m.get("content") {
        Some(Value::String(s)) => return Ok(vec![json!({"role": role, "content": s})]),
        Some(Value::Array(b)) => b.clone(),
        _ => {
            return Err(refuse(
                "messages",
                "content must be a string or an array of blocks",
            ))
        }
    };
    let mut out = Vec::new();
    let mut parts = Vec::new();
    let mut calls = Vec::new();
    // Images a tool returned: a `tool` message holds text only, so they follow the tool
    // messages in a user message, each after a line naming its call.
    let mut tool_images = Vec::new();
    for b in &blocks {
        match b.get("type").and_then(Value::as_str) {
            Some("text") => parts.push(json!({"type": "text", "text": b.get("text").and_then(Value::as_str).unwrap_or("")})),
            Some("image") => parts.push(openai_image_part(b)?),
            Some("tool_use") => calls.push(json!({
                "id": b.get("id"),
                "type": "function",
                "function": {"name": b.get("name"), "arguments": b.get("input").map(Value::to_string).unwrap_or_else(|| "{}".into())},
            })),
            Some("tool_result") => {
                let content = b.get("content").unwrap_or(&Value::Null);
                let mut text = anthropic_text(content);
                let mut images = Vec::new();
                if let Value::Array(inner) = content {
                    for block in inner {
                        match block.get("type").and_then(Value::as_str) {
                            Some("text") => {}
                            Some("image") => images.push(openai_image_part(block)?),
                            _ => return Err(refuse("messages", "a tool_result may hold only text and image blocks")),
                        }
                    }
                }
                let id = b.get("tool_use_id").and_then(Value::as_str).unwrap_or("");
                if !images.is_empty() {
                    let note = format!("(The tool returned {} image(s); they follow in the next message.)", images.len());
                    text = if text.is_empty() { note } else { format!("{text}\n{note}") };
                    tool_images.push(json!({"type": "text", "text": format!("Image(s) returned by tool call {id}:")}));
                    tool_images.extend(images);
                }
                // OpenAI has no error flag on tool results: say it in the text.
                if b.get("is_error").and_then(Value::as_bool) == Some(true) {
                    text = format!("Error: {text}");
                }
                out.push(json!({"role": "tool", "tool_call_id": id, "content": text}));
            }
            _ => return Err(refuse("messages", "only text, image, tool_use and tool_result blocks are translated")),
        }
    }
    if !tool_images.is_empty() {
        tool_images.append(&mut parts);
        parts = tool_images;
    }
    let only_text = parts.iter().all(|p| p["type"] == "text");
    let content = if parts.is_empty() {
        Value::Null
    } else if only_text {
        json!(parts
            .iter()
            .filter_map(|p| p["text"].as_str())
            .collect::<Vec<_>>()
            .join("\n"))
    } else {
        Value::Array(parts)
    };
    if role == "assistant" {
        let mut msg = json!({"role": "assistant", "content": content});
        if !calls.is_empty() {
            msg["tool_calls"] = Value::Array(calls);
        }
        out.push(msg);
    } else if !content.is_null() {
        out.push(json!({"role": "user", "content": content}));
    }
    Ok(out)
}

/// The OpenAI Chat Completions request for an Anthropic Messages request, for `model`.
/// Streams ask for the usage chunk: Anthropic clients always get usage.
pub fn anthropic_request_to_openai(body: &[u8], model: &str) -> Result<Vec<u8>, BodyError> {
    let (req, mut out) = start_request(body, model)?;
    let mut messages = Vec::new();
    if let Some(system) = req.get("system") {
        messages.push(json!({"role": "system", "content": anthropic_text(system)}));
    }
    for (name, value) in &req {
        match name.as_str() {
            "model" | "weir" | "system" => {}
            "messages" => {
                let Some(list) = value.as_array() else {
                    return Err(refuse("messages", "it must be an array"));
                };
                for m in list {
                    messages.extend(openai_messages(m)?);
                }
            }
            "max_tokens" | "temperature" | "top_p" => {
                out.insert(name.clone(), value.clone());
            }
            "stop_sequences" => {
                out.insert("stop".into(), value.clone());
            }
            "stream" => {
                out.insert("stream".into(), value.clone());
                if value.as_bool() == Some(true) {
                    out.insert("stream_options".into(), json!({"include_usage": true}));
                }
            }
            "metadata" => {
                if let Some(user) = value.get("user_id") {
                    out.insert("user".into(), user.clone());
                }
            }
            "tools" => {
                let Some(list) = value.as_array() else {
                    return Err(refuse("tools", "it must be an array"));
                };
                let tools: Vec<Value> = list
                    .iter()
                    .map(|t| {
                        let mut f = json!({"name": t.get("name"), "parameters": t.get("input_schema").cloned().unwrap_or(json!({"type": "object"}))});
                        if let Some(d) = t.get("description") {
                            f["description"] = d.clone();
                        }
                        json!({"type": "function", "function": f})
                    })
                    .collect();
                out.insert("tools".into(), Value::Array(tools));
            }
            "tool_choice" => {
                let choice = match value.get("type").and_then(Value::as_str) {
                    Some("auto") => json!("auto"),
                    Some("any") => json!("required"),
                    Some("none") => json!("none"),
                    Some("tool") => {
                        json!({"type": "function", "function": {"name": value.get("name")}})
                    }
                    _ => return Err(refuse("tool_choice", "use auto, any, none or tool")),
                };
                if value
                    .get("disable_parallel_tool_use")
                    .and_then(Value::as_bool)
                    == Some(true)
                {
                    out.insert("parallel_tool_calls".into(), json!(false));
                }
                out.insert("tool_choice".into(), choice);
            }
            "top_k" => return Err(refuse("top_k", "OpenAI has no top_k")),
            "thinking" => {
                return Err(refuse(
                    "thinking",
                    "extended thinking has no OpenAI Chat Completions equivalent",
                ))
            }
            other => return Err(unknown_parameter(other)),
        }
    }
    out.insert("messages".into(), Value::Array(messages));
    serde_json::to_vec(&Value::Object(out)).map_err(|_| BodyError {
        message: "The request could not be translated.".into(),
        param: None,
    })
}

/// OpenAI `finish_reason` → Anthropic `stop_reason`.
pub fn stop_reason(finish: Option<&str>) -> Value {
    match finish {
        None => Value::Null,
        Some("length") => json!("max_tokens"),
        Some("tool_calls") | Some("function_call") => json!("tool_use"),
        Some("content_filter") => json!("refusal"),
        Some(_) => json!("end_turn"),
    }
}

fn anthropic_usage(u: &Value) -> Value {
    let n = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
    let cached = u
        .pointer("/prompt_tokens_details/cached_tokens")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    json!({
        "input_tokens": n("prompt_tokens").saturating_sub(cached),
        "cache_read_input_tokens": cached,
        "cache_creation_input_tokens": 0,
        "output_tokens": n("completion_tokens"),
    })
}

/// A buffered OpenAI response (a completion, or an error) in Anthropic's shape.
pub fn openai_response_to_anthropic(body: &[u8]) -> Vec<u8> {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return body.to_vec();
    };
    let out = if let Some(e) = v.get("error") {
        let code = e.get("type").and_then(Value::as_str).unwrap_or("");
        json!({"type": "error", "error": {
            "type": match code {
                "server_error" => "api_error",
                "rate_limit_exceeded" | "rate_limit_error" => "rate_limit_error",
                _ => "invalid_request_error",
            },
            "message": e.get("message").and_then(Value::as_str).unwrap_or(""),
        }})
    } else {
        let choice = &v["choices"][0];
        let message = &choice["message"];
        let mut content = Vec::new();
        if let Some(text) = message
            .get("content")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
        {
            content.push(json!({"type": "text", "text": text}));
        }
        for call in message
            .get("tool_calls")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let arguments = call
                .pointer("/function/arguments")
                .and_then(Value::as_str)
                .unwrap_or("{}");
            content.push(json!({
                "type": "tool_use",
                "id": call.get("id"),
                "name": call.pointer("/function/name"),
                "input": serde_json::from_str::<Value>(arguments).unwrap_or(json!({})),
            }));
        }
        json!({
            "id": format!("msg_{}", v.get("id").and_then(Value::as_str).unwrap_or("weir")),
            "type": "message",
            "role": "assistant",
            "model": v.get("model"),
            "content": content,
            "stop_reason": stop_reason(choice.get("finish_reason").and_then(Value::as_str)),
            "stop_sequence": null,
            "usage": anthropic_usage(v.get("usage").unwrap_or(&Value::Null)),
        })
    };
    serde_json::to_vec(&out).unwrap_or_default()
}

/// Turns an OpenAI chunk stream into Anthropic events as it arrives.
#[derive(Debug, Default)]
pub struct OpenAiToAnthropicStream {
    parser: SseParser,
    started: bool,
    /// The open content block: its index and whether it is text.
    open: Option<(u64, bool)>,
    next_index: u64,
    /// OpenAI tool call index → Anthropic block index.
    tools: std::collections::HashMap<u64, u64>,
    stop: Value,
    usage: Value,
    done: bool,
}

fn event(name: &str, data: Value) -> String {
    format!("event: {name}\ndata: {data}\n\n")
}

impl OpenAiToAnthropicStream {
    pub fn new() -> Self {
        Self::default()
    }

    fn close_block(&mut self, out: &mut String) {
        if let Some((index, _)) = self.open.take() {
            out.push_str(&event(
                "content_block_stop",
                json!({"type": "content_block_stop", "index": index}),
            ));
        }
    }

    fn finish(&mut self, out: &mut String) {
        if self.done {
            return;
        }
        self.done = true;
        self.close_block(out);
        out.push_str(&event(
            "message_delta",
            json!({"type": "message_delta", "delta": {"stop_reason": self.stop, "stop_sequence": null},
                   // Input tokens are only known at the end of an OpenAI stream.
                   "usage": if self.usage.is_object() { self.usage.clone() } else { json!({"output_tokens": 0}) }}),
        ));
        out.push_str(&event("message_stop", json!({"type": "message_stop"})));
    }

    /// The Anthropic bytes for this piece of the OpenAI stream (possibly none yet).
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<u8> {
        let mut datas = Vec::new();
        self.parser
            .feed(chunk, &mut |e| datas.push(e.data.to_vec()));
        let mut out = String::new();
        for data in datas {
            if data == b"[DONE]" {
                self.finish(&mut out);
                continue;
            }
            let Ok(v) = serde_json::from_slice::<Value>(&data) else {
                continue;
            };
            if !self.started {
                self.started = true;
                out.push_str(&event(
                    "message_start",
                    json!({"type": "message_start", "message": {
                    "id": format!("msg_{}", v.get("id").and_then(Value::as_str).unwrap_or("weir")),
                    "type": "message", "role": "assistant", "model": v.get("model"), "content": [],
                    "stop_reason": null, "stop_sequence": null,
                    "usage": {"input_tokens": 0, "output_tokens": 0}}}),
                ));
            }
            if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
                self.usage = anthropic_usage(u);
            }
            let Some(choice) = v.pointer("/choices/0") else {
                continue;
            };
            if let Some(text) = choice
                .pointer("/delta/content")
                .and_then(Value::as_str)
                .filter(|t| !t.is_empty())
            {
                if !matches!(self.open, Some((_, true))) {
                    self.close_block(&mut out);
                    let index = self.next_index;
                    self.next_index += 1;
                    self.open = Some((index, true));
                    out.push_str(&event(
                        "content_block_start",
                        json!({"type": "content_block_start", "index": index,
                        "content_block": {"type": "text", "text": ""}}),
                    ));
                }
                let index = self.open.map(|(i, _)| i).unwrap_or(0);
                out.push_str(&event(
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": index,
                    "delta": {"type": "text_delta", "text": text}}),
                ));
            }
            for call in choice
                .pointer("/delta/tool_calls")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let tool = call.get("index").and_then(Value::as_u64).unwrap_or(0);
                if let Some(id) = call.get("id").filter(|i| i.is_string()) {
                    self.close_block(&mut out);
                    let index = self.next_index;
                    self.next_index += 1;
                    self.open = Some((index, false));
                    self.tools.insert(tool, index);
                    out.push_str(&event("content_block_start", json!({"type": "content_block_start", "index": index,
                        "content_block": {"type": "tool_use", "id": id, "name": call.pointer("/function/name"), "input": {}}})));
                }
                if let Some(args) = call
                    .pointer("/function/arguments")
                    .and_then(Value::as_str)
                    .filter(|a| !a.is_empty())
                {
                    let index = self.tools.get(&tool).copied().unwrap_or(0);
                    out.push_str(&event(
                        "content_block_delta",
                        json!({"type": "content_block_delta", "index": index,
                        "delta": {"type": "input_json_delta", "partial_json": args}}),
                    ));
                }
            }
            if let Some(finish) = choice.get("finish_reason").and_then(Value::as_str) {
                self.stop = stop_reason(Some(finish));
            }
        }
        out.into_bytes()
    }
}

#[cfg(test)]
mod reverse_tests {
    use super::*;

    /// A tool result's images cannot ride in a `tool` message: they follow the tool
    /// messages in a user message, with the user's own blocks after them.
    #[test]
    fn tool_result_images_follow_in_a_user_message() {
        let png = json!({"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBOR"}});
        let req = json!({
            "model": "fast", "max_tokens": 50,
            "messages": [
                {"role": "assistant", "content": [
                    {"type": "tool_use", "id": "toolu_1", "name": "screenshot", "input": {}},
                    {"type": "tool_use", "id": "toolu_2", "name": "lookup", "input": {}}]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "the screen"}, png]},
                    {"type": "tool_result", "tool_use_id": "toolu_2", "is_error": true, "content": "not found"},
                    {"type": "text", "text": "What do you see?"}]}
            ]
        });
        let out: Value = serde_json::from_slice(
            &anthropic_request_to_openai(req.to_string().as_bytes(), "gpt-4o").unwrap(),
        )
        .unwrap();
        let m = out["messages"].as_array().unwrap();
        assert_eq!(m.len(), 4);
        assert_eq!(
            m[1],
            json!({"role": "tool", "tool_call_id": "toolu_1",
                   "content": "the screen\n(The tool returned 1 image(s); they follow in the next message.)"})
        );
        assert_eq!(
            m[2],
            json!({"role": "tool", "tool_call_id": "toolu_2", "content": "Error: not found"})
        );
        assert_eq!(
            m[3],
            json!({"role": "user", "content": [
                {"type": "text", "text": "Image(s) returned by tool call toolu_1:"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBOR"}},
                {"type": "text", "text": "What do you see?"}]})
        );
        // Other blocks inside a tool result are refused, naming the parameter.
        let doc = json!({"model": "fast", "max_tokens": 5, "messages": [{"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "t", "content": [{"type": "document", "source": {}}]}]}]});
        let e = anthropic_request_to_openai(doc.to_string().as_bytes(), "gpt-4o").unwrap_err();
        assert_eq!(e.param, Some("messages"));
        assert!(e.message.contains("only text and image"), "{}", e.message);
    }

    #[test]
    fn request_with_system_tools_results_and_images() {
        let req = json!({
            "model": "fast", "max_tokens": 300, "system": [{"type": "text", "text": "Be brief."}],
            "temperature": 0.5, "stop_sequences": ["END"], "stream": true, "metadata": {"user_id": "u1"},
            "tools": [{"name": "weather", "description": "Weather", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "Look"}, {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "AAA"}}]},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Oslo"}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "cold"}]}
            ]
        });
        let out: Value = serde_json::from_slice(
            &anthropic_request_to_openai(req.to_string().as_bytes(), "gpt-4o-mini").unwrap(),
        )
        .unwrap();
        assert_eq!(out["model"], "gpt-4o-mini");
        let m = &out["messages"];
        assert_eq!(m[0], json!({"role": "system", "content": "Be brief."}));
        assert_eq!(
            m[1]["content"][1],
            json!({"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,AAA"}})
        );
        assert_eq!(m[2]["tool_calls"][0]["function"]["name"], "weather");
        assert_eq!(
            serde_json::from_str::<Value>(
                m[2]["tool_calls"][0]["function"]["arguments"]
                    .as_str()
                    .unwrap()
            )
            .unwrap(),
            json!({"city": "Oslo"})
        );
        assert_eq!(
            m[3],
            json!({"role": "tool", "tool_call_id": "toolu_1", "content": "cold"})
        );
        assert_eq!(
            (out["stop"].clone(), out["user"].clone()),
            (json!(["END"]), json!("u1"))
        );
        assert_eq!(out["stream_options"], json!({"include_usage": true}));
        assert_eq!(
            out["tools"][0]["function"]["parameters"],
            json!({"type": "object"})
        );
        assert_eq!(
            (
                out["tool_choice"].clone(),
                out["parallel_tool_calls"].clone()
            ),
            (json!("required"), json!(false))
        );
        let e = anthropic_request_to_openai(
            br#"{"model":"m","max_tokens":5,"top_k":3,"messages":[]}"#,
            "x",
        )
        .unwrap_err();
        assert_eq!(e.param, Some("top_k"));
    }

    #[test]
    fn responses_and_errors() {
        let oa = json!({"id": "chatcmpl-1", "model": "gpt-4o-mini", "choices": [{"index": 0, "finish_reason": "tool_calls",
            "message": {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
            "function": {"name": "weather", "arguments": "{\"city\":\"Oslo\"}"}}]}}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14, "prompt_tokens_details": {"cached_tokens": 2}}});
        let out: Value =
            serde_json::from_slice(&openai_response_to_anthropic(oa.to_string().as_bytes()))
                .unwrap();
        assert_eq!(out["type"], "message");
        assert_eq!(
            out["content"][0],
            json!({"type": "tool_use", "id": "call_1", "name": "weather", "input": {"city": "Oslo"}})
        );
        assert_eq!(out["stop_reason"], "tool_use");
        assert_eq!(
            out["usage"],
            json!({"input_tokens": 8, "cache_read_input_tokens": 2, "cache_creation_input_tokens": 0, "output_tokens": 4})
        );
        let err = json!({"error": {"message": "slow down", "type": "rate_limit_exceeded", "param": null, "code": null}});
        let out: Value =
            serde_json::from_slice(&openai_response_to_anthropic(err.to_string().as_bytes()))
                .unwrap();
        assert_eq!(
            out,
            json!({"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}})
        );
    }

    #[test]
    fn stream_text_and_tool_deltas() {
        let c = |delta: Value, finish: Value| {
            format!(
                "data: {}\n\n",
                json!({"id": "c1", "model": "gpt-4o-mini", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
            )
        };
        let stream = [
            c(json!({"role": "assistant", "content": ""}), Value::Null),
            c(json!({"content": "Hel"}), Value::Null),
            c(json!({"content": "lo"}), Value::Null),
            c(json!({"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "weather", "arguments": ""}}]}), Value::Null),
            c(json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"city\":"}}]}), Value::Null),
            c(json!({"tool_calls": [{"index": 0, "function": {"arguments": "\"Oslo\"}"}}]}), Value::Null),
            c(json!({}), json!("tool_calls")),
            format!("data: {}\n\n", json!({"id": "c1", "model": "gpt-4o-mini", "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 9}})),
            "data: [DONE]\n\n".to_string(),
        ]
        .concat();
        let mut whole = OpenAiToAnthropicStream::new();
        let all = String::from_utf8(whole.feed(stream.as_bytes())).unwrap();
        let mut split = OpenAiToAnthropicStream::new();
        let mut parts = Vec::new();
        for b in stream.as_bytes().chunks(7) {
            parts.extend(split.feed(b));
        }
        assert_eq!(String::from_utf8(parts).unwrap(), all);
        let events: Vec<Value> = all
            .split("\n\n")
            .filter_map(|e| e.split("data: ").nth(1))
            .map(|d| serde_json::from_str(d).unwrap())
            .collect();
        let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert_eq!(
            kinds,
            [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        assert_eq!(events[5]["content_block"]["name"], "weather");
        assert_eq!(events[5]["index"], 1);
        assert_eq!(events[9]["delta"]["stop_reason"], "tool_use");
        assert_eq!(events[9]["usage"]["output_tokens"], 9);
    }
}

/// A stream being translated for the client, in whichever direction.
#[derive(Debug)]
pub enum StreamTranslation {
    /// Anthropic events for an OpenAI client.
    ToOpenAi(AnthropicToOpenAiStream),
    /// OpenAI chunks for an Anthropic client.
    ToAnthropic(OpenAiToAnthropicStream),
}

impl StreamTranslation {
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<u8> {
        match self {
            StreamTranslation::ToOpenAi(t) => t.feed(chunk),
            StreamTranslation::ToAnthropic(t) => t.feed(chunk),
        }
    }
}
