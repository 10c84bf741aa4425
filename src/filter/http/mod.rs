//! One request through Weir: authenticate in the headers phase, route and rewrite in the
//! body phase, meter the response as it streams by, write one audit record in the log phase.

mod forward;
mod limits;
mod policy;
mod response;

use std::rc::Rc;
use std::time::SystemTime;

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;

use super::headers::HeaderSnapshot;
use super::host::{self, REQUEST_BODY, REQUEST_HEADERS, RESPONSE_BODY, RESPONSE_HEADERS};
use super::metrics;
use super::store::SharedData;
use crate::audit::{
    bounded_request_id, clip, is_request_id_byte, millis, AuditRecord, CostRecord, Outcome,
};
use crate::body::{
    json_string, parse_llm_request, remove_member, splice, Edit, Essentials, LlmRequest,
};
use crate::config::Target;
use crate::config::{Api, Gateway};
use crate::directives::{self, Directives};
use crate::endpoint::{
    error_api, is_canonical_path, is_json_content_type, strip_credential_params, Endpoint,
};
use crate::errors::{ErrorKind, GatewayError};
use crate::jwt::{self, JwtIdentity};
use crate::keys::{presented_key, PresentedKey};
use crate::limits::{
    admit, first_use, run_call, run_usage, settle, subjects as limit_subjects, usage_snapshot,
    Admission, Estimate, FailMode, Headroom, LimitsConfig, Refusal, Remembered, RequestIdAt, RunAt,
};
use crate::models;
use crate::policy::{CallerInput, Decision, InputParts, ParamsInput};
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
/// A refusal in the headers phase waits for a request body up to this size (declared by
/// `content-length`) before it is sent: answering an HTTP/1 request before its body has
/// arrived makes Envoy close the connection, and the client pay for a new one (TCP, TLS).
/// Larger or unsized bodies are refused at once: Weir never waits for a large body from a
/// caller it refuses.
const HOLD_REPLY_FOR_BODY: u64 = 64 * 1024;

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
        Caller::Key(index) => gateway.keys.get(*index).map(|k| k.scopes.as_ref()),
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
    /// The provider's answer is content-encoded (it ignored `accept-encoding: identity`):
    /// its usage cannot be read, nor can it be translated.
    encoded_answer: bool,
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
    /// Recording this request's id evicted a live one (the idempotency table is too small).
    idempotency_evicted: bool,
    /// The response is translated back to the client's API: `Some(client's include_usage)`.
    translating: Option<bool>,
    /// The client asked for the usage chunk itself (`stream_options.include_usage`).
    client_include_usage: bool,
    /// The API of the provider serving the request (responses are metered in it).
    provider_api: Api,
    stream_translator: Option<StreamTranslation>,
    /// The request headers, read once in the headers phase and kept in step with Weir's
    /// edits until the request is forwarded.
    headers: HeaderSnapshot,
    /// Replies are held (not sent) while this is set: see `HOLD_REPLY_FOR_BODY`.
    hold_replies: bool,
    /// A reply held until the end of the request's body.
    held_reply: Option<host::LocalReply>,
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
            encoded_answer: false,
            settled: false,
            advised: None,
            client_request_id: false,
            new_run: false,
            admission: None,
            headroom: (None, None),
            run_counted: false,
            idempotency_evicted: false,
            translating: None,
            client_include_usage: false,
            provider_api: Api::Openai,
            stream_translator: None,
            headers: HeaderSnapshot::default(),
            hold_replies: false,
            held_reply: None,
        }
    }

    /// Sends `reply`, or holds it until the request's body has arrived.
    fn reply(&mut self, reply: host::LocalReply) {
        if self.hold_replies {
            self.held_reply = Some(reply);
        } else {
            send_reply(&reply);
        }
    }

    /// Sends the held reply (the request's body has ended).
    fn send_held_reply(&mut self) {
        if let Some(reply) = self.held_reply.take() {
            send_reply(&reply);
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
        let reply = host::LocalReply::new(status, &headers, body, &details);
        self.reply(reply);
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
        let headers = &self.headers;
        let read = |name: &str| headers.get(name);
        let mut d = Directives::default();
        let result = (|| -> Result<(), String> {
            d.user = read("x-weir-user")
                .map(|v| directives::check_id("x-weir-user", v))
                .transpose()?;
            d.run_id = read(RUN_ID_HEADER)
                .map(|v| directives::check_id(RUN_ID_HEADER, v))
                .transpose()?;
            d.policy = read("x-weir-policy")
                .map(|v| directives::check_id("x-weir-policy", v))
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
        let reply = host::LocalReply::new(200, &headers, body.to_vec(), "weir_answered");
        self.reply(reply);
        Action::Pause
    }

    /// Finds the caller: the JWT identity `jwt_authn` forwarded when configured and
    /// present, else the API key.
    fn identify(&mut self, gateway: &Gateway) -> Result<Caller, Action> {
        if let Some(config) = &gateway.jwt {
            if let Some(payload) = self.headers.get(&config.payload_header) {
                self.record.identity = Some("jwt");
                return match jwt::identity(config, payload) {
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
        let authorization = self.headers.get_str("authorization");
        let x_api_key = self.headers.get_str("x-api-key");
        let index = match presented_key(authorization, x_api_key) {
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
        // The time the request arrived (no second clock read).
        let now = self
            .started
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
        self.headers = match HeaderSnapshot::read(REQUEST_HEADERS) {
            Ok(headers) => headers,
            Err(s) => {
                self.record.request_id = envoy_request_id();
                return Err(self.internal("reading the request headers", s));
            }
        };
        // A small body is still to come: a refusal from here on waits for it.
        self.hold_replies = !end_of_stream
            && self
                .headers
                .get_str("content-length")
                .and_then(|l| l.trim().parse::<u64>().ok())
                .is_some_and(|l| l <= HOLD_REPLY_FOR_BODY);
        let path = self
            .headers
            .get_str(":path")
            .unwrap_or_default()
            .to_string();
        let method = self
            .headers
            .get_str(":method")
            .unwrap_or_default()
            .to_string();
        self.record.path = clip(path.split('?').next().unwrap_or(""), 512).to_string();
        self.record.method = clip(&method, 16).to_string();
        self.api = error_api(&path, self.headers.contains("anthropic-version"));

        let Some(gateway) = self.gateway.clone() else {
            return Err(self.reject(GatewayError::new(
                ErrorKind::Internal,
                "Weir has no valid configuration; the request was not forwarded.",
            )));
        };
        // The route reads this header: a client must never choose the cluster itself.
        self.headers
            .remove(&gateway.settings.cluster_header)
            .map_err(|s| self.internal("removing the cluster header", s))?;

        self.record.request_id = match self.headers.get(REQUEST_ID_HEADER) {
            Some(id) => match valid_request_id(id) {
                Some(id) => {
                    self.client_request_id = true;
                    id
                }
                None => {
                    self.record.request_id = self.envoy_request_id();
                    return Err(self.reject(GatewayError::new(
                        ErrorKind::BadRequest,
                        "The x-weir-request-id header must be 1 to 128 characters of letters, \
                             digits, '.', '_', ':' and '-'.",
                    )));
                }
            },
            None => self.envoy_request_id(),
        };
        self.header_directives()?;
        self.new_run = self
            .headers
            .get(NEW_RUN_HEADER)
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
                         /v1/messages/count_tokens, /v1/embeddings, /v1/completions, /v1/responses \
                         and GET /v1/models[/ID].",
                        printable(&self.record.method),
                        printable(&self.record.path)
                    ),
                )))
            }
        };
        self.record.endpoint = Some(endpoint.name());
        self.endpoint = Some(endpoint);
        if endpoint == Endpoint::Passthrough && !is_canonical_path(&path) {
            // Another spelling of a path Weir serves must not pass through unmetered.
            return Err(self.reject(
                GatewayError::new(
                    ErrorKind::BadRequest,
                    "The request path must not have empty, '.' or '..' segments, backslashes \
                     or percent-escapes.",
                )
                .with_code("invalid_path"),
            ));
        }
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
            self.headers
                .remove(name)
                .map_err(|s| self.internal("removing the client credential", s))?;
        }
        if let Some(config) = &gateway.jwt {
            self.headers
                .remove(&config.payload_header)
                .map_err(|s| self.internal("removing the token payload", s))?;
        }
        for name in DIRECTIVE_HEADERS.iter().chain(INTERNAL_HEADERS.iter()) {
            self.headers
                .remove(name)
                .map_err(|s| self.internal("removing a directive header", s))?;
        }
        // `x-envoy-*` headers steer Envoy itself (timeouts, retries): never from a client.
        for name in self.headers.names_with_prefix("x-envoy-") {
            self.headers
                .remove(&name)
                .map_err(|s| self.internal("removing an x-envoy header", s))?;
        }

        if endpoint == Endpoint::Passthrough {
            return self.pass_through(&gateway);
        }
        if endpoint == Endpoint::Models {
            // OpenAI's shapes, or Anthropic's when the client sent `anthropic-version`.
            let api = self.api;
            let Some(scopes) = scopes_of(&gateway, &self.caller) else {
                return Err(self.internal("reading the caller's scopes", 0));
            };
            let body = match crate::endpoint::model_id(&path) {
                None => models::list_body(&gateway, scopes, api),
                Some(id) => match models::model_body(&gateway, scopes, api, id) {
                    Some(body) => body,
                    None => {
                        let message = format!(
                            "The model `{}` does not exist or this key may not use it.",
                            printable(id)
                        );
                        return Err(self.reject(
                            GatewayError::new(ErrorKind::ModelNotFound, message)
                                .with_param(Some("model")),
                        ));
                    }
                },
            };
            return Err(self.answer(&body));
        }
        if end_of_stream {
            return Err(self.reject(GatewayError::new(
                ErrorKind::BadRequest,
                "The request has no body; a JSON object is required.",
            )));
        }
        if let Some(content_type) = self.headers.get("content-type") {
            let content_type = String::from_utf8_lossy(content_type);
            if !is_json_content_type(&content_type) {
                return Err(self.reject(GatewayError::new(
                    ErrorKind::UnsupportedMediaType,
                    "The request body must be JSON: send `Content-Type: application/json`.",
                )));
            }
        }
        // Some clients put keys in the query string: never forward them.
        if let Some(clean) = strip_credential_params(&path) {
            self.headers
                .set(":path", &clean)
                .map_err(|s| self.internal("removing credentials from the query", s))?;
        }
        // The body will be rewritten: its `content-length` is set or removed with it
        // (`replace_body`); until then the headers wait here, so no stale length goes out.
        self.phase = Phase::AwaitingBody;
        Ok(Action::Pause)
    }

    /// Envoy's request id: the `x-request-id` header it sets before any filter runs,
    /// already in the snapshot (the property is the same value, for one more host call).
    fn envoy_request_id(&self) -> String {
        match self.headers.get_str("x-request-id") {
            Some(id) => bounded_request_id(id),
            None => envoy_request_id(),
        }
    }
}

impl Context for WeirHttp {}

impl HttpContext for WeirHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        // The record's `time` text is written in the log phase, after the answer has gone.
        self.started = host::now();
        let action = self
            .on_request_headers(end_of_stream)
            .unwrap_or_else(|action| action);
        self.hold_replies = false;
        action
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.held_reply.is_some() {
            // A refusal waiting for the end of a small body (`HOLD_REPLY_FOR_BODY`); the
            // body is buffered by Envoy meanwhile, never forwarded.
            if end_of_stream {
                self.send_held_reply();
            }
            return Action::Pause;
        }
        if self.phase != Phase::AwaitingBody {
            return Action::Continue;
        }
        self.on_request_body(body_size, end_of_stream)
            .unwrap_or_else(|action| action)
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        // Trailers end a request too (HTTP/2).
        if self.held_reply.is_some() {
            self.send_held_reply();
            return Action::Pause;
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        if self.phase != Phase::Forwarded {
            return Action::Continue;
        }
        self.record.ttfb_ms = Some(millis(
            host::now().duration_since(self.started).unwrap_or_default(),
        ));
        // One host call for the headers read below, instead of one per header.
        let mut headers = HeaderSnapshot::read(RESPONSE_HEADERS).unwrap_or_else(|s| {
            log::warn!("weir: could not read the response headers (host status {s})");
            HeaderSnapshot::empty(RESPONSE_HEADERS)
        });
        // On a failover tier, the per-attempt filter says which target answered.
        if let Some(answer) = headers
            .get_str(super::upstream::TARGET_HEADER)
            .map(str::to_string)
        {
            let _ = headers.remove(super::upstream::TARGET_HEADER);
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
        let content_type = headers.get("content-type").unwrap_or_default().to_vec();
        let streaming = content_type.starts_with(b"text/event-stream");
        self.encoded_answer = headers
            .get("content-encoding")
            .is_some_and(|e| !e.eq_ignore_ascii_case(b"identity"));
        if self.encoded_answer {
            // Weir asked for identity (`ask_for_unencoded_answers`); a provider that encodes
            // anyway is passed through unmetered, or refused when it needed translating.
            if self.translating.is_some() {
                self.refuse_encoded_translation(&mut headers);
            }
        } else if self.endpoint == Some(Endpoint::CountTokens) {
            // A token count, not an answer: nothing to meter, translate or add to.
        } else {
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
                if let Err(s) = headers.remove("content-length") {
                    log::warn!(
                        "weir: could not remove the response content-length (host status {s})"
                    );
                }
            }
            let success = headers.get(":status").is_some_and(|s| s.starts_with(b"2"));
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
                if let Err(s) = headers.remove("content-length") {
                    log::warn!(
                        "weir: could not remove the response content-length (host status {s})"
                    );
                }
            }
            self.meter = Some(meter);
        }
        for (name, value) in self.ratelimit_headers() {
            let _ = host::set_header(RESPONSE_HEADERS, &name, &value);
        }
        // Envoy reports retries in this header (virtual host `include_attempt_count_in_response`).
        if let Some(n) = headers
            .get_str("x-envoy-attempt-count")
            .and_then(|n| n.parse().ok())
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
            // Not metered (a token count, an encoded answer): passed through whole.
            if end_of_stream {
                self.response_complete = true;
            }
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
        if self.phase == Phase::Start && answered_by_health_check() {
            // A load balancer's probe, answered by Envoy's health_check filter before Weir:
            // not a request to audit or count.
            return;
        }
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

fn send_reply(reply: &host::LocalReply) {
    if let Err(status_code) = reply.send() {
        log::error!("weir: local reply failed with status {status_code}");
    }
}

/// Envoy's health_check filter answered the request (its response details say so).
fn answered_by_health_check() -> bool {
    host::property(&["response", "code_details"]).is_some_and(|d| d.starts_with(b"health_check"))
}

/// Envoy's request id (`x-request-id`, generated when the client sent none).
fn envoy_request_id() -> String {
    host::property(&["request", "id"])
        .map(|v| bounded_request_id(&String::from_utf8_lossy(&v)))
        .unwrap_or_default()
}

/// A client-supplied request id, if it is safe to log and echo.
fn valid_request_id(raw: &[u8]) -> Option<String> {
    let ok = !raw.is_empty() && raw.len() <= 128 && raw.iter().all(|b| is_request_id_byte(*b));
    ok.then(|| String::from_utf8_lossy(raw).into_owned())
}
