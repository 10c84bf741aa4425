//! OpenAI Chat Completions: request rewrite (model, `stream_options.include_usage`) and usage
//! in buffered JSON and in the SSE stream.

use serde::Deserialize;

use super::ResponseFacts;
use crate::body::{json_string, member_range, Edit, LlmRequest};
use crate::usage::{find_usage_key, has_usage_object, Usage, USAGE_KEY};

/// Chat and legacy completions, embeddings (`prompt_tokens` only) and the Responses API
/// (`input_tokens` / `output_tokens` and their `_details`) report the same things under
/// two sets of names.
#[derive(Debug, Default, Deserialize)]
pub struct OpenAiUsage {
    #[serde(default, alias = "input_tokens")]
    pub prompt_tokens: Option<u64>,
    #[serde(default, alias = "output_tokens")]
    pub completion_tokens: Option<u64>,
    #[serde(default)]
    pub total_tokens: Option<u64>,
    #[serde(default, alias = "input_tokens_details")]
    pub prompt_tokens_details: Option<PromptDetails>,
    #[serde(default, alias = "output_tokens_details")]
    pub completion_tokens_details: Option<CompletionDetails>,
}

#[derive(Debug, Default, Deserialize)]
pub struct PromptDetails {
    #[serde(default)]
    pub cached_tokens: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
pub struct CompletionDetails {
    #[serde(default)]
    pub reasoning_tokens: Option<u64>,
}

impl OpenAiUsage {
    pub fn to_usage(&self) -> Usage {
        let prompt = self.prompt_tokens.unwrap_or(0);
        let completion = self.completion_tokens.unwrap_or(0);
        Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: self
                .total_tokens
                .unwrap_or(prompt.saturating_add(completion)),
            cached_tokens: self
                .prompt_tokens_details
                .as_ref()
                .and_then(|d| d.cached_tokens)
                .unwrap_or(0),
            cache_write_tokens: 0,
            reasoning_tokens: self
                .completion_tokens_details
                .as_ref()
                .and_then(|d| d.reasoning_tokens)
                .unwrap_or(0),
        }
    }
}

pub fn facts_from_json(body: &[u8]) -> ResponseFacts {
    let (served_model, usage) = super::model_and_usage::<OpenAiUsage>(body);
    ResponseFacts {
        usage: usage.map(|u| u.to_usage()),
        served_model,
    }
}

/// One `data:` payload of a Chat Completions stream.
pub fn on_sse_event(facts: &mut ResponseFacts, data: &[u8]) {
    if data == b"[DONE]" {
        return;
    }
    // Chunks carry `"usage": null` until the last one: parse only the first chunk (for the
    // model) and the chunk with a usage object.
    if facts.served_model.is_some() && !has_usage_object(data) {
        return;
    }
    // Only the top-level fields are read (json_top), not the chunk's choices.
    let [model, usage, response] =
        crate::json_top::top_level_fields(data, ["model", "usage", "response"]);
    let (mut model, mut usage) = super::parse_model_and_usage::<OpenAiUsage>(model, usage);
    // Responses API events carry the response object instead.
    if let (None, None, Some(inner)) = (&model, &usage, response) {
        let [m, u] = crate::json_top::top_level_fields(inner, ["model", "usage"]);
        (model, usage) = super::parse_model_and_usage(m, u);
    }
    if facts.served_model.is_none() {
        facts.served_model = model;
    }
    if let Some(u) = usage {
        facts.usage = Some(u.to_usage());
    }
}

/// What to do with a stream event when Weir, not the client, asked for usage.
#[derive(Debug, PartialEq, Eq)]
pub enum UsageStrip {
    Keep,
    /// The usage-only chunk (`"choices": []`): the client did not ask for it.
    Drop,
    /// A chunk with `"usage": null` at this range of the event's raw bytes.
    Cut(std::ops::Range<usize>),
}

#[derive(Deserialize)]
struct ChoicesOnly {
    #[serde(default)]
    choices: Vec<serde::de::IgnoredAny>,
}

/// Decides how to restore the stream the client asked for. `raw` is the event's bytes as
/// sent (`data: {...}` and its line ends), `data` its payload.
pub fn strip_usage(raw: &[u8], data: &[u8]) -> UsageStrip {
    if has_usage_object(data) {
        return match serde_json::from_slice::<ChoicesOnly>(data) {
            Ok(c) if c.choices.is_empty() => UsageStrip::Drop,
            // Usage on a chunk that also carries content: keep the content.
            _ => UsageStrip::Keep,
        };
    }
    // `"usage"` can only appear unescaped as a key: inside strings its quotes are escaped.
    let Some(key_start) = find_usage_key(raw) else {
        return UsageStrip::Keep;
    };
    let mut at = key_start + USAGE_KEY.len();
    let skip_ws = |at: &mut usize| {
        while raw.get(*at).is_some_and(u8::is_ascii_whitespace) {
            *at += 1;
        }
    };
    skip_ws(&mut at);
    if raw.get(at) != Some(&b':') {
        return UsageStrip::Keep;
    }
    at += 1;
    skip_ws(&mut at);
    if !raw[at..].starts_with(b"null") {
        return UsageStrip::Keep;
    }
    UsageStrip::Cut(member_range(raw, key_start, at + 4))
}

/// The edits that turn the client's request into the provider's: the concrete model, and
/// for streams a request for the final usage chunk. Returns whether usage was added.
pub fn request_edits(
    req: &LlmRequest<'_>,
    model: &str,
    want_stream_usage: bool,
) -> (Vec<Edit>, bool) {
    let mut edits = vec![Edit {
        range: req.model_field.range(),
        with: json_string(model),
    }];
    let mut usage_added = false;
    if req.stream && want_stream_usage {
        match req.stream_options {
            None => {
                let at = req.object_start + 1;
                edits.push(Edit {
                    range: at..at,
                    with: br#""stream_options":{"include_usage":true},"#.to_vec(),
                });
                usage_added = true;
            }
            Some(field) => {
                let mut options = match serde_json::from_str::<serde_json::Value>(field.text()) {
                    Ok(serde_json::Value::Object(map)) => map,
                    // null or another type: the provider will judge it; replace only null.
                    Ok(serde_json::Value::Null) => serde_json::Map::new(),
                    _ => return (edits, false),
                };
                if options.get("include_usage") != Some(&serde_json::Value::Bool(true)) {
                    options.insert("include_usage".into(), serde_json::Value::Bool(true));
                    if let Ok(text) = serde_json::to_vec(&options) {
                        edits.push(Edit {
                            range: field.range(),
                            with: text,
                        });
                        usage_added = true;
                    }
                }
            }
        }
    }
    (edits, usage_added)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body::{parse_llm_request, splice};
    use serde_json::Value;

    fn rewrite(body: &str, model: &str) -> (Value, bool) {
        let req = parse_llm_request(body.as_bytes()).unwrap();
        let (mut edits, added) = request_edits(&req, model, true);
        let out = splice(body.as_bytes(), &mut edits);
        (serde_json::from_slice(&out).unwrap(), added)
    }

    #[test]
    fn rewrites_model_only_when_buffered() {
        let (v, added) = rewrite(r#"{"model":"balanced","messages":[]}"#, "gpt-4o-mini");
        assert_eq!(v["model"], "gpt-4o-mini");
        assert!(v.get("stream_options").is_none());
        assert!(!added);
    }

    #[test]
    fn adds_stream_options() {
        let (v, added) = rewrite(r#"{"model":"balanced","stream":true}"#, "m");
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert!(added);
        let (v, added) = rewrite(
            r#"{"model":"b","stream":true,"stream_options":{"include_usage":false,"x":1}}"#,
            "m",
        );
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert_eq!(v["stream_options"]["x"], 1);
        assert!(added);
        let (v, added) = rewrite(r#"{"model":"b","stream":true,"stream_options":null}"#, "m");
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert!(added);
        let (_, added) = rewrite(
            r#"{"model":"b","stream":true,"stream_options":{"include_usage":true}}"#,
            "m",
        );
        assert!(!added);
    }

    #[test]
    fn usage_from_buffered_json() {
        let body = br#"{"id":"x","model":"gpt-4o-mini-2024","choices":[],"usage":{"prompt_tokens":10,"completion_tokens":5,"total_tokens":15,"prompt_tokens_details":{"cached_tokens":4},"completion_tokens_details":{"reasoning_tokens":2}}}"#;
        let f = facts_from_json(body);
        assert_eq!(f.served_model.as_deref(), Some("gpt-4o-mini-2024"));
        let u = f.usage.unwrap();
        assert_eq!(
            (u.prompt_tokens, u.completion_tokens, u.total_tokens),
            (10, 5, 15)
        );
        assert_eq!((u.cached_tokens, u.reasoning_tokens), (4, 2));
    }

    #[test]
    fn strip_decisions() {
        let raw = b"data: {\"id\":\"x\",\"choices\":[{\"delta\":{\"content\":\"say \\\"usage\\\": null\"}}],\"usage\":null}\n\n";
        let data = &raw[6..raw.len() - 2];
        let UsageStrip::Cut(range) = strip_usage(raw, data) else {
            panic!()
        };
        let mut out = raw.to_vec();
        out.drain(range);
        assert_eq!(out, b"data: {\"id\":\"x\",\"choices\":[{\"delta\":{\"content\":\"say \\\"usage\\\": null\"}}]}\n\n".to_vec());
        let usage_only = br#"{"id":"x","choices":[],"usage":{"prompt_tokens":1}}"#;
        assert_eq!(strip_usage(usage_only, usage_only), UsageStrip::Drop);
        let with_content = br#"{"choices":[{"delta":{}}],"usage":{"prompt_tokens":1}}"#;
        assert_eq!(strip_usage(with_content, with_content), UsageStrip::Keep);
        assert_eq!(strip_usage(b"[DONE]", b"[DONE]"), UsageStrip::Keep);
        let first = br#"{"usage": null, "id":"x"}"#;
        let UsageStrip::Cut(range) = strip_usage(first, first) else {
            panic!()
        };
        assert_eq!(&first[range], br#""usage": null,"#);
    }

    #[test]
    fn usage_from_other_openai_shapes() {
        let f = facts_from_json(br#"{"object":"list","model":"text-embedding-3-small","usage":{"prompt_tokens":8,"total_tokens":8}}"#);
        assert_eq!(f.usage.unwrap().prompt_tokens, 8);
        let f = facts_from_json(br#"{"object":"response","model":"gpt-4.1","usage":{"input_tokens":20,"output_tokens":9,"total_tokens":29,"input_tokens_details":{"cached_tokens":4},"output_tokens_details":{"reasoning_tokens":3}}}"#);
        let u = f.usage.unwrap();
        assert_eq!(
            (
                u.prompt_tokens,
                u.completion_tokens,
                u.cached_tokens,
                u.reasoning_tokens
            ),
            (20, 9, 4, 3)
        );
        let mut f = ResponseFacts::default();
        on_sse_event(
            &mut f,
            br#"{"type":"response.created","response":{"model":"gpt-4.1","usage":null}}"#,
        );
        on_sse_event(&mut f, br#"{"type":"response.completed","response":{"model":"gpt-4.1","usage":{"input_tokens":5,"output_tokens":2,"total_tokens":7}}}"#);
        assert_eq!(f.served_model.as_deref(), Some("gpt-4.1"));
        assert_eq!(f.usage.unwrap().total_tokens, 7);
    }

    #[test]
    fn usage_from_stream() {
        let mut f = ResponseFacts::default();
        on_sse_event(
            &mut f,
            br#"{"model":"m1","choices":[{"delta":{"content":"hi"}}],"usage":null}"#,
        );
        on_sse_event(&mut f, br#"{"model":"m1","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}"#);
        on_sse_event(&mut f, b"[DONE]");
        assert_eq!(f.served_model.as_deref(), Some("m1"));
        assert_eq!(f.usage.unwrap().total_tokens, 5);
    }
}
