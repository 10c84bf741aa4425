//! Forwarding: the body phase, translated requests, pass-through and route headers.

use super::*;
use crate::config::Provider;

impl WeirHttp {
    pub(super) fn on_request_body(
        &mut self,
        body_size: usize,
        end_of_stream: bool,
    ) -> Result<Action, Action> {
        let Some(gateway) = self.gateway.clone() else {
            return Err(self.internal("reading the configuration", 0));
        };
        if body_size > gateway.settings.max_body_bytes {
            return Err(self.reject(GatewayError::new(
                ErrorKind::PayloadTooLarge,
                format!(
                    "The request body is larger than the limit of {} bytes.",
                    gateway.settings.max_body_bytes
                ),
            )));
        }
        if !end_of_stream {
            return Ok(Action::Pause);
        }
        let body = host::buffer(REQUEST_BODY, 0, body_size).unwrap_or_default();
        let request = parse_llm_request(&body).map_err(|e| {
            self.reject(GatewayError::new(ErrorKind::BadRequest, e.message).with_param(e.param))
        })?;
        self.record.requested_model = Some(request.model.clone());
        self.record.stream = request.stream;
        self.client_include_usage = request
            .stream_options
            .as_ref()
            .and_then(|f| serde_json::from_str::<serde_json::Value>(f.text()).ok())
            .and_then(|v| v.get("include_usage").and_then(|u| u.as_bool()))
            .unwrap_or(false);

        // Directives from the `weir` body object (headers win), removed from the body.
        let mut weir_edit = None;
        if let Some(field) = &request.weir {
            let from_body = directives::from_body(field.text()).map_err(|message| {
                self.reject(
                    GatewayError::new(ErrorKind::BadRequest, message).with_param(Some("weir")),
                )
            })?;
            if let Some(id) = &from_body.request_id {
                if !self.headers.contains(REQUEST_ID_HEADER) {
                    match valid_request_id(id.as_bytes()) {
                        Some(id) => {
                            self.record.request_id = id;
                            self.client_request_id = true;
                        }
                        None => {
                            return Err(self.reject(
                                GatewayError::new(
                                    ErrorKind::BadRequest,
                                    "weir.request_id must be 1 to 128 characters of letters, digits, '.', '_', ':' and '-'.",
                                )
                                .with_param(Some("weir")),
                            ))
                        }
                    }
                }
            }
            self.directives.merge_body(from_body);
            weir_edit = Some(remove_member(&body, field).ok_or_else(|| {
                self.reject(
                    GatewayError::new(
                        ErrorKind::BadRequest,
                        "Write the `weir` key without escape sequences.",
                    )
                    .with_param(Some("weir")),
                )
            })?);
        }
        self.record.user = self.directives.user.clone();
        self.record.tags = self.directives.tags.clone();

        let advice = self.record.endpoint == Some(Endpoint::Advice.name());
        let plan = match self.decide(&gateway, &request) {
            Ok(plan) => plan,
            Err(e) if advice => return Err(self.advise(Err(e))),
            Err(e) => return Err(self.reject(e)),
        };
        if advice {
            return Err(self.advise(Ok(&plan)));
        }
        let Some(provider) = gateway.providers.get(plan.target.provider) else {
            return Err(self.internal("finding the provider", 0));
        };
        if self.endpoint == Some(Endpoint::CountTokens) {
            return self
                .forward_count_tokens(&gateway, &body, body_size, &request, weir_edit, &plan);
        }
        if let Some(limits) = &gateway.limits {
            self.apply_limits(&gateway, limits, &request, &plan)?;
        }

        self.provider_api = provider.api;
        if provider.api != self.api {
            return self.forward_translated(&gateway, &body, body_size, &plan);
        }
        let (mut edits, usage_added) = match self.api {
            Api::Openai => {
                let stream_usage = gateway.settings.stream_usage
                    && self
                        .endpoint
                        .is_some_and(Endpoint::needs_stream_usage_option);
                openai::request_edits(&request, &plan.target.model, stream_usage)
            }
            Api::Anthropic => (
                vec![Edit {
                    range: request.model_field.range(),
                    with: json_string(&plan.target.model),
                }],
                false,
            ),
        };
        edits.extend(weir_edit);
        if let Some(cap) = plan.max_tokens {
            edits.extend(request.cap_max_tokens(cap, self.api == Api::Openai));
        }
        let new_body = splice(&body, &mut edits);
        self.replace_body(body_size, &new_body, &plan)?;

        self.set_route_headers(gateway.as_ref(), &plan)?;
        self.send_to_target(provider, &plan)?;
        self.record.usage_requested_by_weir = usage_added;
        Ok(Action::Continue)
    }
    /// Replaces the request body and its `content-length` (the headers wait for this).
    /// Unless the tier fails over, the provider gets the new length rather than a chunked
    /// body, which some servers handle worse (the mock provider answers one ~70 µs later);
    /// a failover tier's request goes chunked, since its per-attempt filter may give a later
    /// attempt a body of another length after that attempt's headers have gone.
    fn replace_body(
        &mut self,
        body_size: usize,
        new_body: &[u8],
        plan: &Plan,
    ) -> Result<(), Action> {
        host::set_buffer(REQUEST_BODY, 0, body_size, new_body)
            .map_err(|s| self.internal("replacing the request body", s))?;
        let length = match plan.failover {
            None => self
                .headers
                .set("content-length", itoa::Buffer::new().format(new_body.len())),
            Some(_) => self.headers.remove("content-length"),
        };
        length.map_err(|s| self.internal("setting the body's length", s))
    }
    /// The last steps of sending a request in the provider's own API to `plan`'s target,
    /// once the body and the route are set: an unencoded answer asked for, the provider's
    /// credential and version, the request id, the route re-chosen, and the record.
    fn send_to_target(&mut self, provider: &Provider, plan: &Plan) -> Result<(), Action> {
        self.ask_for_unencoded_answers()?;
        if let Some((name, value)) = &provider.credential_header {
            host::set_header(REQUEST_HEADERS, name, &value.0)
                .map_err(|s| self.internal("setting the provider credential", s))?;
        }
        if provider.api == Api::Anthropic && !self.headers.contains("anthropic-version") {
            host::set_header(
                REQUEST_HEADERS,
                "anthropic-version",
                &provider.anthropic_version,
            )
            .map_err(|s| self.internal("setting anthropic-version", s))?;
        }
        host::set_header(REQUEST_HEADERS, REQUEST_ID_HEADER, &self.record.request_id)
            .map_err(|s| self.internal("setting the request id", s))?;
        host::clear_route_cache().map_err(|s| self.internal("clearing the route cache", s))?;

        self.record.tier = plan.tier.clone();
        self.record.served_model = Some(plan.target.model.clone());
        self.target_model = Some(plan.target.model.clone());
        self.record.provider = Some(provider.name.clone());
        self.record.cluster = Some(plan.target.cluster.clone());
        self.provider_api = provider.api;
        self.phase = Phase::Forwarded;
        Ok(())
    }
    /// The cluster header, and for a failover tier the attempt order and retry count.
    pub(super) fn set_route_headers(
        &mut self,
        gateway: &Gateway,
        plan: &Plan,
    ) -> Result<(), Action> {
        // A failover tier goes to its failover cluster, which tries the targets in order.
        let cluster = plan
            .failover
            .as_ref()
            .map_or(&plan.target.cluster, |f| &f.cluster);
        host::set_header(REQUEST_HEADERS, &gateway.settings.cluster_header, cluster)
            .map_err(|s| self.internal("setting the cluster header", s))?;
        if let (Some(f), Some(tier)) = (&plan.failover, &plan.tier) {
            host::set_header(
                REQUEST_HEADERS,
                FAILOVER_HEADER,
                &failover_header(tier, &f.order),
            )
            .map_err(|s| self.internal("setting the failover order", s))?;
            // One retry per remaining target (clients' x-envoy-* headers were removed).
            let retries = (f.order.len() - 1).to_string();
            host::set_header(REQUEST_HEADERS, "x-envoy-max-retries", &retries)
                .map_err(|s| self.internal("setting the retry count", s))?;
        }
        Ok(())
    }
    /// `POST /v1/messages/count_tokens`: to the plan's target if it speaks Anthropic's API
    /// (with its model, credential and version), else a 404 so that the client counts for
    /// itself (Claude Code falls back to its own estimate on an error, and would trust a
    /// made-up count). One target, no failover: the count is the target model's. Counting
    /// uses no tokens, so limits are not applied and nothing is metered.
    fn forward_count_tokens(
        &mut self,
        gateway: &Gateway,
        body: &[u8],
        body_size: usize,
        request: &LlmRequest<'_>,
        weir_edit: Option<Edit>,
        plan: &Plan,
    ) -> Result<Action, Action> {
        let Some(provider) = gateway.providers.get(plan.target.provider) else {
            return Err(self.internal("finding the provider", 0));
        };
        if provider.api != Api::Anthropic {
            return Err(self.reject(GatewayError::new(
                ErrorKind::EndpointNotFound,
                format!(
                    "Token counting needs an Anthropic model: `{}` is served by an OpenAI-style \
                     provider here.",
                    printable(&request.model)
                ),
            )));
        }
        let mut edits = vec![Edit {
            range: request.model_field.range(),
            with: json_string(&plan.target.model),
        }];
        edits.extend(weir_edit);
        self.replace_body(body_size, &splice(body, &mut edits), plan)?;
        host::set_header(
            REQUEST_HEADERS,
            &gateway.settings.cluster_header,
            &plan.target.cluster,
        )
        .map_err(|s| self.internal("setting the cluster header", s))?;
        self.send_to_target(provider, plan)?;
        Ok(Action::Continue)
    }
    /// Weir reads every answer it forwards (usage, translation, metadata), and the providers
    /// compress JSON answers for clients that accept it (the official SDKs do): the provider
    /// is asked for an unencoded one. Identity is always acceptable to the client; Envoy's
    /// compressor filter can compress toward it.
    fn ask_for_unencoded_answers(&mut self) -> Result<(), Action> {
        match self.headers.get("accept-encoding") {
            None => Ok(()),
            Some(value) if value.eq_ignore_ascii_case(b"identity") => Ok(()),
            Some(_) => self
                .headers
                .set("accept-encoding", "identity")
                .map_err(|s| self.internal("asking for an unencoded answer", s)),
        }
    }
    /// Sends a request to a target of the other API: the body translated, the path,
    /// version and credential of the provider.
    pub(super) fn forward_translated(
        &mut self,
        gateway: &Gateway,
        body: &[u8],
        body_size: usize,
        plan: &Plan,
    ) -> Result<Action, Action> {
        let include_usage = self.client_include_usage;
        let (translated, path) = match self.api {
            Api::Openai => (
                translate::openai_request_to_anthropic(body, &plan.target.model),
                "/v1/messages",
            ),
            Api::Anthropic => (
                translate::anthropic_request_to_openai(body, &plan.target.model),
                "/v1/chat/completions",
            ),
        };
        let translated = translated.map_err(|e| {
            self.reject(GatewayError::new(ErrorKind::BadRequest, e.message).with_param(e.param))
        })?;
        let translated = match plan.max_tokens {
            // A policy's cap applies to the translated request too.
            Some(cap) => match serde_json::from_slice::<serde_json::Value>(&translated) {
                Ok(mut v) => {
                    let current = v["max_tokens"].as_u64().unwrap_or(cap);
                    v["max_tokens"] = serde_json::json!(current.min(cap));
                    serde_json::to_vec(&v).unwrap_or(translated)
                }
                Err(_) => translated,
            },
            None => translated,
        };
        self.replace_body(body_size, &translated, plan)?;
        let Some(provider) = gateway.providers.get(plan.target.provider) else {
            return Err(self.internal("finding the provider", 0));
        };
        host::set_header(REQUEST_HEADERS, ":path", path)
            .map_err(|s| self.internal("setting the path", s))?;
        self.set_route_headers(gateway, plan)?;
        self.ask_for_unencoded_answers()?;
        for name in ["authorization", "x-api-key", "api-key"] {
            self.headers
                .remove(name)
                .map_err(|s| self.internal("removing credentials", s))?;
        }
        if let Some((name, value)) = &provider.credential_header {
            host::set_header(REQUEST_HEADERS, name, &value.0)
                .map_err(|s| self.internal("setting the provider credential", s))?;
        }
        match provider.api {
            Api::Anthropic => host::set_header(
                REQUEST_HEADERS,
                "anthropic-version",
                &provider.anthropic_version,
            ),
            Api::Openai => self.headers.remove("anthropic-version"),
        }
        .map_err(|s| self.internal("setting anthropic-version", s))?;
        host::set_header(REQUEST_HEADERS, REQUEST_ID_HEADER, &self.record.request_id)
            .map_err(|s| self.internal("setting the request id", s))?;
        host::clear_route_cache().map_err(|s| self.internal("clearing the route cache", s))?;

        self.translating = Some(include_usage);
        self.client_include_usage = include_usage;
        self.record.tier = plan.tier.clone();
        self.record.served_model = Some(plan.target.model.clone());
        self.target_model = Some(plan.target.model.clone());
        self.record.provider = Some(provider.name.clone());
        self.record.cluster = Some(plan.target.cluster.clone());
        self.phase = Phase::Forwarded;
        Ok(Action::Continue)
    }
    /// Other `/v1/` paths, when configured: authenticated and audited, sent as they are to
    /// the pass-through provider with its credential.
    pub(super) fn pass_through(&mut self, gateway: &Gateway) -> Result<Action, Action> {
        let provider = gateway
            .settings
            .passthrough_provider
            .as_ref()
            .and_then(|name| gateway.providers.iter().find(|p| &p.name == name));
        let Some(provider) = provider else {
            return Err(self.internal("finding the pass-through provider", 0));
        };
        host::set_header(
            REQUEST_HEADERS,
            &gateway.settings.cluster_header,
            &provider.cluster,
        )
        .map_err(|s| self.internal("setting the cluster header", s))?;
        if let Some((name, value)) = &provider.credential_header {
            host::set_header(REQUEST_HEADERS, name, &value.0)
                .map_err(|s| self.internal("setting the provider credential", s))?;
        }
        host::set_header(REQUEST_HEADERS, REQUEST_ID_HEADER, &self.record.request_id)
            .map_err(|s| self.internal("setting the request id", s))?;
        host::clear_route_cache().map_err(|s| self.internal("clearing the route cache", s))?;
        self.record.provider = Some(provider.name.clone());
        self.record.cluster = Some(provider.cluster.clone());
        self.phase = Phase::Forwarded;
        Ok(Action::Continue)
    }
}
