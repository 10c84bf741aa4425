//! Anthropic Messages: usage in buffered JSON and in the SSE stream (`message_start` holds
//! input and cache tokens, `message_delta` the cumulative output).

use serde::Deserialize;

use super::ResponseFacts;
use crate::usage::Usage;

#[derive(Debug, Default, Deserialize)]
pub struct AnthropicUsage {
    #[serde(default)]
    pub input_tokens: Option<u64>,
    #[serde(default)]
    pub output_tokens: Option<u64>,
    #[serde(default)]
    pub cache_creation_input_tokens: Option<u64>,
    #[serde(default)]
    pub cache_read_input_tokens: Option<u64>,
}

/// Anthropic's `input_tokens` excludes cache reads and writes; Weir's `prompt_tokens` is
/// every input token, so the three are added.
fn merge(into: &mut Usage, u: &AnthropicUsage) {
    let input = u.input_tokens;
    let read = u.cache_read_input_tokens;
    let write = u.cache_creation_input_tokens;
    if input.is_some() || read.is_some() || write.is_some() {
        let uncached = input.unwrap_or(
            into.prompt_tokens
                .saturating_sub(into.cached_tokens)
                .saturating_sub(into.cache_write_tokens),
        );
        into.cached_tokens = read.unwrap_or(into.cached_tokens);
        into.cache_write_tokens = write.unwrap_or(into.cache_write_tokens);
        into.prompt_tokens = uncached
            .saturating_add(into.cached_tokens)
            .saturating_add(into.cache_write_tokens);
    }
    if let Some(out) = u.output_tokens {
        into.completion_tokens = out;
    }
    into.total_tokens = into.prompt_tokens.saturating_add(into.completion_tokens);
}

#[derive(Debug, Deserialize)]
struct Message {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    usage: Option<AnthropicUsage>,
}

pub fn facts_from_json(body: &[u8]) -> ResponseFacts {
    let (served_model, usage) = super::model_and_usage::<AnthropicUsage>(body);
    ResponseFacts {
        usage: usage.map(|u| {
            let mut usage = Usage::default();
            merge(&mut usage, &u);
            usage
        }),
        served_model,
    }
}

#[derive(Debug, Deserialize)]
struct StreamEvent {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    message: Option<Message>,
    #[serde(default)]
    usage: Option<AnthropicUsage>,
}

/// One SSE event of a Messages stream. Only `message_start` and `message_delta` are parsed.
pub fn on_sse_event(facts: &mut ResponseFacts, event: &[u8], data: &[u8]) {
    if !event.is_empty() && event != b"message_start" && event != b"message_delta" {
        return;
    }
    let Ok(e) = serde_json::from_slice::<StreamEvent>(data) else {
        return;
    };
    let usage = facts.usage.get_or_insert_with(Usage::default);
    match e.kind.as_str() {
        "message_start" => {
            if let Some(m) = e.message {
                if facts.served_model.is_none() {
                    facts.served_model = m.model;
                }
                if let Some(u) = m.usage {
                    merge(usage, &u);
                }
            }
        }
        "message_delta" => {
            if let Some(u) = e.usage {
                merge(usage, &u);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffered_usage_counts_cache_once() {
        let f = facts_from_json(br#"{"model":"claude-x","usage":{"input_tokens":10,"output_tokens":7,"cache_read_input_tokens":100,"cache_creation_input_tokens":20}}"#);
        let u = f.usage.unwrap();
        assert_eq!(u.prompt_tokens, 130);
        assert_eq!(u.cached_tokens, 100);
        assert_eq!(u.cache_write_tokens, 20);
        assert_eq!(u.completion_tokens, 7);
        assert_eq!(u.total_tokens, 137);
        assert_eq!(f.served_model.as_deref(), Some("claude-x"));
    }

    #[test]
    fn stream_usage() {
        let mut f = ResponseFacts::default();
        on_sse_event(&mut f, b"message_start", br#"{"type":"message_start","message":{"model":"claude-x","usage":{"input_tokens":25,"output_tokens":1,"cache_read_input_tokens":5}}}"#);
        on_sse_event(
            &mut f,
            b"content_block_delta",
            br#"{"type":"content_block_delta"}"#,
        );
        on_sse_event(&mut f, b"message_delta", br#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":15}}"#);
        let u = f.usage.unwrap();
        assert_eq!(
            (
                u.prompt_tokens,
                u.cached_tokens,
                u.completion_tokens,
                u.total_tokens
            ),
            (30, 5, 15, 45)
        );
        assert_eq!(f.served_model.as_deref(), Some("claude-x"));
    }
}
