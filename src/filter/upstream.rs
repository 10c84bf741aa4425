//! The per-attempt upstream filter (root id `weir-upstream`). On a failover tier the
//! request goes to an Envoy aggregate cluster whose retry policy moves each attempt to the
//! next cluster; this filter runs once per attempt and gives the attempt its own target:
//! the model in the body (translated when the target speaks the other API), the path, and
//! the provider's credential. It reports the target that answered in a response header the
//! main filter reads (and removes).

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;

use super::host::{self, REQUEST_BODY, REQUEST_HEADERS, RESPONSE_HEADERS};
use crate::body::{json_string, parse_llm_request, splice, Edit};
use crate::config::{Api, Gateway, Target};
use crate::routing::{failover_target, FAILOVER_HEADER};
use crate::translate;

/// Upstream response header: `<tier>;<target index>` of the attempt that answered.
pub const TARGET_HEADER: &str = "x-weir-target";

const CREDENTIAL_HEADERS: [&str; 3] = ["authorization", "x-api-key", "api-key"];

/// Plans (and first-attempt bodies) waiting for a possible retry, by `x-request-id`.
const MAX_PLANS: usize = 4096;
const MAX_STASHED_BYTES: usize = 64 * 1024 * 1024;

/// What later attempts of a request need: the plan, and the body as the first attempt sent
/// it (in the first target's API).
#[derive(Default)]
struct Stash {
    plan: String,
    body: Option<Vec<u8>>,
}

#[derive(Default)]
struct Plans {
    by_request: HashMap<String, Stash>,
    order: VecDeque<String>,
    bytes: usize,
}

impl Plans {
    fn evict(&mut self) {
        while self.order.len() > MAX_PLANS || self.bytes > MAX_STASHED_BYTES {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if let Some(stash) = self.by_request.remove(&old) {
                self.bytes -= stash.body.map_or(0, |b| b.len());
            }
        }
    }
}

thread_local! {
    // Header edits made by one attempt carry over to the next, so the plan header is
    // removed at the first attempt and remembered here (all attempts of a request run on
    // the same worker, so in the same VM). Bounded by count and bytes.
    static PLANS: RefCell<Plans> = RefCell::new(Plans::default());
}

fn remember(request_id: &str, plan: &str) {
    PLANS.with(|p| {
        let p = &mut *p.borrow_mut();
        if !p.by_request.contains_key(request_id) {
            p.order.push_back(request_id.to_string());
        }
        p.by_request.insert(
            request_id.to_string(),
            Stash {
                plan: plan.to_string(),
                body: None,
            },
        );
        p.evict();
    });
}

fn remember_body(request_id: &str, body: &[u8]) {
    PLANS.with(|p| {
        let p = &mut *p.borrow_mut();
        let mut added = 0;
        if let Some(stash) = p.by_request.get_mut(request_id) {
            if stash.body.is_none() {
                stash.body = Some(body.to_vec());
                added = body.len();
            }
        }
        p.bytes += added;
        p.evict();
    });
}

fn recall(request_id: &str) -> Option<(String, Option<Vec<u8>>)> {
    PLANS.with(|p| {
        p.borrow()
            .by_request
            .get(request_id)
            .map(|s| (s.plan.clone(), s.body.clone()))
    })
}

fn forget(request_id: &str) {
    PLANS.with(|p| {
        let p = &mut *p.borrow_mut();
        if let Some(stash) = p.by_request.remove(request_id) {
            p.bytes -= stash.body.map_or(0, |b| b.len());
            p.order.retain(|id| id != request_id);
        }
    });
}

pub struct WeirUpstream {
    gateway: Option<Rc<Gateway>>,
    request_id: Option<String>,
    /// `<tier>;<index>` of this attempt's target.
    answer: Option<String>,
    /// First attempt: keep the body for the retries.
    stash_body: bool,
    /// Later attempts: the target to prepare the body for, and the API of the stashed body.
    rewrite: Option<(Target, Api, Api)>,
}

impl WeirUpstream {
    pub fn new(gateway: Option<Rc<Gateway>>) -> Self {
        WeirUpstream {
            gateway,
            request_id: None,
            answer: None,
            stash_body: false,
            rewrite: None,
        }
    }

    fn target<'g>(gateway: &'g Gateway, tier: &str, index: usize) -> Option<&'g Target> {
        gateway.tiers.get(tier)?.targets.get(index)
    }

    fn api_of(gateway: &Gateway, target: &Target) -> Api {
        gateway
            .providers
            .get(target.provider)
            .map_or(Api::Openai, |p| p.api)
    }

    /// This attempt's body from the first attempt's: the model spliced in for the same API,
    /// or the request translated for the other.
    fn body_for(stashed: &[u8], from: Api, target: &Target, to: Api) -> Option<Vec<u8>> {
        if from == to {
            let request = parse_llm_request(stashed).ok()?;
            let mut edits = [Edit {
                range: request.model_field.range(),
                with: json_string(&target.model),
            }];
            return Some(splice(stashed, &mut edits));
        }
        match to {
            Api::Anthropic => translate::openai_request_to_anthropic(stashed, &target.model).ok(),
            Api::Openai => translate::anthropic_request_to_openai(stashed, &target.model).ok(),
        }
    }
}

impl Context for WeirUpstream {}

impl HttpContext for WeirUpstream {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(request_id) = host::header_str(REQUEST_HEADERS, "x-request-id") else {
            return Action::Continue;
        };
        let value = match host::header_str(REQUEST_HEADERS, FAILOVER_HEADER) {
            Some(value) => {
                // First attempt: keep the plan (and, below, the body) for the retries; the
                // provider never sees the plan.
                remember(&request_id, &value);
                self.stash_body = true;
                if let Err(s) = host::remove_header(REQUEST_HEADERS, FAILOVER_HEADER) {
                    log::warn!(
                        "weir-upstream: could not remove {FAILOVER_HEADER} (host status {s})"
                    );
                }
                value
            }
            None => match recall(&request_id) {
                Some((value, _)) => value,
                None => return Action::Continue,
            },
        };
        self.request_id = Some(request_id);
        let Some(gateway) = self.gateway.clone() else {
            return Action::Continue;
        };
        let attempt = host::header_str(REQUEST_HEADERS, "x-envoy-attempt-count")
            .and_then(|a| a.parse().ok())
            .unwrap_or(1);
        let (Some((tier, index)), Some((_, first))) =
            (failover_target(&value, attempt), failover_target(&value, 1))
        else {
            return Action::Continue;
        };
        self.answer = Some(format!("{tier};{index}"));
        if index == first {
            return Action::Continue; // The main filter already prepared the first target.
        }
        let (Some(target), Some(first_target)) = (
            Self::target(&gateway, tier, index),
            Self::target(&gateway, tier, first),
        ) else {
            return Action::Continue;
        };
        let Some(provider) = gateway.providers.get(target.provider) else {
            return Action::Continue;
        };
        for name in CREDENTIAL_HEADERS {
            if let Err(s) = host::remove_header(REQUEST_HEADERS, name) {
                log::warn!("weir-upstream: could not remove {name} (host status {s})");
            }
        }
        if let Some((name, secret)) = &provider.credential_header {
            if let Err(s) = host::set_header(REQUEST_HEADERS, name, &secret.0) {
                log::warn!("weir-upstream: could not set the credential (host status {s})");
            }
        }
        // Each attempt sets what its API needs: edits of earlier attempts carry over.
        let (path, version) = match provider.api {
            Api::Anthropic => ("/v1/messages", Some(provider.anthropic_version.as_str())),
            Api::Openai => ("/v1/chat/completions", None),
        };
        let _ = host::set_header(REQUEST_HEADERS, ":path", path);
        let _ = match version {
            Some(v) => host::set_header(REQUEST_HEADERS, "anthropic-version", v),
            None => host::remove_header(REQUEST_HEADERS, "anthropic-version"),
        };
        self.rewrite = Some((
            target.clone(),
            Self::api_of(&gateway, first_target),
            provider.api,
        ));
        Action::Continue
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if !self.stash_body && self.rewrite.is_none() {
            return Action::Continue;
        }
        if !end_of_stream {
            return Action::Pause; // Envoy buffers; the body is handled whole.
        }
        let body = host::buffer(REQUEST_BODY, 0, body_size).unwrap_or_default();
        let Some(request_id) = self.request_id.clone() else {
            return Action::Continue;
        };
        if self.stash_body {
            remember_body(&request_id, &body);
            return Action::Continue;
        }
        if let Some((target, from, to)) = &self.rewrite {
            let stashed = recall(&request_id).and_then(|(_, b)| b).unwrap_or(body);
            match Self::body_for(&stashed, *from, target, *to) {
                Some(new_body) => {
                    if let Err(s) = host::set_buffer(REQUEST_BODY, 0, body_size, &new_body) {
                        log::warn!("weir-upstream: could not rewrite the body (host status {s})");
                    }
                }
                None => log::warn!(
                    "weir-upstream: could not prepare the body for {}",
                    target.model
                ),
            }
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        // A response Envoy will not retry (not 429, not 5xx) ends the request's plan.
        let status: u32 = host::header_str(RESPONSE_HEADERS, ":status")
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        if status != 429 && status < 500 {
            if let Some(id) = &self.request_id {
                forget(id);
            }
        }
        if let Some(answer) = &self.answer {
            if let Err(s) = host::set_header(RESPONSE_HEADERS, TARGET_HEADER, answer) {
                log::warn!("weir-upstream: could not report the target (host status {s})");
            }
        }
        Action::Continue
    }
}
