//! The response side: metering, translation back, metadata, the audit record and metrics.

use super::*;

impl WeirHttp {
    /// Takes usage from the meter and prices it (once).
    pub(super) fn settle(&mut self) {
        if self.settled || self.phase != Phase::Forwarded {
            return;
        }
        self.settled = true;
        if let Some(meter) = &mut self.meter {
            if !self.response_complete {
                // An aborted stream still counts what was seen; a partial JSON body has no usage.
                meter.finish();
            }
            let facts = std::mem::take(&mut meter.facts);
            self.record.usage = facts.usage;
            if facts.served_model.is_some() {
                self.record.served_model = facts.served_model;
            }
        }
        let Some(gateway) = self.gateway.clone() else {
            return;
        };
        let Some(usage) = self.record.usage else {
            self.record.cost_status = Some(if self.encoded_answer {
                "encoded_answer"
            } else {
                "no_usage"
            });
            return;
        };
        match gateway.price(
            self.record.served_model.as_deref(),
            self.target_model.as_deref(),
        ) {
            Some((priced_as, price)) => {
                let cost = price.cost(&usage);
                self.record.cost = Some(CostRecord {
                    currency: gateway.settings.currency.clone(),
                    micros: cost.micros(),
                    picos: cost.picos,
                    priced_as: priced_as.to_string(),
                });
                self.record.cost_status = Some("priced");
            }
            None => self.record.cost_status = Some("unpriced"),
        }
    }
    pub(super) fn finish_record(&mut self) {
        let now = host::now();
        if self.phase == Phase::Start {
            // Envoy answered the request before Weir saw it (an HTTP codec error, a filter
            // in front of Weir) but still runs the log phase: record what Envoy knows.
            self.started = host::property_u64(&["request", "time"])
                .map(|ns| SystemTime::UNIX_EPOCH + std::time::Duration::from_nanos(ns))
                .unwrap_or(now);
            self.record.request_id = envoy_request_id();
            let text = |path: &[&str]| {
                host::property(path)
                    .and_then(|v| String::from_utf8(v).ok())
                    .unwrap_or_default()
            };
            self.record.method = clip(&text(&["request", "method"]), 16).to_string();
            self.record.path = clip(&text(&["request", "url_path"]), 512).to_string();
        }
        self.record.status = host::property_u64(&["response", "code"]).unwrap_or(0) as u32;
        if self.phase == Phase::Start && self.record.status >= 400 {
            self.record.error = Some("rejected_by_envoy");
        }
        self.record.detail = host::property(&["response", "code_details"])
            .and_then(|d| String::from_utf8(d).ok())
            .filter(|d| !d.is_empty());
        self.settle();
        self.settle_limits();
        self.record.run_id = self.run_id().to_string();
        if self.phase == Phase::Forwarded && self.record.attempts == 0 {
            self.record.attempts = 1;
        }
        self.record.outcome = match self.phase {
            Phase::Answered => self.record.outcome,
            Phase::Forwarded if self.response_complete => {
                if (200..400).contains(&self.record.status) {
                    Outcome::Completed
                } else {
                    Outcome::UpstreamError
                }
            }
            Phase::Forwarded => {
                let downstream = self
                    .record
                    .detail
                    .as_deref()
                    .is_some_and(|d| d.contains("downstream"));
                if downstream || self.record.status == 0 {
                    Outcome::ClientAborted
                } else {
                    Outcome::UpstreamError
                }
            }
            Phase::Start if self.record.status >= 400 => Outcome::Denied,
            // A filter in front of Weir answered it (a CORS preflight, say).
            Phase::Start if self.record.status > 0 => Outcome::Completed,
            Phase::Start | Phase::AwaitingBody => Outcome::ClientAborted,
        };
        self.record.decision = match self.advised {
            Some(advised) => advised,
            None => match self.record.outcome {
                Outcome::Denied => "deny",
                Outcome::Error => "error",
                _ => "allow",
            },
        };
        self.record.time = humantime::format_rfc3339_millis(self.started).to_string();
        self.record.duration_ms = millis(now.duration_since(self.started).unwrap_or_default());
    }
    /// A translated request's answer arrived content-encoded: the client gets a 502 in its
    /// own API's shape instead (the body is replaced in `translate_response`).
    pub(super) fn refuse_encoded_translation(&mut self, headers: &mut HeaderSnapshot) {
        self.record.error = Some("provider_answer_encoded");
        for result in [
            headers.set(":status", "502"),
            headers.set("content-type", "application/json"),
            headers.remove("content-encoding"),
            headers.remove("content-length"),
        ] {
            if let Err(s) = result {
                log::warn!("weir: could not refuse an encoded answer (host status {s})");
            }
        }
    }
    /// A translated request's response, back in the client's API: streams event by event,
    /// buffered bodies (answers and errors) whole.
    pub(super) fn translate_response(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.encoded_answer {
            // Refused in the headers phase: the whole answer is replaced by the error.
            if !end_of_stream {
                return Action::Pause;
            }
            let error = GatewayError::new(
                ErrorKind::BadGateway,
                "The provider sent a content-encoded answer, which Weir cannot translate \
                 to this API.",
            )
            .with_code("provider_answer_encoded");
            if let Err(s) = host::set_buffer(RESPONSE_BODY, 0, body_size, &error.render(self.api)) {
                log::warn!("weir: could not replace the encoded answer (host status {s})");
            }
            self.response_complete = true;
            return Action::Continue;
        }
        if self.stream_translator.is_none() && !end_of_stream {
            return Action::Pause; // Envoy buffers; the body is translated whole.
        }
        let body = host::buffer(RESPONSE_BODY, 0, body_size).unwrap_or_default();
        if let Some(meter) = &mut self.meter {
            meter.feed(&body, end_of_stream);
            if end_of_stream {
                meter.finish();
            }
        }
        let out = match &mut self.stream_translator {
            Some(t) => t.feed(&body),
            None => match self.api {
                Api::Openai => {
                    let created = host::now()
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .map(|d| d.as_secs())
                        .unwrap_or(0);
                    translate::anthropic_response_to_openai(&body, created)
                }
                Api::Anthropic => translate::openai_response_to_anthropic(&body),
            },
        };
        if let Err(s) = host::set_buffer(RESPONSE_BODY, 0, body_size, &out) {
            log::warn!("weir: could not translate the response (host status {s})");
        }
        if end_of_stream {
            self.response_complete = true;
        }
        Action::Continue
    }
    /// Buffers a successful JSON response and adds the `weir` object at its top.
    pub(super) fn add_metadata(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if !end_of_stream {
            return Action::Pause; // Envoy buffers until the end.
        }
        let body = host::buffer(RESPONSE_BODY, 0, body_size).unwrap_or_default();
        if let Some(meter) = &mut self.meter {
            meter.feed(&body, true);
            meter.finish();
        }
        self.response_complete = true;
        self.settle();
        let metadata = serde_json::json!({
            "request_id": self.record.request_id,
            "run_id": self.run_id(),
            "tier": self.record.tier,
            "served_model": self.record.served_model,
            "usage": self.record.usage,
            "cost": self.record.cost,
            "cost_status": self.record.cost_status,
        });
        let Some(open) = body.iter().position(|b| *b == b'{') else {
            return Action::Continue;
        };
        let empty_object =
            body[open + 1..].iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'}');
        let mut member = format!("\"weir\":{metadata}").into_bytes();
        if !empty_object {
            member.push(b',');
        }
        let new_body = splice(
            &body,
            &mut [Edit {
                range: open + 1..open + 1,
                with: member,
            }],
        );
        if let Err(s) = host::set_buffer(RESPONSE_BODY, 0, body_size, &new_body) {
            log::warn!("weir: could not add response metadata (host status {s})");
        }
        Action::Continue
    }
    /// Counters and histograms for Prometheus (labels through Envoy's `stats_tags`).
    pub(super) fn record_metrics(&self) {
        let r = &self.record;
        let policy = match (&r.policy, r.policy_us) {
            (Some(name), Some(micros)) => Some((name.as_str(), r.policy_cached, micros)),
            _ => None,
        };
        metrics::record_request(&crate::metrics::RequestMetrics {
            endpoint: r.endpoint.unwrap_or("unknown"),
            tier: r.tier.as_deref().unwrap_or("none"),
            decision: r.decision,
            status: r.status,
            model: match (&self.gateway, self.target_model.as_deref()) {
                (Some(g), Some(model)) => g.metric_model(model),
                _ => "none",
            },
            team: r.team.as_deref().unwrap_or("none"),
            tokens: r.usage.map(|u| {
                [
                    u.prompt_tokens,
                    u.completion_tokens,
                    u.cached_tokens,
                    u.cache_write_tokens,
                    u.reasoning_tokens,
                ]
            }),
            cost_micros: r.cost.as_ref().map(|c| c.micros),
            unpriced: r.cost_status == Some("unpriced"),
            ttfb_ms: r.ttfb_ms.map(|ms| ms as u64),
            policy,
            limits_uncounted: r.limits_uncounted,
            idempotency_evicted: self.idempotency_evicted,
        });
    }
}
