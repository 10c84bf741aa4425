//! The per-attempt upstream filter (root id `weir-upstream`). On a failover tier the
//! request goes to an Envoy aggregate cluster whose retry policy moves each attempt to the
//! next cluster; this filter runs once per attempt and gives the attempt its own target:
//! the model in the body and the provider's credential. It reports the target that answered
//! in a response header the main filter reads (and removes).

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;

use super::host::{self, REQUEST_BODY, REQUEST_HEADERS, RESPONSE_HEADERS};
use crate::body::{json_string, parse_llm_request, splice, Edit};
use crate::config::{Api, Gateway, Target};
use crate::routing::{failover_target, FAILOVER_HEADER};

/// Upstream response header: `<tier>;<target index>` of the attempt that answered.
pub const TARGET_HEADER: &str = "x-weir-target";

const CREDENTIAL_HEADERS: [&str; 3] = ["authorization", "x-api-key", "api-key"];

/// Plans waiting for a possible retry, by `x-request-id`, at most this many.
const MAX_PLANS: usize = 4096;

thread_local! {
    // Header edits made by one attempt carry over to the next, so the plan header is
    // removed at the first attempt and remembered here (all attempts of a request run on
    // the same worker, so in the same VM).
    static PLANS: RefCell<(HashMap<String, String>, VecDeque<String>)> = RefCell::new(Default::default());
}

fn remember(request_id: &str, plan: &str) {
    PLANS.with(|p| {
        let (plans, order) = &mut *p.borrow_mut();
        if plans
            .insert(request_id.to_string(), plan.to_string())
            .is_none()
        {
            order.push_back(request_id.to_string());
        }
        while order.len() > MAX_PLANS {
            if let Some(old) = order.pop_front() {
                plans.remove(&old);
            }
        }
    });
}

fn recall(request_id: &str) -> Option<String> {
    PLANS.with(|p| p.borrow().0.get(request_id).cloned())
}

fn forget(request_id: &str) {
    PLANS.with(|p| {
        let (plans, order) = &mut *p.borrow_mut();
        if plans.remove(request_id).is_some() {
            order.retain(|id| id != request_id);
        }
    });
}

pub struct WeirUpstream {
    gateway: Option<Rc<Gateway>>,
    request_id: Option<String>,
    /// `<tier>;<index>` of this attempt's target.
    answer: Option<String>,
    /// This attempt's model, when it differs from the first attempt's.
    rewrite_to: Option<String>,
}

impl WeirUpstream {
    pub fn new(gateway: Option<Rc<Gateway>>) -> Self {
        WeirUpstream {
            gateway,
            request_id: None,
            answer: None,
            rewrite_to: None,
        }
    }

    fn target<'g>(gateway: &'g Gateway, tier: &str, index: usize) -> Option<&'g Target> {
        gateway.tiers.get(tier)?.targets.get(index)
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
                // First attempt: keep the plan for the retries; the provider never sees it.
                remember(&request_id, &value);
                if let Err(s) = host::remove_header(REQUEST_HEADERS, FAILOVER_HEADER) {
                    log::warn!(
                        "weir-upstream: could not remove {FAILOVER_HEADER} (host status {s})"
                    );
                }
                value
            }
            None => match recall(&request_id) {
                Some(value) => value,
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
        let Some(target) = Self::target(&gateway, tier, index) else {
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
        if provider.api == Api::Anthropic
            && host::header(REQUEST_HEADERS, "anthropic-version").is_none()
        {
            let _ = host::set_header(
                REQUEST_HEADERS,
                "anthropic-version",
                &provider.anthropic_version,
            );
        }
        self.rewrite_to = Some(target.model.clone());
        Action::Continue
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let Some(model) = &self.rewrite_to else {
            return Action::Continue;
        };
        if !end_of_stream {
            return Action::Pause; // Envoy buffers; the body is rewritten whole.
        }
        let body = host::buffer(REQUEST_BODY, 0, body_size).unwrap_or_default();
        if let Ok(request) = parse_llm_request(&body) {
            let mut edits = [Edit {
                range: request.model_field.range(),
                with: json_string(model),
            }];
            let new_body = splice(&body, &mut edits);
            if let Err(s) = host::set_buffer(REQUEST_BODY, 0, body_size, &new_body) {
                log::warn!("weir-upstream: could not rewrite the body (host status {s})");
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
