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

/// Reads usage from a response as it streams by: a buffered JSON body (kept until its end)
/// or SSE events (parsed as they arrive, nothing else kept).
#[derive(Debug)]
pub struct ResponseMeter {
    api: Api,
    sse: Option<crate::sse::SseParser>,
    json: Vec<u8>,
    json_limit: usize,
    json_overflow: bool,
    pub facts: ResponseFacts,
}

impl ResponseMeter {
    /// `streaming`: the response is `text/event-stream`. `json_limit` bounds the copy of a
    /// buffered body kept for accounting (the body itself always passes through).
    pub fn new(api: Api, streaming: bool, json_limit: usize) -> Self {
        ResponseMeter {
            api,
            sse: streaming.then(crate::sse::SseParser::new),
            json: Vec::new(),
            json_limit,
            json_overflow: false,
            facts: ResponseFacts::default(),
        }
    }

    pub fn feed(&mut self, chunk: &[u8]) {
        let api = self.api;
        let facts = &mut self.facts;
        match &mut self.sse {
            Some(parser) => parser.feed(chunk, &mut |event| match api {
                Api::Openai => openai::on_sse_event(facts, event.data),
                Api::Anthropic => anthropic::on_sse_event(facts, event.event, event.data),
            }),
            None => {
                if self.json.len() + chunk.len() > self.json_limit {
                    self.json_overflow = true;
                    self.json = Vec::new();
                } else if !self.json_overflow {
                    self.json.extend_from_slice(chunk);
                }
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
