//! One module per API shape: what Weir reads from requests and responses of that API.

pub mod anthropic;
pub mod openai;

use crate::config::Api;
use crate::usage::Usage;

/// What Weir learns from a response body: usage and the model that actually served.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ResponseFacts {
    pub usage: Option<Usage>,
    pub served_model: Option<String>,
}

/// The `model` and `usage` of a buffered answer (either API). Found with `json_top`, so the
/// rest of the answer (an embeddings array can be megabytes of numbers) is not parsed;
/// each value is then parsed alone, and one that does not parse is left out.
fn model_and_usage<U: serde::de::DeserializeOwned>(body: &[u8]) -> (Option<String>, Option<U>) {
    let [model, usage] = crate::json_top::top_level_fields(body, ["model", "usage"]);
    parse_model_and_usage(model, usage)
}

/// The raw `model` and `usage` values parsed; `null` or a value that does not parse is `None`.
fn parse_model_and_usage<U: serde::de::DeserializeOwned>(
    model: Option<&[u8]>,
    usage: Option<&[u8]>,
) -> (Option<String>, Option<U>) {
    let model = model
        .and_then(|m| serde_json::from_slice::<Option<String>>(m).ok())
        .flatten();
    let usage = usage
        .and_then(|u| serde_json::from_slice::<Option<U>>(u).ok())
        .flatten();
    (model, usage)
}

/// Reads usage from a response as it streams by: a buffered JSON body (kept until its end)
/// or SSE events (parsed as they arrive, nothing else kept).
#[derive(Debug)]
pub struct ResponseMeter {
    api: Api,
    sse: Option<crate::sse::SseParser>,
    json: Vec<u8>,
    json_limit: usize,
    json_overflow: bool,
    strip: Option<Stripper>,
    pub facts: ResponseFacts,
}

/// Rewrites an OpenAI stream for which Weir added `include_usage`, so the client gets the
/// stream it asked for. Only the bytes of an unfinished event are held back.
#[derive(Debug, Default)]
struct Stripper {
    /// Bytes received but not yet released, starting at stream offset `pending_start`.
    pending: Vec<u8>,
    pending_start: u64,
    /// Where the last complete event ended.
    last_end: u64,
    /// Ranges (stream offsets) to leave out, in order.
    cuts: Vec<std::ops::Range<u64>>,
}

impl Stripper {
    fn on_event(&mut self, data: &[u8], end: u64) {
        let start = self.last_end;
        self.last_end = end;
        let from = (start - self.pending_start) as usize;
        let to = (end - self.pending_start) as usize;
        let Some(raw) = self.pending.get(from..to) else {
            return;
        };
        match openai::strip_usage(raw, data) {
            openai::UsageStrip::Keep => {}
            openai::UsageStrip::Drop => self.cuts.push(start..end),
            openai::UsageStrip::Cut(r) => {
                self.cuts.push(start + r.start as u64..start + r.end as u64)
            }
        }
    }

    /// The bytes up to the last complete event (or all, at the end), minus the cuts.
    fn release(&mut self, all: bool) -> Vec<u8> {
        let upto = if all {
            self.pending_start + self.pending.len() as u64
        } else {
            self.last_end
        };
        // Offsets into `pending`; cuts lie inside released events, so every range is in it
        // (checked anyway: a broken invariant passes bytes on instead of killing the VM).
        let offset = |stream_at: u64| stream_at.saturating_sub(self.pending_start) as usize;
        let release = offset(upto).min(self.pending.len());
        let mut out = Vec::with_capacity(release);
        let mut at = 0;
        for cut in self.cuts.drain(..) {
            let (start, end) = (offset(cut.start).min(release), offset(cut.end).min(release));
            out.extend_from_slice(self.pending.get(at.min(start)..start).unwrap_or_default());
            at = at.max(end);
        }
        out.extend_from_slice(
            self.pending
                .get(at.min(release)..release)
                .unwrap_or_default(),
        );
        self.pending.drain(..release);
        self.pending_start = upto;
        out
    }
}

impl ResponseMeter {
    /// `streaming`: the response is `text/event-stream`. `json_limit` bounds the copy of a
    /// buffered body kept for accounting (the body itself always passes through).
    /// `strip_usage`: Weir added `include_usage` to an OpenAI stream and must remove what
    /// that added.
    pub fn new(api: Api, streaming: bool, json_limit: usize, strip_usage: bool) -> Self {
        ResponseMeter {
            api,
            sse: streaming.then(crate::sse::SseParser::new),
            json: Vec::new(),
            json_limit,
            json_overflow: false,
            strip: (streaming && strip_usage && api == Api::Openai).then(Stripper::default),
            facts: ResponseFacts::default(),
        }
    }

    /// True when `feed` may return replacement bytes for the chunks it sees.
    pub fn rewrites(&self) -> bool {
        self.strip.is_some()
    }

    /// Reads one chunk. Returns the bytes to send in its place when the stream is being
    /// rewritten (possibly empty while an event is incomplete), else `None`.
    pub fn feed(&mut self, chunk: &[u8], end_of_stream: bool) -> Option<Vec<u8>> {
        let api = self.api;
        let facts = &mut self.facts;
        match &mut self.sse {
            Some(parser) => {
                let strip = &mut self.strip;
                if let Some(s) = strip.as_mut() {
                    s.pending.extend_from_slice(chunk);
                }
                parser.feed(chunk, &mut |event| {
                    match api {
                        Api::Openai => openai::on_sse_event(facts, event.data),
                        Api::Anthropic => anthropic::on_sse_event(facts, event.event, event.data),
                    }
                    if let Some(s) = strip.as_mut() {
                        s.on_event(event.data, event.end);
                    }
                });
                strip.as_mut().map(|s| s.release(end_of_stream))
            }
            None => {
                if self.json.len() + chunk.len() > self.json_limit {
                    self.json_overflow = true;
                    self.json = Vec::new();
                } else if !self.json_overflow {
                    self.json.extend_from_slice(chunk);
                }
                None
            }
        }
    }

    /// The body ended: a buffered body is parsed now.
    pub fn finish(&mut self) {
        if self.sse.is_none() && !self.json_overflow && !self.json.is_empty() {
            self.facts = match self.api {
                Api::Openai => openai::facts_from_json(&self.json),
                Api::Anthropic => anthropic::facts_from_json(&self.json),
            };
            self.json = Vec::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// An OpenAI stream as the API sends it when `include_usage` is set.
    const OPENAI_WITH_USAGE: &[u8] = b"data: {\"id\":\"c\",\"model\":\"gpt-4o-mini-2024-07-18\",\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}],\"usage\":null}\n\n\
data: {\"id\":\"c\",\"model\":\"gpt-4o-mini-2024-07-18\",\"choices\":[{\"delta\":{\"content\":\"Hel\"}}],\"usage\":null}\n\n\
data: {\"id\":\"c\",\"model\":\"gpt-4o-mini-2024-07-18\",\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":null}\n\n\
data: {\"id\":\"c\",\"model\":\"gpt-4o-mini-2024-07-18\",\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":7,\"total_tokens\":19,\"prompt_tokens_details\":{\"cached_tokens\":4},\"completion_tokens_details\":{\"reasoning_tokens\":3}}}\n\n\
data: [DONE]\n\n";

    /// The same stream as the client would get without `include_usage`.
    const OPENAI_WITHOUT_USAGE: &[u8] = b"data: {\"id\":\"c\",\"model\":\"gpt-4o-mini-2024-07-18\",\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n\
data: {\"id\":\"c\",\"model\":\"gpt-4o-mini-2024-07-18\",\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\n\
data: {\"id\":\"c\",\"model\":\"gpt-4o-mini-2024-07-18\",\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n\
data: [DONE]\n\n";

    /// An Anthropic stream as the API sends it, with cache tokens.
    const ANTHROPIC: &[u8] = b"event: message_start\r\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"claude-sonnet-4-5\",\"usage\":{\"input_tokens\":20,\"cache_read_input_tokens\":100,\"cache_creation_input_tokens\":30,\"output_tokens\":1}}}\r\n\r\n\
event: ping\r\ndata: {\"type\": \"ping\"}\r\n\r\n\
event: content_block_delta\r\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\r\n\r\n\
event: message_delta\r\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":9}}\r\n\r\n\
event: message_stop\r\ndata: {\"type\":\"message_stop\"}\r\n\r\n";

    fn run(api: Api, stream: &[u8], cuts: &[usize], strip: bool) -> (Vec<u8>, ResponseFacts) {
        let mut meter = ResponseMeter::new(api, true, 1 << 20, strip);
        let mut out = Vec::new();
        let mut at = 0;
        let mut bounds: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
        bounds.sort_unstable();
        bounds.push(stream.len());
        for (i, b) in bounds.iter().enumerate() {
            let end = i + 1 == bounds.len();
            match meter.feed(&stream[at..*b], end) {
                Some(bytes) => out.extend(bytes),
                None => out.extend_from_slice(&stream[at..*b]),
            }
            at = *b;
        }
        meter.finish();
        (out, meter.facts)
    }

    #[test]
    fn openai_usage_and_stripping() {
        let (out, facts) = run(Api::Openai, OPENAI_WITH_USAGE, &[], true);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            String::from_utf8(OPENAI_WITHOUT_USAGE.to_vec()).unwrap()
        );
        let u = facts.usage.unwrap();
        assert_eq!(
            (
                u.prompt_tokens,
                u.completion_tokens,
                u.cached_tokens,
                u.reasoning_tokens
            ),
            (12, 7, 4, 3)
        );
        assert_eq!(
            facts.served_model.as_deref(),
            Some("gpt-4o-mini-2024-07-18")
        );
        // Not stripping: the stream passes as it is.
        let (out, _) = run(Api::Openai, OPENAI_WITH_USAGE, &[], false);
        assert_eq!(out, OPENAI_WITH_USAGE);
    }

    #[test]
    fn anthropic_usage() {
        let (out, facts) = run(Api::Anthropic, ANTHROPIC, &[], true);
        assert_eq!(out, ANTHROPIC);
        let u = facts.usage.unwrap();
        assert_eq!(
            (
                u.prompt_tokens,
                u.cached_tokens,
                u.cache_write_tokens,
                u.completion_tokens
            ),
            (150, 100, 30, 9)
        );
    }

    #[test]
    fn buffered_json() {
        let mut meter = ResponseMeter::new(Api::Openai, false, 1 << 20, true);
        let body = br#"{"model":"m","usage":{"prompt_tokens":2,"completion_tokens":3}}"#;
        assert!(meter.feed(&body[..10], false).is_none());
        assert!(meter.feed(&body[10..], true).is_none());
        meter.finish();
        assert_eq!(meter.facts.usage.unwrap().total_tokens, 5);
    }

    proptest! {
        #[test]
        fn any_chunking_gives_the_same_usage_and_bytes(cuts in proptest::collection::vec(0usize..2000, 0..20)) {
            let whole = run(Api::Openai, OPENAI_WITH_USAGE, &[], true);
            prop_assert_eq!(run(Api::Openai, OPENAI_WITH_USAGE, &cuts, true), whole);
            let whole = run(Api::Anthropic, ANTHROPIC, &[], false);
            prop_assert_eq!(run(Api::Anthropic, ANTHROPIC, &cuts, false), whole);
        }
    }
}
