//! One request through Weir: authenticate in the headers phase, route and rewrite in the
//! body phase, meter the response as it streams by, write one audit record in the log phase.

use std::rc::Rc;
use std::time::SystemTime;

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;

use super::host::{self, REQUEST_BODY, REQUEST_HEADERS, RESPONSE_BODY, RESPONSE_HEADERS};
use super::metrics;
use super::store::SharedData;
use crate::audit::{millis, AuditRecord, CostRecord, Outcome};
use crate::body::{json_string, parse_llm_request, remove_member, splice, Edit, LlmRequest};
use crate::config::Target;
use crate::config::{Api, Gateway};
use crate::directives::{self, Directives};
use crate::endpoint::{error_api, is_json_content_type, strip_credential_params, Endpoint};
use crate::errors::{ErrorKind, GatewayError};
use crate::jwt::{self, JwtIdentity};
use crate::keys::{presented_key, PresentedKey};
use crate::limits::{
    admit, first_use, run_call, run_usage, settle, subjects as limit_subjects, usage_snapshot,
    Admission, Estimate, FailMode, Headroom, LimitsConfig, Refusal,
};
use crate::metrics::name as metric;
use crate::models;
use crate::policy::{build_input, CallerInput, Decision, InputParts, ParamsInput};
use crate::providers::{openai, ResponseMeter};
use crate::routing::{
    failover_header, failover_target, printable, route, Failover, FAILOVER_HEADER,
};
use crate::scopes::Scopes;
use crate::translate::{self, AnthropicToOpenAiStream, OpenAiToAnthropicStream, StreamTranslation};
use crate::usage::Usage;

/// Headers never shown to policies.
const SECRET_HEADERS: [&str; 4] = [
    "authorization",
    "x-api-key",
    "cookie",
    "proxy-authorization",
];

/// Where an allowed request goes.
struct Plan {
    /// `None` for a concrete model.
    tier: Option<String>,
    failover: Option<Failover>,
    target: Target,
    provider: String,
    max_tokens: Option<u64>,
}

/// Client headers that carry the client's own credential: never forwarded.
const CLIENT_CREDENTIAL_HEADERS: [&str; 2] = ["authorization", "x-api-key"];
/// Headers only Weir sets (the cluster header is removed separately): never from a client.
const INTERNAL_HEADERS: [&str; 1] = [FAILOVER_HEADER];

/// Weir's request-id directive and response header.
const REQUEST_ID_HEADER: &str = "x-weir-request-id";
const RUN_ID_HEADER: &str = "x-weir-run-id";
/// Directive headers: read by Weir, never forwarded.
const DIRECTIVE_HEADERS: [&str; 5] = [
    "x-weir-user",
    RUN_ID_HEADER,
    "x-weir-tags",
    "x-weir-policy",
    NEW_RUN_HEADER,
];
/// `x-weir-new-run: true` starts the named run afresh.
const NEW_RUN_HEADER: &str = "x-weir-new-run";
/// A copy of a buffered response larger than this is not kept for accounting.
const MAX_METERED_JSON: usize = 16 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Headers not yet seen.
    Start,
    /// Authenticated; the body is being buffered.
    AwaitingBody,
    /// Handed to the router.
    Forwarded,
    /// Weir answered itself.
    Answered,
}

/// Who is calling: a configured key (its index in the key index) or a JWT identity.
enum Caller {
    Key(usize),
    Jwt(JwtIdentity),
}

/// The caller's scopes; none (deny everything) when there is no caller.
fn scopes_of<'a>(gateway: &'a Gateway, caller: &'a Option<Caller>) -> Option<&'a Scopes> {
    match caller.as_ref()? {
        Caller::Key(index) => gateway.keys.get(*index).map(|k| &k.scopes),
        Caller::Jwt(identity) => Some(&identity.scopes),
    }
}

pub struct WeirHttp {
    gateway: Option<Rc<Gateway>>,
    endpoint: Option<Endpoint>,
    caller: Option<Caller>,
    phase: Phase,
    started: SystemTime,
    /// The API the client speaks, for error shapes and response metering.
    api: Api,
    record: AuditRecord,
    directives: Directives,
    /// The model Weir sent upstream (the price fallback when the provider names another).
    target_model: Option<String>,
    meter: Option<ResponseMeter>,
    response_complete: bool,
    /// Buffer the (JSON) response to add the `weir` metadata object.
    inject_metadata: bool,
    /// Usage and cost have been taken from the meter.
    settled: bool,
    /// The decision given by the advice endpoint.
    advised: Option<&'static str>,
    /// The client chose the request id (idempotency applies).
    client_request_id: bool,
    new_run: bool,
    /// Reservations to settle when the response ends.
    admission: Option<Admission>,
    /// For the `x-ratelimit-*` headers.
    headroom: (Option<Headroom>, Option<Headroom>),
    run_counted: bool,
    /// The response is translated back to the client's API: `Some(client's include_usage)`.
    translating: Option<bool>,
    /// The client asked for the usage chunk itself (`stream_options.include_usage`).
    client_include_usage: bool,
    /// The API of the provider serving the request (responses are metered in it).
    provider_api: Api,
    stream_translator: Option<StreamTranslation>,
}

impl WeirHttp {
    pub fn new(gateway: Option<Rc<Gateway>>) -> Self {
        WeirHttp {
            gateway,
            endpoint: None,
            caller: None,
            phase: Phase::Start,
            started: SystemTime::UNIX_EPOCH,
            api: Api::Openai,
            record: AuditRecord::default(),
            directives: Directives::default(),
            target_model: None,
            meter: None,
            response_complete: false,
            inject_metadata: false,
            settled: false,
            advised: None,
            client_request_id: false,
            new_run: false,
            admission: None,
            headroom: (None, None),
            run_counted: false,
            translating: None,
            client_include_usage: false,
            provider_api: Api::Openai,
            stream_translator: None,
        }
    }

    /// Answers with `error` in the client's API shape and records why.
    fn reject(&mut self, error: GatewayError) -> Action {
        let status = error.status();
        self.record.outcome = match error.kind {
            ErrorKind::Internal => Outcome::Error,
            _ => Outcome::Denied,
        };
        self.record.error = Some(error.code());
        self.record.reason = Some(error.message.clone());
        self.phase = Phase::Answered;
        let body = error.render(self.api);
        let run_id = self.run_id().to_string();
        let headers = [
            ("content-type", "application/json"),
            (REQUEST_ID_HEADER, self.record.request_id.as_str()),
            (RUN_ID_HEADER, run_id.as_str()),
        ];
        let details = format!("weir_{}", error.code());
        let retry_after = error.retry_after.map(|s| s.to_string());
        let mut headers = headers.to_vec();
        if let Some(seconds) = &retry_after {
            headers.push(("retry-after", seconds.as_str()));
        }
        let limits = self.ratelimit_headers();
        headers.extend(limits.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        if let Err(status_code) = host::send_local_response(status, &headers, &body, &details) {
            log::error!("weir: local reply failed with status {status_code}");
        }
        Action::Pause
    }

    /// The run this request belongs to: the caller's, else a run of its own.
    fn run_id(&self) -> &str {
        self.directives
            .run_id
            .as_deref()
            .unwrap_or(&self.record.request_id)
    }

    /// Reads the `x-weir-*` directive headers.
    fn header_directives(&mut self) -> Result<(), Action> {
        let read = |name: &str| host::header(REQUEST_HEADERS, name);
        let mut d = Directives::default();
        let result = (|| -> Result<(), String> {
            d.user = read("x-weir-user")
                .map(|v| directives::check_id("x-weir-user", &v))
                .transpose()?;
            d.run_id = read(RUN_ID_HEADER)
                .map(|v| directives::check_id(RUN_ID_HEADER, &v))
                .transpose()?;
            d.policy = read("x-weir-policy")
                .map(|v| directives::check_id("x-weir-policy", &v))
                .transpose()?;
            if let Some(tags) = read("x-weir-tags") {
                d.tags = directives::check_tags(&tags.split(|b| *b == b',').collect::<Vec<_>>())?;
            }
            Ok(())
        })();
        self.directives = d;
        result.map_err(|message| self.reject(GatewayError::new(ErrorKind::BadRequest, message)))
    }

    /// Answers a request Weir serves itself (e.g. `/v1/models`).
    fn answer(&mut self, body: &[u8]) -> Action {
        self.record.outcome = Outcome::Completed;
        self.phase = Phase::Answered;
        let run_id = self.run_id().to_string();
        let headers = [
            ("content-type", "application/json"),
            (REQUEST_ID_HEADER, self.record.request_id.as_str()),
            (RUN_ID_HEADER, run_id.as_str()),
        ];
        if let Err(status_code) = host::send_local_response(200, &headers, body, "weir_answered") {
            log::error!("weir: local reply failed with status {status_code}");
        }
        Action::Pause
    }

    /// Finds the caller: the JWT identity `jwt_authn` forwarded when configured and
    /// present, else the API key.
    fn identify(&mut self, gateway: &Gateway) -> Result<Caller, Action> {
        if let Some(config) = &gateway.jwt {
            if let Some(payload) = host::header(REQUEST_HEADERS, &config.payload_header) {
                self.record.identity = Some("jwt");
                return match jwt::identity(config, &payload) {
                    Ok(identity) => {
                        self.record.key_id = Some(identity.id.clone());
                        self.record.team = Some(identity.team.clone());
                        self.record.project = identity.project.clone();
                        Ok(Caller::Jwt(identity))
                    }
                    Err(reason) => Err(self.reject(
                        GatewayError::new(
                            ErrorKind::Unauthorized,
                            format!("The identity token cannot be used: {reason}."),
                        )
                        .with_code("invalid_token"),
                    )),
                };
            }
        }
        self.record.identity = Some("api_key");
        let authorization = host::header_str(REQUEST_HEADERS, "authorization");
        let x_api_key = host::header_str(REQUEST_HEADERS, "x-api-key");
        let index = match presented_key(authorization.as_deref(), x_api_key.as_deref()) {
            PresentedKey::Missing => {
                return Err(self.reject(GatewayError::new(
                    ErrorKind::Unauthorized,
                    "You didn't provide an API key. Send it as `Authorization: Bearer <key>` or `x-api-key: <key>`.",
                )))
            }
            PresentedKey::Malformed => {
                return Err(self.reject(GatewayError::new(
                    ErrorKind::Unauthorized,
                    "The API key header is malformed. Send `Authorization: Bearer <key>` or `x-api-key: <key>`.",
                )))
            }
            PresentedKey::Key(secret) => match gateway.keys.lookup(secret) {
                Some(index) => index,
                None => {
                    return Err(self.reject(GatewayError::new(
                        ErrorKind::Unauthorized,
                        "Incorrect API key provided.",
                    )))
                }
            },
        };
        let Some(entry) = gateway.keys.get(index) else {
            return Err(self.internal("reading the key index", 0));
        };
        self.record.key_id = Some(entry.id.clone());
        self.record.team = Some(entry.team.clone());
        self.record.project = entry.project.clone();
        let now = host::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        if let Err(problem) = entry.check(now) {
            return Err(self.reject(
                GatewayError::new(ErrorKind::Unauthorized, problem.message())
                    .with_code(problem.code()),
            ));
        }
        // A rotated key inside its overlap window: the record says which of the two was used.
        self.record.key_successor = entry.successor.clone();
        Ok(Caller::Key(index))
    }

    fn internal(&mut self, what: &str, status: u32) -> Action {
        log::error!("weir: {what} failed with host status {status}");
        self.reject(GatewayError::new(
            ErrorKind::Internal,
            "Weir could not process the request; it was not forwarded.",
        ))
    }

    fn on_request_headers(&mut self, end_of_stream: bool) -> Result<Action, Action> {
        let path = host::header_str(REQUEST_HEADERS, ":path").unwrap_or_default();
        let method = host::header_str(REQUEST_HEADERS, ":method").unwrap_or_default();
        self.record.path = path
            .split('?')
            .next()
            .unwrap_or("")
            .chars()
            .take(512)
            .collect();
        self.record.method = method.chars().take(16).collect();
        self.api = error_api(
            &path,
            host::header(REQUEST_HEADERS, "anthropic-version").is_some(),
        );

        let Some(gateway) = self.gateway.clone() else {
            return Err(self.reject(GatewayError::new(
                ErrorKind::Internal,
                "Weir has no valid configuration; the request was not forwarded.",
            )));
        };
        // The route reads this header: a client must never choose the cluster itself.
        host::remove_header(REQUEST_HEADERS, &gateway.settings.cluster_header)
            .map_err(|s| self.internal("removing the cluster header", s))?;

        self.record.request_id = match host::header(REQUEST_HEADERS, REQUEST_ID_HEADER) {
            Some(id) => match valid_request_id(&id) {
                Some(id) => {
                    self.client_request_id = true;
                    id
                }
                None => {
                    self.record.request_id = envoy_request_id();
                    return Err(self.reject(GatewayError::new(
                        ErrorKind::BadRequest,
                        "The x-weir-request-id header must be 1 to 128 characters of letters, \
                             digits, '.', '_', ':' and '-'.",
                    )));
                }
            },
            None => envoy_request_id(),
        };
        self.header_directives()?;
        self.new_run = host::header(REQUEST_HEADERS, NEW_RUN_HEADER)
            .is_some_and(|v| v.eq_ignore_ascii_case(b"true"));

        let passthrough =
            gateway.settings.passthrough_provider.is_some() && path.starts_with("/v1/");
        let endpoint = match Endpoint::classify(&path) {
            Some(endpoint) => endpoint,
            None if passthrough => Endpoint::Passthrough,
            None => {
                return Err(self.reject(GatewayError::new(
                    ErrorKind::EndpointNotFound,
                    format!(
                        "Unknown request URL: {} {}. Weir serves POST /v1/chat/completions, /v1/messages, \
                         /v1/embeddings, /v1/completions, /v1/responses and GET /v1/models.",
                        printable(&self.record.method),
                        printable(&self.record.path)
                    ),
                )))
            }
        };
        self.record.endpoint = Some(endpoint.name());
        self.endpoint = Some(endpoint);
        if endpoint.method() != "*" && method != endpoint.method() {
            return Err(self.reject(GatewayError::new(
                ErrorKind::MethodNotAllowed,
                format!("{} only accepts {}.", self.record.path, endpoint.method()),
            )));
        }

        let caller = self.identify(&gateway)?;
        self.caller = Some(caller);
        let may_call =
            scopes_of(&gateway, &self.caller).is_some_and(|s| s.allows_endpoint(endpoint));
        if !may_call {
            return Err(self.reject(GatewayError::new(
                ErrorKind::Forbidden,
                format!(
                    "This key lacks the scope `{}` needed for {} {}.",
                    endpoint.scope(),
                    endpoint.method(),
                    self.record.path
                ),
            )));
        }

        // Neither the client's credential nor its identity token goes upstream.
        for name in CLIENT_CREDENTIAL_HEADERS {
            host::remove_header(REQUEST_HEADERS, name)
                .map_err(|s| self.internal("removing the client credential", s))?;
        }
        if let Some(config) = &gateway.jwt {
            host::remove_header(REQUEST_HEADERS, &config.payload_header)
                .map_err(|s| self.internal("removing the token payload", s))?;
        }
        for name in DIRECTIVE_HEADERS.iter().chain(INTERNAL_HEADERS.iter()) {
            host::remove_header(REQUEST_HEADERS, name)
                .map_err(|s| self.internal("removing a directive header", s))?;
        }
        // `x-envoy-*` headers steer Envoy itself (timeouts, retries): never from a client.
        for (name, _) in host::headers(REQUEST_HEADERS) {
            if name.starts_with("x-envoy-") {
                host::remove_header(REQUEST_HEADERS, &name)
                    .map_err(|s| self.internal("removing an x-envoy header", s))?;
            }
        }

        if endpoint == Endpoint::Passthrough {
            return self.pass_through(&gateway);
        }
        if endpoint == Endpoint::Models {
            // OpenAI's list format, or Anthropic's when the client sent `anthropic-version`.
            let api = self.api;
            let body = scopes_of(&gateway, &self.caller)
                .map(|scopes| models::list_body(&gateway, scopes, api))
                .unwrap_or_default();
            return Err(self.answer(&body));
        }
        if end_of_stream {
            return Err(self.reject(GatewayError::new(
                ErrorKind::BadRequest,
                "The request has no body; a JSON object is required.",
            )));
        }
        if let Some(content_type) = host::header_str(REQUEST_HEADERS, "content-type") {
            if !is_json_content_type(&content_type) {
                return Err(self.reject(GatewayError::new(
                    ErrorKind::UnsupportedMediaType,
                    "The request body must be JSON: send `Content-Type: application/json`.",
                )));
            }
        }
        // Some clients put keys in the query string: never forward them.
        if let Some(clean) = strip_credential_params(&path) {
            host::set_header(REQUEST_HEADERS, ":path", &clean)
                .map_err(|s| self.internal("removing credentials from the query", s))?;
        }
        // The body will be rewritten: upstream gets it chunked rather than with a stale length.
        host::remove_header(REQUEST_HEADERS, "content-length")
            .map_err(|s| self.internal("removing content-length", s))?;
        self.phase = Phase::AwaitingBody;
        Ok(Action::Pause)
    }

    fn on_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Result<Action, Action> {
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
                if host::header(REQUEST_HEADERS, REQUEST_ID_HEADER).is_none() {
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
        host::set_buffer(REQUEST_BODY, 0, body_size, &new_body)
            .map_err(|s| self.internal("replacing the request body", s))?;

        self.set_route_headers(gateway.as_ref(), &plan)?;
        if let Some((name, value)) = &provider.credential_header {
            host::set_header(REQUEST_HEADERS, name, &value.0)
                .map_err(|s| self.internal("setting the provider credential", s))?;
        }
        if provider.api == Api::Anthropic
            && host::header(REQUEST_HEADERS, "anthropic-version").is_none()
        {
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
        self.record.usage_requested_by_weir = usage_added;
        self.phase = Phase::Forwarded;
        Ok(Action::Continue)
    }

    /// The cluster header, and for a failover tier the attempt order and retry count.
    fn set_route_headers(&mut self, gateway: &Gateway, plan: &Plan) -> Result<(), Action> {
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

    /// Sends a request to a target of the other API: the body translated, the path,
    /// version and credential of the provider.
    fn forward_translated(
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
        host::set_buffer(REQUEST_BODY, 0, body_size, &translated)
            .map_err(|s| self.internal("replacing the request body", s))?;
        let Some(provider) = gateway.providers.get(plan.target.provider) else {
            return Err(self.internal("finding the provider", 0));
        };
        host::set_header(REQUEST_HEADERS, ":path", path)
            .map_err(|s| self.internal("setting the path", s))?;
        self.set_route_headers(gateway, plan)?;
        for name in ["authorization", "x-api-key", "api-key"] {
            host::remove_header(REQUEST_HEADERS, name)
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
            Api::Openai => host::remove_header(REQUEST_HEADERS, "anthropic-version"),
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

    /// Idempotency, run limits, rate limits and budgets, in that order. Reservations are
    /// settled in the log phase.
    fn apply_limits(
        &mut self,
        gateway: &Gateway,
        limits: &LimitsConfig,
        request: &LlmRequest<'_>,
        plan: &Plan,
    ) -> Result<(), Action> {
        let store = SharedData;
        let now = host::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let key_id = self.record.key_id.clone().unwrap_or_default();
        let unavailable = |this: &mut Self| -> Result<(), Action> {
            match limits.fail_mode {
                FailMode::Closed => Err(this.reject(
                    GatewayError::new(
                        ErrorKind::Unavailable,
                        "Weir cannot check the limits right now; the request was not forwarded.",
                    )
                    .with_code("limits_unavailable"),
                )),
                FailMode::Open => {
                    this.record.limits_unavailable = true;
                    Ok(())
                }
            }
        };

        if self.client_request_id && limits.idempotency_window_seconds > 0 {
            match first_use(
                &store,
                &key_id,
                &self.record.request_id,
                now,
                limits.idempotency_window_seconds,
            ) {
                Ok(Ok(())) => {}
                Ok(Err(first)) => {
                    let at = humantime::format_rfc3339_seconds(
                        SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(first),
                    );
                    return Err(self.reject(
                        GatewayError::new(
                            ErrorKind::Conflict,
                            format!(
                                "The request id `{}` was already used by this key at {at}; this repeat was not forwarded.",
                                self.record.request_id
                            ),
                        )
                        .with_code("duplicate_request"),
                    ));
                }
                Err(_) => unavailable(self)?,
            }
        }

        if let (Some(run_limits), Some(run_id)) = (&limits.per_run, self.directives.run_id.clone())
        {
            match run_call(&store, &key_id, &run_id, run_limits, self.new_run) {
                Ok(Ok(_)) => self.run_counted = true,
                Ok(Err(state)) => {
                    return Err(self.reject(
                        GatewayError::new(
                            ErrorKind::Conflict,
                            format!(
                                "The run `{run_id}` is closed: it reached its limits ({} calls, {} tokens). \
                                 Start a new run with `x-weir-new-run: true` or another run id.",
                                state.calls, state.tokens
                            ),
                        )
                        .with_code("run_closed"),
                    ))
                }
                Err(_) => unavailable(self)?,
            }
        }

        let team = self.record.team.clone().unwrap_or_default();
        let subjects = limit_subjects(limits, &key_id, &team, self.directives.user.as_deref());
        if subjects.is_empty() {
            return Ok(());
        }
        // The worst case: the prompt (about 3 characters a token, plus per-message overhead)
        // and every output token the request may ask for.
        let essentials = request.essentials(false);
        let prompt = (essentials.input_chars / 3 + 4 * essentials.message_count + 16) as u64;
        let output = plan
            .max_tokens
            .or(essentials.max_tokens)
            .unwrap_or(limits.default_max_tokens);
        let usage = Usage {
            prompt_tokens: prompt,
            completion_tokens: output,
            total_tokens: prompt + output,
            ..Default::default()
        };
        let spend_micros = gateway
            .price(None, Some(&plan.target.model))
            .map(|(_, price)| price.cost(&usage).picos.div_ceil(1_000_000) as u64)
            .unwrap_or(0);
        let estimate = Estimate {
            tokens: prompt + output,
            spend_micros,
        };
        match admit(&store, &subjects, now, estimate) {
            Ok(admission) => {
                self.headroom = (admission.requests, admission.tokens);
                self.admission = Some(admission);
                Ok(())
            }
            Err(Refusal::RateLimited {
                what,
                retry_after,
                requests,
                tokens,
            }) => {
                self.headroom = (requests, tokens);
                let mut error = GatewayError::new(
                    ErrorKind::RateLimited,
                    format!("Rate limit reached: {what}. Try again in {retry_after} s."),
                );
                error.retry_after = Some(retry_after);
                Err(self.reject(error))
            }
            Err(Refusal::Budget { what }) => Err(self.reject(
                GatewayError::new(
                    ErrorKind::PaymentRequired,
                    format!("This request would exceed {what}."),
                )
                .with_code("budget_exhausted"),
            )),
            Err(Refusal::Unavailable) => unavailable(self),
        }
    }

    /// `x-ratelimit-*` headers (OpenAI's names) for the tightest request and token limits.
    fn ratelimit_headers(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (kind, room) in [("requests", self.headroom.0), ("tokens", self.headroom.1)] {
            if let Some(r) = room {
                out.push((format!("x-ratelimit-limit-{kind}"), r.limit.to_string()));
                out.push((
                    format!("x-ratelimit-remaining-{kind}"),
                    r.remaining.to_string(),
                ));
                out.push((
                    format!("x-ratelimit-reset-{kind}"),
                    format!("{}s", r.reset_seconds),
                ));
            }
        }
        out
    }

    /// Other `/v1/` paths, when configured: authenticated and audited, sent as they are to
    /// the pass-through provider with its credential.
    fn pass_through(&mut self, gateway: &Gateway) -> Result<Action, Action> {
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

    /// Scopes, policy and routing: everything that decides where a request goes, shared
    /// by forwarding and the advice endpoint.
    fn decide(
        &mut self,
        gateway: &Gateway,
        request: &LlmRequest<'_>,
    ) -> Result<Plan, GatewayError> {
        let may_use =
            scopes_of(gateway, &self.caller).is_some_and(|s| s.allows_model(&request.model));
        if !may_use {
            let name = printable(&request.model);
            return Err(GatewayError::new(
                ErrorKind::Forbidden,
                format!("This key may not use the model `{name}`: it lacks a scope such as `model:{name}`."),
            )
            .with_param(Some("model")));
        }

        let mut model = request.model.clone();
        let mut max_tokens = None;
        if let Some(name) = self.policy_name(gateway)? {
            let decision = self.evaluate_policy(gateway, &name, request)?;
            if let Some(denial) = decision.denial() {
                let kind = match denial.status {
                    402 => ErrorKind::PaymentRequired,
                    429 => ErrorKind::RateLimited,
                    _ => ErrorKind::Forbidden,
                };
                let mut error = GatewayError::new(kind, denial.reason).with_code("policy_denied");
                if kind == ErrorKind::RateLimited {
                    error.retry_after = Some(denial.retry_after.unwrap_or(60));
                }
                return Err(error);
            }
            for tag in decision.tags {
                if !self.record.tags.contains(&tag) {
                    self.record.tags.push(tag);
                }
            }
            if let Some(tier) = decision.tier {
                if !gateway.tiers.contains_key(&tier) {
                    log::error!("weir: policy {name} forced the unknown tier {tier:?}");
                    return Err(GatewayError::new(
                        ErrorKind::Internal,
                        "The policy chose a tier that does not exist; the request was not forwarded.",
                    )
                    .with_code("policy_error"));
                }
                self.record.policy_tier = Some(tier.clone());
                model = tier;
            }
            max_tokens = decision.max_tokens;
            self.record.max_tokens_cap = max_tokens;
        }

        let empty = Scopes::default();
        let scopes = scopes_of(gateway, &self.caller).unwrap_or(&empty);
        let route = route(gateway, self.api, &model, scopes, &self.record.request_id)?;
        Ok(Plan {
            tier: route.tier.map(str::to_string),
            failover: route.failover,
            target: route.target,
            provider: route.provider.name.clone(),
            max_tokens,
        })
    }

    /// The policy for this request: the caller's directive, else the key's default, else
    /// the global default. `None` when no policy applies.
    fn policy_name(&mut self, gateway: &Gateway) -> Result<Option<String>, GatewayError> {
        let key_default = match &self.caller {
            Some(Caller::Key(i)) => gateway.keys.get(*i).and_then(|k| k.default_policy.clone()),
            _ => None,
        };
        let chosen = self.directives.policy.clone();
        let name = chosen.clone().or(key_default).or_else(|| {
            gateway
                .policies
                .as_ref()
                .and_then(|p| p.borrow().default.clone())
        });
        let Some(name) = name else { return Ok(None) };
        let known = gateway
            .policies
            .as_ref()
            .is_some_and(|p| p.borrow().contains(&name));
        if !known {
            let names = gateway
                .policies
                .as_ref()
                .map(|p| p.borrow().names().join(", "))
                .unwrap_or_default();
            let message = if names.is_empty() {
                format!(
                    "Unknown policy `{}`: no policies are configured.",
                    printable(&name)
                )
            } else {
                format!(
                    "Unknown policy `{}`. Known policies: {names}.",
                    printable(&name)
                )
            };
            return Err(match chosen {
                Some(_) => {
                    GatewayError::new(ErrorKind::BadRequest, message).with_code("unknown_policy")
                }
                // A key's default that does not exist is the operator's error: fail closed.
                None => GatewayError::new(ErrorKind::Internal, message).with_code("policy_error"),
            });
        }
        self.record.policy = Some(name.clone());
        Ok(Some(name))
    }

    fn evaluate_policy(
        &mut self,
        gateway: &Gateway,
        name: &str,
        request: &LlmRequest<'_>,
    ) -> Result<Decision, GatewayError> {
        let Some(policies) = &gateway.policies else {
            return Err(GatewayError::new(
                ErrorKind::Internal,
                "No policies are configured.",
            ));
        };
        let needs_messages = policies.borrow().needs_messages(name);
        let essentials = request.essentials(needs_messages);
        let caller = match &self.caller {
            Some(Caller::Key(i)) => match gateway.keys.get(*i) {
                Some(k) => CallerInput {
                    kind: "api_key",
                    key_id: Some(k.id.clone()),
                    team: Some(k.team.clone()),
                    project: k.project.clone(),
                    scopes: k.scopes.as_strings().to_vec(),
                    metadata: k.metadata.clone(),
                    claims: None,
                },
                None => CallerInput::default(),
            },
            Some(Caller::Jwt(j)) => CallerInput {
                kind: "jwt",
                key_id: Some(j.id.clone()),
                team: Some(j.team.clone()),
                project: j.project.clone(),
                scopes: j.scopes.as_strings().to_vec(),
                metadata: Default::default(),
                claims: Some(j.claims.clone()),
            },
            None => CallerInput::default(),
        };
        let headers: Vec<(String, String)> = host::headers(REQUEST_HEADERS)
            .into_iter()
            .filter(|(k, _)| {
                !k.starts_with(':')
                    && !SECRET_HEADERS.contains(&k.as_str())
                    && !k.starts_with("x-weir-")
            })
            .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
            .collect();
        let locale = host::header_str(REQUEST_HEADERS, "accept-language")
            .and_then(|l| l.split([',', ';']).next().map(|l| l.trim().to_string()));
        let now = host::now();
        let now_unix = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        // Policies see the caller's usage against its limits (read, not reserved).
        let usage_now = gateway.limits.as_ref().map(|limits| {
            let key_id = self.record.key_id.clone().unwrap_or_default();
            let team = self.record.team.clone().unwrap_or_default();
            let subjects = limit_subjects(limits, &key_id, &team, self.directives.user.as_deref());
            usage_snapshot(&SharedData, &subjects, now_unix)
        });
        let run_id = self.run_id().to_string();
        let input = build_input(&InputParts {
            request_id: &self.record.request_id,
            method: &self.record.method,
            path: &self.record.path,
            endpoint: self.record.endpoint.unwrap_or(""),
            api: self.api.as_str(),
            headers,
            caller,
            user: self.directives.user.as_deref(),
            run_id: &run_id,
            tags: &self.record.tags,
            locale: locale.as_deref(),
            policy: name,
            model: &request.model,
            is_tier: gateway.tiers.contains_key(&request.model),
            params: ParamsInput::new(request.stream, &essentials),
            messages: essentials.messages,
            now_unix,
            usage: usage_now,
        });
        let result = policies.borrow_mut().evaluate(name, &input);
        let micros = host::now()
            .duration_since(now)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0);
        self.record.policy_us = Some(micros);
        metrics::record(&metric("weir_policy_eval_us", &[("policy", name)]), micros);
        result.map_err(|e| {
            log::error!("weir: policy {name} failed: {e}");
            GatewayError::new(
                ErrorKind::Internal,
                "The policy could not be evaluated; the request was not forwarded.",
            )
            .with_code("policy_error")
        })
    }

    /// The answer of `POST /v1/weir/advice`: what Weir would do, without doing it.
    fn advise(&mut self, plan: Result<&Plan, GatewayError>) -> Action {
        let body = match plan {
            Ok(plan) => {
                self.advised = Some("allow");
                serde_json::json!({
                    "decision": "allow",
                    "request_id": self.record.request_id,
                    "policy": self.record.policy,
                    "tier": plan.tier,
                    "model": plan.target.model,
                    "provider": plan.provider,
                    "cluster": plan.target.cluster,
                    "max_tokens": plan.max_tokens,
                    "tags": self.record.tags,
                })
            }
            Err(e) => {
                self.advised = Some(if e.kind == ErrorKind::Internal {
                    "error"
                } else {
                    "deny"
                });
                self.record.reason = Some(e.message.clone());
                self.record.error = Some(e.code());
                serde_json::json!({
                    "decision": self.advised,
                    "request_id": self.record.request_id,
                    "policy": self.record.policy,
                    "status": e.status(),
                    "code": e.code(),
                    "reason": e.message,
                    "retry_after": e.retry_after,
                })
            }
        };
        self.answer(&serde_json::to_vec(&body).unwrap_or_default())
    }

    /// Replaces the limit reservations with the real usage and adds it to the run.
    fn settle_limits(&mut self) {
        let tokens = self.record.usage.map(|u| u.total_tokens).unwrap_or(0);
        let spend = self
            .record
            .cost
            .as_ref()
            .map(|c| c.picos.div_ceil(1_000_000) as u64)
            .unwrap_or(0);
        let store = SharedData;
        if let Some(admission) = self.admission.take() {
            if settle(&store, &admission, tokens, spend).is_err() {
                log::warn!("weir: could not settle the limit reservations");
            }
        }
        if self.run_counted {
            let limits = self
                .gateway
                .as_ref()
                .and_then(|g| g.limits.as_ref())
                .and_then(|l| l.per_run.clone());
            if let (Some(limits), Some(key), Some(run)) = (
                limits,
                self.record.key_id.clone(),
                self.directives.run_id.clone(),
            ) {
                if run_usage(&store, &key, &run, &limits, tokens, spend).is_err() {
                    log::warn!("weir: could not add the usage to run {run}");
                }
            }
        }
    }

    /// Takes usage from the meter and prices it (once).
    fn settle(&mut self) {
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
            self.record.cost_status = Some("no_usage");
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

    fn finish_record(&mut self) {
        let now = host::now();
        if self.phase == Phase::Start {
            // Envoy refused the request before Weir saw it (e.g. an HTTP codec error) but
            // still runs the log phase: record what Envoy knows.
            self.started = host::property_u64(&["request", "time"])
                .map(|ns| SystemTime::UNIX_EPOCH + std::time::Duration::from_nanos(ns))
                .unwrap_or(now);
            self.record.time = humantime::format_rfc3339_millis(self.started).to_string();
            self.record.request_id = envoy_request_id();
            let text = |path: &[&str]| {
                host::property(path)
                    .and_then(|v| String::from_utf8(v).ok())
                    .unwrap_or_default()
            };
            self.record.method = text(&["request", "method"]).chars().take(16).collect();
            self.record.path = text(&["request", "url_path"]).chars().take(512).collect();
            self.record.error = Some("rejected_by_envoy");
        }
        self.record.status = host::property_u64(&["response", "code"]).unwrap_or(0) as u32;
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
        self.record.duration_ms = millis(now.duration_since(self.started).unwrap_or_default());
    }
}

impl WeirHttp {
    /// A translated request's response, back in the client's API: streams event by event,
    /// buffered bodies (answers and errors) whole.
    fn translate_response(&mut self, body_size: usize, end_of_stream: bool) -> Action {
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
    fn add_metadata(&mut self, body_size: usize, end_of_stream: bool) -> Action {
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
    fn record_metrics(&self) {
        let r = &self.record;
        let endpoint = r.endpoint.unwrap_or("unknown");
        let tier = r.tier.as_deref().unwrap_or("none");
        let status = r.status.to_string();
        metrics::count(
            &metric(
                "weir_requests_total",
                &[
                    ("endpoint", endpoint),
                    ("tier", tier),
                    ("decision", r.decision),
                    ("status", &status),
                ],
            ),
            1,
        );
        // The configured model, never the provider's string: labels must stay bounded.
        let model = self.target_model.as_deref().unwrap_or("none");
        if let Some(u) = &r.usage {
            for (direction, n) in [
                ("prompt", u.prompt_tokens),
                ("completion", u.completion_tokens),
                ("cached", u.cached_tokens),
                ("cache_write", u.cache_write_tokens),
                ("reasoning", u.reasoning_tokens),
            ] {
                metrics::count(
                    &metric(
                        "weir_tokens_total",
                        &[("direction", direction), ("model", model)],
                    ),
                    n,
                );
            }
        }
        let team = r.team.as_deref().unwrap_or("none");
        if let Some(cost) = &r.cost {
            metrics::count(
                &metric(
                    "weir_cost_micros_total",
                    &[("model", model), ("team", team)],
                ),
                cost.micros,
            );
        }
        if r.cost_status == Some("unpriced") {
            metrics::count(
                &metric("weir_unpriced_requests_total", &[("model", model)]),
                1,
            );
        }
        if let Some(ttfb) = r.ttfb_ms {
            metrics::record(
                &metric("weir_ttfb_ms", &[("endpoint", endpoint)]),
                ttfb as u64,
            );
        }
    }
}

impl Context for WeirHttp {}

impl HttpContext for WeirHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        self.started = host::now();
        self.record.time = humantime::format_rfc3339_millis(self.started).to_string();
        self.on_request_headers(end_of_stream)
            .unwrap_or_else(|action| action)
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.phase != Phase::AwaitingBody {
            return Action::Continue;
        }
        self.on_request_body(body_size, end_of_stream)
            .unwrap_or_else(|action| action)
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        if self.phase != Phase::Forwarded {
            return Action::Continue;
        }
        self.record.ttfb_ms = Some(millis(
            host::now().duration_since(self.started).unwrap_or_default(),
        ));
        // On a failover tier, the per-attempt filter says which target answered.
        if let Some(answer) = host::header_str(RESPONSE_HEADERS, super::upstream::TARGET_HEADER) {
            let _ = host::remove_header(RESPONSE_HEADERS, super::upstream::TARGET_HEADER);
            if let Some(gateway) = self.gateway.clone() {
                let served = failover_target(&answer, 1)
                    .and_then(|(tier, i)| gateway.tiers.get(tier)?.targets.get(i).cloned());
                if let Some(target) = served {
                    if let Some(provider) = gateway.providers.get(target.provider) {
                        self.record.provider = Some(provider.name.clone());
                        // The answer is in that target's API: translate it back if needed.
                        self.provider_api = provider.api;
                        self.translating =
                            (provider.api != self.api).then_some(self.client_include_usage);
                    }
                    self.record.served_model = Some(target.model.clone());
                    self.record.cluster = Some(target.cluster.clone());
                    self.target_model = Some(target.model);
                }
            }
        }
        let content_type = host::header(RESPONSE_HEADERS, "content-type").unwrap_or_default();
        let streaming = content_type.starts_with(b"text/event-stream");
        // An OpenAI client gets exactly the stream it asked for: without the usage chunk
        // Weir (or a translated attempt) asked for, unless it asked itself.
        let strip = self.api == Api::Openai
            && self.provider_api == Api::Openai
            && !self.client_include_usage;
        let meter = ResponseMeter::new(self.provider_api, streaming, MAX_METERED_JSON, strip);
        if let Some(include_usage) = self.translating {
            let created = host::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            if streaming {
                self.stream_translator = Some(match self.api {
                    Api::Openai => StreamTranslation::ToOpenAi(AnthropicToOpenAiStream::new(
                        created,
                        include_usage,
                    )),
                    Api::Anthropic => {
                        StreamTranslation::ToAnthropic(OpenAiToAnthropicStream::new())
                    }
                });
            }
            if let Err(s) = host::remove_header(RESPONSE_HEADERS, "content-length") {
                log::warn!("weir: could not remove the response content-length (host status {s})");
            }
        }
        let success =
            host::header(RESPONSE_HEADERS, ":status").is_some_and(|s| s.starts_with(b"2"));
        self.inject_metadata = self.translating.is_none()
            && !streaming
            && !end_of_stream
            && success
            && content_type.starts_with(b"application/json")
            && self
                .gateway
                .as_ref()
                .is_some_and(|g| g.settings.response_metadata);
        if meter.rewrites() || self.inject_metadata {
            // The body changes length.
            if let Err(s) = host::remove_header(RESPONSE_HEADERS, "content-length") {
                log::warn!("weir: could not remove the response content-length (host status {s})");
            }
        }
        self.meter = Some(meter);
        for (name, value) in self.ratelimit_headers() {
            let _ = host::set_header(RESPONSE_HEADERS, &name, &value);
        }
        // Envoy reports retries in this header (virtual host `include_attempt_count_in_response`).
        if let Some(n) =
            host::header_str(RESPONSE_HEADERS, "x-envoy-attempt-count").and_then(|n| n.parse().ok())
        {
            self.record.attempts = n;
        }
        let run_id = self.run_id().to_string();
        // Which tier and model served, for clients and for tracing.
        let tier = self.record.tier.clone().unwrap_or_default();
        let model = self.target_model.clone().unwrap_or_default();
        for (name, value) in [
            (REQUEST_ID_HEADER, self.record.request_id.as_str()),
            (RUN_ID_HEADER, run_id.as_str()),
            ("x-weir-tier", tier.as_str()),
            ("x-weir-model", model.as_str()),
        ] {
            if value.is_empty() {
                continue;
            }
            if let Err(s) = host::set_header(RESPONSE_HEADERS, name, value) {
                log::warn!("weir: could not set the response header {name} (host status {s})");
            }
        }
        if end_of_stream {
            self.response_complete = true;
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.inject_metadata {
            return self.add_metadata(body_size, end_of_stream);
        }
        if self.translating.is_some() {
            return self.translate_response(body_size, end_of_stream);
        }
        let Some(meter) = &mut self.meter else {
            return Action::Continue;
        };
        let chunk = if body_size > 0 {
            host::buffer(RESPONSE_BODY, 0, body_size).unwrap_or_default()
        } else {
            Vec::new()
        };
        if let Some(replacement) = meter.feed(&chunk, end_of_stream) {
            if replacement != chunk {
                if let Err(s) = host::set_buffer(RESPONSE_BODY, 0, body_size, &replacement) {
                    log::warn!("weir: could not rewrite the response stream (host status {s})");
                }
            }
        }
        if end_of_stream {
            meter.finish();
            self.response_complete = true;
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        self.finish_record();
        self.record_metrics();
        let property = self
            .gateway
            .as_ref()
            .map(|g| g.settings.audit_property.clone())
            .unwrap_or_else(|| "weir_audit".to_string());
        if let Err(s) = host::set_property(&[property.as_str()], &self.record.to_json()) {
            log::error!("weir: writing the audit record failed with host status {s}");
        }
    }
}

/// Envoy's request id (`x-request-id`, generated when the client sent none).
fn envoy_request_id() -> String {
    host::property(&["request", "id"])
        .and_then(|v| String::from_utf8(v).ok())
        .unwrap_or_default()
}

/// A client-supplied request id, if it is safe to log and echo.
fn valid_request_id(raw: &[u8]) -> Option<String> {
    let ok = !raw.is_empty()
        && raw.len() <= 128
        && raw
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
    ok.then(|| String::from_utf8_lossy(raw).into_owned())
}
