//! The built-in mock provider: speaks OpenAI Chat Completions and Anthropic Messages,
//! buffered and SSE, reports usage the way each real API does, records every request it
//! receives, and misbehaves on request.
//!
//! ```text
//! weir-mock --listen openai=127.0.0.1:0 --listen local=127.0.0.1:0 \
//!           --credential openai=mock-openai-credential
//! ```
//! prints one JSON line `{"listening":{"openai":"127.0.0.1:PORT",...}}` once ready.
//!
//! Faults, as request headers (they pass through Weir untouched):
//! `x-mock-status: 429` answer with that status and the provider's error shape
//! (`x-mock-status-on: <listener>`: only on that listener);
//! `x-mock-delay-ms: N` wait before the response headers;
//! `x-mock-chunk-delay-ms: N` wait between stream events;
//! `x-mock-drop-after: N` reset the connection after N stream events (0: before any response);
//! `x-mock-cached-tokens: N`, `x-mock-reasoning-tokens: N` report cache / reasoning tokens;
//! `x-mock-reply-words: N` answer with N words (a stream of N events; for the benchmark);
//! `x-mock-gzip: always` gzip the JSON answer even when the request does not accept gzip.
//!
//! Like the real APIs, JSON answers are gzipped when the request's `accept-encoding`
//! accepts gzip (streams are not).
//!
//! `POST /v1/messages/count_tokens` answers `{"input_tokens": N}`, N as a message would report.
//!
//! Control: `GET /_mock/requests[?request_id=ID]` lists what was received (JSON),
//! `DELETE /_mock/requests` forgets it, `GET /_mock/health` answers `ok`.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

#[derive(Parser, Debug)]
#[command(
    name = "weir-mock",
    about = "Mock OpenAI and Anthropic provider for Weir's demo and tests"
)]
struct Args {
    /// NAME=ADDR to listen on (port 0 picks a free port); repeatable.
    #[arg(long = "listen", default_value = "default=127.0.0.1:0")]
    listen: Vec<String>,
    /// NAME=SECRET: the listener NAME requires this provider credential, as
    /// `Authorization: Bearer` on /v1/chat/completions and as `x-api-key` (with
    /// `anthropic-version`) on /v1/messages. Listeners without one accept no credential.
    #[arg(long = "credential")]
    credentials: Vec<String>,
    /// Requests kept for /_mock/requests (oldest dropped first).
    #[arg(long, default_value_t = 10_000)]
    keep: usize,
}

struct State {
    args: Args,
    received: Mutex<Vec<Value>>,
    counter: AtomicU64,
}

type Body = http_body_util::combinators::BoxBody<Bytes, io::Error>;

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never: Infallible| match never {})
        .boxed()
}

/// A response body fed from a channel, so events can be paced or the stream broken.
struct ChannelBody(mpsc::Receiver<Result<Frame<Bytes>, io::Error>>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = io::Error;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        self.0.poll_recv(cx)
    }
}

#[tokio::main]
async fn main() -> io::Result<()> {
    let args = Args::parse();
    let mut listeners = Vec::new();
    let mut bound = serde_json::Map::new();
    for spec in &args.listen {
        let (name, addr) = spec.split_once('=').unwrap_or(("default", spec.as_str()));
        let addr: SocketAddr = addr.parse().map_err(|e| {
            io::Error::new(io::ErrorKind::InvalidInput, format!("--listen {spec}: {e}"))
        })?;
        let listener = TcpListener::bind(addr).await?;
        bound.insert(name.to_string(), json!(listener.local_addr()?.to_string()));
        listeners.push((name.to_string(), listener));
    }
    let state = Arc::new(State {
        args,
        received: Mutex::new(Vec::new()),
        counter: AtomicU64::new(0),
    });
    println!("{}", json!({ "listening": bound }));
    for (name, listener) in listeners {
        let state = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                // Each stream event goes out when it is written, as from a provider (with
                // Nagle on, small events wait for the peer's delayed ACK: ~40 ms).
                let _ = stream.set_nodelay(true);
                let state = state.clone();
                let name = name.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| encoded(req, state.clone(), name.clone()));
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
    }
    tokio::signal::ctrl_c().await?;
    Ok(())
}

fn header<'a>(req: &'a Request<Incoming>, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

fn header_num(req: &Request<Incoming>, name: &str) -> Option<u64> {
    header(req, name).and_then(|v| v.trim().parse().ok())
}

/// `handle`'s answer, gzipped when the request accepts gzip (or `x-mock-gzip: always`) and
/// the answer is JSON: what api.openai.com does for the official SDKs.
async fn encoded(
    req: Request<Incoming>,
    state: Arc<State>,
    listener: String,
) -> Result<Response<Body>, io::Error> {
    let accepts_gzip = header(&req, "accept-encoding").is_some_and(|v| {
        v.split(',')
            .any(|c| c.split(';').next().unwrap_or("").trim() == "gzip")
    });
    let gzip = accepts_gzip || header(&req, "x-mock-gzip") == Some("always");
    let response = handle(req, state, listener).await?;
    let json = response
        .headers()
        .get("content-type")
        .is_some_and(|t| t.as_bytes().starts_with(b"application/json"));
    if !gzip || !json {
        return Ok(response);
    }
    let (mut parts, body) = response.into_parts();
    let plain = body.collect().await?.to_bytes();
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    io::Write::write_all(&mut encoder, &plain)?;
    let compressed = encoder.finish()?;
    parts.headers.remove("content-length");
    parts.headers.insert(
        "content-encoding",
        hyper::header::HeaderValue::from_static("gzip"),
    );
    Ok(Response::from_parts(parts, full(compressed)))
}

async fn handle(
    req: Request<Incoming>,
    state: Arc<State>,
    listener: String,
) -> Result<Response<Body>, io::Error> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let headers: serde_json::Map<String, Value> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                json!(String::from_utf8_lossy(v.as_bytes())),
            )
        })
        .collect();
    let delay = header_num(&req, "x-mock-delay-ms");
    let chunk_delay = header_num(&req, "x-mock-chunk-delay-ms").unwrap_or(0);
    let drop_after = header_num(&req, "x-mock-drop-after");
    // `x-mock-status-on: <listener>` limits the failure to one listener (one "provider").
    let fail_here = header(&req, "x-mock-status-on").is_none_or(|l| l == listener);
    let fail_status = header_num(&req, "x-mock-status").filter(|_| fail_here);
    let cached = header_num(&req, "x-mock-cached-tokens").unwrap_or(0);
    let reasoning = header_num(&req, "x-mock-reasoning-tokens").unwrap_or(0);
    let reply_words = header_num(&req, "x-mock-reply-words").map(|n| n.min(100_000) as usize);
    let required = state.args.credentials.iter().find_map(|c| {
        c.strip_prefix(listener.as_str())
            .and_then(|rest| rest.strip_prefix('='))
    });
    let auth_ok = match (required, path.as_str()) {
        (None, _) => true,
        (Some(k), "/v1/messages" | "/v1/messages/count_tokens") => {
            header(&req, "x-api-key") == Some(k) && header(&req, "anthropic-version").is_some()
        }
        // Every other API path is OpenAI's: bearer credential.
        (Some(k), p) if p.starts_with("/v1/") => {
            header(&req, "authorization") == Some(format!("Bearer {k}").as_str())
        }
        (Some(_), _) => true,
    };
    let body = req
        .into_body()
        .collect()
        .await
        .map_err(io::Error::other)?
        .to_bytes();

    if path.starts_with("/_mock/") {
        return Ok(control(&state, &method, &path, &query));
    }
    let seq = state.counter.fetch_add(1, Ordering::Relaxed) + 1;
    {
        let mut received = state.received.lock().unwrap_or_else(|e| e.into_inner());
        if received.len() >= state.args.keep {
            received.remove(0);
        }
        received.push(json!({
            "seq": seq,
            "listener": listener,
            "method": method.as_str(),
            "path": path,
            "headers": headers,
            "body": String::from_utf8_lossy(&body),
        }));
    }
    if let Some(ms) = delay {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if drop_after == Some(0) {
        return Err(io::Error::new(
            io::ErrorKind::ConnectionReset,
            "x-mock-drop-after: 0",
        ));
    }
    if !auth_ok
        && !matches!(
            path.as_str(),
            "/v1/chat/completions" | "/v1/messages" | "/v1/messages/count_tokens"
        )
    {
        return Ok(json_response(
            401,
            &openai_error(
                "invalid_request_error",
                "mock: wrong or missing provider credential",
            ),
        ));
    }
    // Anthropic's token count: the prompt tokens a message with this body would report.
    if path == "/v1/messages/count_tokens" {
        if !auth_ok {
            return Ok(json_response(
                401,
                &anthropic_error(
                    "authentication_error",
                    "mock: wrong or missing provider credential",
                ),
            ));
        }
        return Ok(match serde_json::from_slice::<Value>(&body) {
            Ok(request) => {
                let reply = Reply::new(Api::Anthropic, &request, seq, 0, 0, None);
                json_response(200, &json!({"input_tokens": reply.prompt_tokens}))
            }
            Err(e) => json_response(
                400,
                &anthropic_error("invalid_request_error", &format!("mock: {e}")),
            ),
        });
    }
    // Other OpenAI endpoints: simple answers with usage in their own shapes.
    if let Some(answer) = other_openai(&path, &body) {
        return Ok(json_response(200, &answer));
    }
    let api = match path.as_str() {
        "/v1/chat/completions" => Api::OpenAi,
        "/v1/messages" => Api::Anthropic,
        _ => {
            return Ok(json_response(
                404,
                &openai_error("invalid_request_error", &format!("Unknown path {path}")),
            ))
        }
    };
    if !auth_ok {
        return Ok(match api {
            Api::OpenAi => json_response(
                401,
                &openai_error(
                    "invalid_request_error",
                    "mock: wrong or missing provider credential",
                ),
            ),
            Api::Anthropic => json_response(
                401,
                &anthropic_error(
                    "authentication_error",
                    "mock: wrong or missing provider credential",
                ),
            ),
        });
    }
    if let Some(status) = fail_status.filter(|s| (400..600).contains(s)) {
        let message = format!("mock: failing on request with status {status}");
        let mut response = match api {
            Api::OpenAi => json_response(
                status as u16,
                &openai_error(
                    if status == 429 {
                        "rate_limit_exceeded"
                    } else {
                        "server_error"
                    },
                    &message,
                ),
            ),
            Api::Anthropic => json_response(
                status as u16,
                &anthropic_error(
                    if status == 429 {
                        "rate_limit_error"
                    } else {
                        "api_error"
                    },
                    &message,
                ),
            ),
        };
        if status == 429 {
            response
                .headers_mut()
                .insert("retry-after", hyper::header::HeaderValue::from_static("1"));
        }
        return Ok(response);
    }
    let request: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            let message = format!("mock: body is not JSON: {e}");
            return Ok(match api {
                Api::OpenAi => json_response(400, &openai_error("invalid_request_error", &message)),
                Api::Anthropic => {
                    json_response(400, &anthropic_error("invalid_request_error", &message))
                }
            });
        }
    };
    let reply = Reply::new(api, &request, seq, cached, reasoning, reply_words);
    // What this answer reports as usage, in the API's own shape, for tests to compare with.
    let reported = match api {
        Api::OpenAi => reply.openai_usage(),
        Api::Anthropic => reply.anthropic_usage(reply.completion_tokens()),
    };
    {
        let mut received = state.received.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(record) = received.iter_mut().rev().find(|r| r["seq"] == json!(seq)) {
            record["reported_usage"] = reported;
        }
    }
    let stream = request
        .get("stream")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    if !stream {
        let body = match api {
            Api::OpenAi => reply.openai_json(),
            Api::Anthropic => reply.anthropic_json(),
        };
        return Ok(json_response(200, &body));
    }
    let include_usage = request
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let events = match api {
        Api::OpenAi => reply.openai_events(include_usage),
        Api::Anthropic => reply.anthropic_events(),
    };
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        for (i, event) in events.into_iter().enumerate() {
            if drop_after.is_some_and(|d| i as u64 >= d) {
                let _ = tx
                    .send(Err(io::Error::new(
                        io::ErrorKind::ConnectionReset,
                        "x-mock-drop-after",
                    )))
                    .await;
                return;
            }
            if i > 0 && chunk_delay > 0 {
                tokio::time::sleep(Duration::from_millis(chunk_delay)).await;
            }
            if tx.send(Ok(Frame::data(Bytes::from(event)))).await.is_err() {
                return;
            }
        }
    });
    let response = Response::builder()
        .status(200)
        .header("content-type", "text/event-stream; charset=utf-8")
        .header("cache-control", "no-cache")
        .body(ChannelBody(rx).boxed())
        .map_err(io::Error::other)?;
    Ok(response)
}

fn control(state: &State, method: &hyper::Method, path: &str, query: &str) -> Response<Body> {
    match (method.as_str(), path) {
        ("GET", "/_mock/health") => Response::new(full("ok")),
        ("GET", "/_mock/requests") => {
            let wanted = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("request_id="))
                .map(str::to_string);
            let received = state.received.lock().unwrap_or_else(|e| e.into_inner());
            let list: Vec<&Value> = received
                .iter()
                .filter(|r| {
                    wanted.as_deref().is_none_or(|id| {
                        r.pointer("/headers/x-weir-request-id")
                            .and_then(Value::as_str)
                            == Some(id)
                    })
                })
                .collect();
            json_response(200, &json!(list))
        }
        ("DELETE", "/_mock/requests") => {
            state
                .received
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clear();
            json_response(200, &json!({"cleared": true}))
        }
        _ => json_response(404, &json!({"error": "unknown mock control path"})),
    }
}

fn json_response(status: u16, value: &Value) -> Response<Body> {
    let mut response = Response::new(full(value.to_string()));
    *response.status_mut() =
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

fn openai_error(kind: &str, message: &str) -> Value {
    json!({"error": {"message": message, "type": kind, "param": null, "code": kind}})
}

fn anthropic_error(kind: &str, message: &str) -> Value {
    json!({"type": "error", "error": {"type": kind, "message": message}})
}

#[derive(Clone, Copy)]
enum Api {
    OpenAi,
    Anthropic,
}

/// The answer to one request: derived from it, with deterministic token counts.
struct Reply {
    /// Anthropic with tools offered and no tool result yet: call the first tool.
    tool_call: Option<(String, Value)>,
    /// The answer was cut at max_tokens.
    truncated: bool,
    id: String,
    model: String,
    words: Vec<String>,
    prompt_tokens: u64,
    cached_tokens: u64,
    reasoning_tokens: u64,
    created: u64,
}

/// Text of a message `content`: a string, or an array of blocks with `text`.
fn content_text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(blocks) => blocks
            .iter()
            .filter_map(|b| {
                // A tool's answer (Anthropic's tool_result) reads like text here.
                b.get("text")
                    .or_else(|| b.get("content").filter(|_| b["type"] == "tool_result"))
                    .and_then(Value::as_str)
            })
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

fn word_count(s: &str) -> u64 {
    s.split_whitespace().count() as u64
}

impl Reply {
    fn new(
        api: Api,
        request: &Value,
        n: u64,
        cached: u64,
        reasoning: u64,
        reply_words: Option<usize>,
    ) -> Reply {
        let model = request
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or("unknown")
            .to_string();
        let messages = request
            .get("messages")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let mut prompt_tokens = 0;
        let mut last_user = String::new();
        for m in &messages {
            let text = content_text(m.get("content").unwrap_or(&Value::Null));
            // Like the real APIs: a few tokens of overhead per message plus its words.
            prompt_tokens += 4 + word_count(&text);
            // A tool's answer (OpenAI's `tool` message) is what the reply talks about.
            if matches!(
                m.get("role").and_then(Value::as_str),
                Some("user") | Some("tool")
            ) {
                last_user = text;
            }
        }
        if let Some(system) = request.get("system") {
            prompt_tokens += 4 + word_count(&content_text(system));
        }
        let echo: String = match reply_words {
            Some(n) => "word ".repeat(n.saturating_sub(4)),
            None => last_user.chars().take(200).collect(),
        };
        let text = format!("Mock reply from {model}: {echo}");
        let mut words: Vec<String> = text.split_inclusive(' ').map(str::to_string).collect();
        // Like the real APIs, stop at max_tokens (one word, one token here).
        let max = request
            .get("max_tokens")
            .or_else(|| request.get("max_completion_tokens"))
            .and_then(Value::as_u64);
        let truncated = max.is_some_and(|m| (m as usize) < words.len());
        if let Some(m) = max {
            words.truncate(m as usize);
        }
        let id = match api {
            Api::OpenAi => format!("chatcmpl-mock{n}"),
            Api::Anthropic => format!("msg_mock{n}"),
        };
        let answered = messages.last().is_some_and(|m| {
            m["role"] == "tool"
                || m["content"]
                    .as_array()
                    .is_some_and(|b| b.iter().any(|x| x["type"] == "tool_result"))
        });
        // With tools offered and no tool answer yet, call the first tool (both APIs).
        let tool_call = match request.get("tools").and_then(Value::as_array) {
            Some(tools) if !tools.is_empty() && !answered => {
                let name = tools[0]
                    .get("name")
                    .or_else(|| tools[0].pointer("/function/name"))
                    .and_then(Value::as_str)
                    .unwrap_or("tool");
                Some((
                    name.to_string(),
                    json!({"query": last_user.chars().take(100).collect::<String>()}),
                ))
            }
            _ => None,
        };
        Reply {
            tool_call,
            id,
            model,
            words,
            prompt_tokens: prompt_tokens + cached,
            cached_tokens: cached,
            reasoning_tokens: reasoning,
            truncated,
            created: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        }
    }

    fn text(&self) -> String {
        self.words.concat()
    }

    fn completion_tokens(&self) -> u64 {
        self.words.len() as u64 + self.reasoning_tokens
    }

    fn openai_usage(&self) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens(),
            "total_tokens": self.prompt_tokens + self.completion_tokens(),
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": self.reasoning_tokens, "audio_tokens": 0,
                "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}
        })
    }

    fn openai_finish(&self) -> &'static str {
        if self.tool_call.is_some() {
            "tool_calls"
        } else if self.truncated {
            "length"
        } else {
            "stop"
        }
    }

    fn openai_json(&self) -> Value {
        let message = match &self.tool_call {
            Some((name, input)) => {
                json!({"role": "assistant", "content": null, "refusal": null, "tool_calls": [
                {"id": format!("call_{}", self.id), "type": "function", "function": {"name": name, "arguments": input.to_string()}}]})
            }
            None => json!({"role": "assistant", "content": self.text(), "refusal": null}),
        };
        json!({
            "id": self.id, "object": "chat.completion", "created": self.created, "model": self.model,
            "system_fingerprint": "fp_mock",
            "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": self.openai_finish()}],
            "usage": self.openai_usage(),
        })
    }

    fn openai_chunk(&self, delta: Value, finish: Value, include_usage: bool) -> String {
        let mut chunk = json!({
            "id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
            "system_fingerprint": "fp_mock",
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
        });
        if include_usage {
            chunk["usage"] = Value::Null;
        }
        format!("data: {chunk}\n\n")
    }

    /// OpenAI sends the usage chunk (empty `choices`) only when asked with `include_usage`.
    fn openai_events(&self, include_usage: bool) -> Vec<String> {
        let mut events = vec![self.openai_chunk(
            json!({"role": "assistant", "content": "", "refusal": null}),
            Value::Null,
            include_usage,
        )];
        if let Some((name, input)) = &self.tool_call {
            // The call's id and name first, then its arguments in fragments, like the real API.
            let call = json!({"index": 0, "id": format!("call_{}", self.id), "type": "function",
                              "function": {"name": name, "arguments": ""}});
            events.push(self.openai_chunk(
                json!({"tool_calls": [call]}),
                Value::Null,
                include_usage,
            ));
            let text = input.to_string();
            let mid = (0..=text.len() / 2)
                .rev()
                .find(|i| text.is_char_boundary(*i))
                .unwrap_or(0);
            for part in [&text[..mid], &text[mid..]] {
                let call = json!({"index": 0, "function": {"arguments": part}});
                events.push(self.openai_chunk(
                    json!({"tool_calls": [call]}),
                    Value::Null,
                    include_usage,
                ));
            }
        } else {
            for w in &self.words {
                events.push(self.openai_chunk(json!({"content": w}), Value::Null, include_usage));
            }
        }
        events.push(self.openai_chunk(json!({}), json!(self.openai_finish()), include_usage));
        if include_usage {
            let chunk = json!({
                "id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                "system_fingerprint": "fp_mock", "choices": [], "usage": self.openai_usage(),
            });
            events.push(format!("data: {chunk}\n\n"));
        }
        events.push("data: [DONE]\n\n".to_string());
        events
    }

    /// Anthropic's `input_tokens` excludes tokens read from the cache.
    fn anthropic_usage(&self, output_tokens: u64) -> Value {
        json!({
            "input_tokens": self.prompt_tokens - self.cached_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": self.cached_tokens,
            "output_tokens": output_tokens,
        })
    }

    fn stop_reason(&self) -> &'static str {
        if self.tool_call.is_some() {
            "tool_use"
        } else if self.truncated {
            "max_tokens"
        } else {
            "end_turn"
        }
    }

    /// The content blocks of the answer: the tool call, or the text.
    fn anthropic_content(&self) -> Value {
        match &self.tool_call {
            Some((name, input)) => {
                json!([{"type": "tool_use", "id": format!("toolu_{}", self.id), "name": name, "input": input}])
            }
            None => json!([{"type": "text", "text": self.text()}]),
        }
    }

    fn anthropic_json(&self) -> Value {
        json!({
            "id": self.id, "type": "message", "role": "assistant", "model": self.model,
            "content": self.anthropic_content(),
            "stop_reason": self.stop_reason(), "stop_sequence": null,
            "usage": self.anthropic_usage(self.completion_tokens()),
        })
    }

    fn anthropic_events(&self) -> Vec<String> {
        let event = |name: &str, data: Value| format!("event: {name}\ndata: {data}\n\n");
        let mut events = vec![
            event(
                "message_start",
                json!({"type": "message_start", "message": {
                "id": self.id, "type": "message", "role": "assistant", "model": self.model, "content": [],
                "stop_reason": null, "stop_sequence": null, "usage": self.anthropic_usage(1)}}),
            ),
            event("ping", json!({"type": "ping"})),
        ];
        if let Some((name, input)) = &self.tool_call {
            // A tool call streams its input as JSON fragments, like the real API.
            events.push(event(
                "content_block_start",
                json!({"type": "content_block_start", "index": 0,
                "content_block": {"type": "tool_use", "id": format!("toolu_{}", self.id), "name": name, "input": {}}}),
            ));
            let text = input.to_string();
            let mid = (0..=text.len() / 2)
                .rev()
                .find(|i| text.is_char_boundary(*i))
                .unwrap_or(0);
            let (a, b) = text.split_at(mid);
            for part in [a, b] {
                events.push(event(
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": 0,
                    "delta": {"type": "input_json_delta", "partial_json": part}}),
                ));
            }
        } else {
            events.push(event(
                "content_block_start",
                json!({"type": "content_block_start", "index": 0,
                "content_block": {"type": "text", "text": ""}}),
            ));
            for w in &self.words {
                events.push(event(
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": 0,
                    "delta": {"type": "text_delta", "text": w}}),
                ));
            }
        }
        events.push(event(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 0}),
        ));
        events.push(event(
            "message_delta",
            json!({"type": "message_delta",
            "delta": {"stop_reason": self.stop_reason(), "stop_sequence": null},
            "usage": {"output_tokens": self.completion_tokens()}}),
        ));
        events.push(event("message_stop", json!({"type": "message_stop"})));
        events
    }
}

/// One embedding per input, as the API gives them: `dimensions` numbers each (3 unless the
/// request asks for 1 to 8192), as JSON numbers or, with `encoding_format: "base64"`, as
/// base64 of little-endian f32s. Large batches make the multi-megabyte answers of real
/// embeddings calls.
fn embeddings(request: &Value) -> Vec<Value> {
    use base64::Engine as _;
    let inputs = match request.get("input") {
        Some(Value::Array(items)) => items.len().max(1),
        _ => 1,
    };
    let dimensions = request
        .get("dimensions")
        .and_then(Value::as_u64)
        .filter(|d| (1..=8192).contains(d))
        .unwrap_or(3) as usize;
    let base64 = request.get("encoding_format").and_then(Value::as_str) == Some("base64");
    (0..inputs)
        .map(|i| {
            let vector: Vec<f32> = (0..dimensions)
                .map(|j| (((i * dimensions + j) as f32 * 0.618_034).fract() - 0.5) * 0.2)
                .collect();
            let embedding = if base64 {
                let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
                Value::from(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(vector)
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect()
}

/// `/v1/embeddings`, `/v1/completions`, `/v1/responses`, and a pass-through probe
/// (`/v1/files`), each with usage shaped as the real API shapes it.
fn other_openai(path: &str, body: &[u8]) -> Option<Value> {
    let request: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let model = request
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("unknown")
        .to_string();
    let words = |v: Option<&Value>| -> u64 {
        match v {
            Some(Value::String(s)) => word_count(s),
            Some(Value::Array(items)) => items.iter().map(|i| word_count(&content_text(i))).sum(),
            _ => 0,
        }
    };
    Some(match path {
        "/v1/embeddings" => {
            let n = words(request.get("input")).max(1);
            json!({"object": "list", "model": model, "data": embeddings(&request),
                   "usage": {"prompt_tokens": n, "total_tokens": n}})
        }
        "/v1/completions" => {
            let prompt = words(request.get("prompt")) + 1;
            let text = format!("Mock completion from {model}");
            let out = word_count(&text);
            json!({"id": "cmpl-mock", "object": "text_completion", "model": model,
                   "choices": [{"index": 0, "text": text, "finish_reason": "stop", "logprobs": null}],
                   "usage": {"prompt_tokens": prompt, "completion_tokens": out, "total_tokens": prompt + out}})
        }
        "/v1/responses" => {
            let input = words(request.get("input")) + 3;
            let text = format!("Mock response from {model}");
            let out = word_count(&text);
            json!({"id": "resp_mock", "object": "response", "model": model, "status": "completed",
                   "output": [{"type": "message", "role": "assistant",
                               "content": [{"type": "output_text", "text": text, "annotations": []}]}],
                   "usage": {"input_tokens": input, "output_tokens": out, "total_tokens": input + out,
                             "input_tokens_details": {"cached_tokens": 0},
                             "output_tokens_details": {"reasoning_tokens": 0}}})
        }
        p if p.starts_with("/v1/files") => json!({"object": "list", "data": [], "path": p}),
        _ => return None,
    })
}
