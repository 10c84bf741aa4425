//! An OpenAI Chat Completions client served by an Anthropic Messages target: the request,
//! the buffered response, the SSE stream (event by event, as it arrives) and errors.
//!
//! Rules for what has no exact counterpart (the README lists them): system and developer
//! messages become `system`; `max_tokens` defaults to 4096 (Anthropic requires one);
//! `stop` becomes `stop_sequences`; `user` becomes `metadata.user_id`; `seed`, `store`,
//! `metadata`, `service_tier`, `stream_options` and zero penalties are dropped; a
//! `temperature` above 1, `n` other than 1, logprobs, logit bias, non-zero penalties,
//! response formats, audio, tools and images are refused with a 400 naming the parameter —
//! never silently wrong. (Tools and images are next.)

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

/// Text of an OpenAI message `content`: a string or text parts. Other parts are refused.
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
                    Some("image_url") => {
                        return Err(refuse(
                            "messages",
                            "images are not translated to Anthropic yet",
                        ))
                    }
                    _ => return Err(refuse("messages", "only text content parts are translated")),
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

/// The Anthropic request for an OpenAI chat request, for `model`.
pub fn openai_request_to_anthropic(body: &[u8], model: &str) -> Result<Vec<u8>, BodyError> {
    let Ok(Value::Object(req)) = serde_json::from_slice::<Value>(body) else {
        return Err(BodyError {
            message: "The request body must be a JSON object.".into(),
            param: None,
        });
    };
    let mut out = Map::new();
    out.insert("model".into(), json!(model));
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
                    if m.get("tool_calls").is_some() || role == "tool" || role == "function" {
                        return Err(refuse(
                            "messages",
                            "tool calls and results are not translated to Anthropic yet",
                        ));
                    }
                    let text = text_content(m.get("content").unwrap_or(&Value::Null))?;
                    match role {
                        "system" | "developer" => system.push(text),
                        "user" | "assistant" => {
                            // Anthropic wants alternating turns: merge consecutive ones.
                            if let Some(last) = messages.last_mut() {
                                if last["role"] == role {
                                    let joined = format!(
                                        "{}\n\n{text}",
                                        last["content"].as_str().unwrap_or("")
                                    );
                                    last["content"] = json!(joined);
                                    continue;
                                }
                            }
                            messages.push(json!({"role": role, "content": text}));
                        }
                        other => {
                            return Err(refuse(
                                "messages",
                                &format!("the role `{other}` has no Anthropic equivalent"),
                            ))
                        }
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
            "tools" | "tool_choice" | "functions" | "function_call" | "parallel_tool_calls" => {
                return Err(refuse(
                    static_name(name),
                    "tools are not translated to Anthropic yet",
                ));
            }
            other => {
                return Err(BodyError {
                    message: format!(
                        "The `{other}` parameter cannot be sent to this model's provider."
                    ),
                    param: None,
                })
            }
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
        "tools" => "tools",
        "tool_choice" => "tool_choice",
        "functions" => "functions",
        "function_call" => "function_call",
        _ => "parallel_tool_calls",
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
        let text: String = v
            .get("content")
            .and_then(Value::as_array)
            .map(|blocks| {
                blocks
                    .iter()
                    .filter_map(|b| b.get("text").and_then(Value::as_str))
                    .collect()
            })
            .unwrap_or_default();
        json!({
            "id": format!("chatcmpl-{}", v.get("id").and_then(Value::as_str).unwrap_or("weir")),
            "object": "chat.completion",
            "created": created,
            "model": v.get("model"),
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": null},
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
                Some("content_block_delta") => {
                    if let Some(text) = v.pointer("/delta/text").and_then(Value::as_str) {
                        out.push_str(&self.chunk(json!({"content": text}), Value::Null));
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
                _ => {} // ping, content_block_start/stop
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
                {"role": "user", "content": "Hello\n\nAgain"},
                {"role": "assistant", "content": "Bonjour"},
                {"role": "user", "content": "Thanks"}
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
            ("tools", json!([]), Some("tools")),
            ("tool_choice", json!("auto"), Some("tool_choice")),
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
        assert!(e.message.contains("images"));
        let e = translate(json!({"model": "m", "messages": [{"role": "tool", "content": "x", "tool_call_id": "1"}]})).unwrap_err();
        assert!(e.message.contains("tool"));
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
