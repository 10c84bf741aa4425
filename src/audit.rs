//! The audit record: exactly one JSON object per request, written through Envoy's access
//! log. It never holds a secret: keys appear only by id.

#[cfg(test)]
use serde::Serialize;

use crate::usage::Usage;

/// How a request ended.
// Serialize: the reference `to_json` is tested against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(test, derive(Serialize))]
#[cfg_attr(test, serde(rename_all = "snake_case"))]
pub enum Outcome {
    /// The provider answered and the response reached its end.
    Completed,
    /// Weir refused the request itself (auth, unknown model, bad input).
    Denied,
    /// The provider answered with an error status, or the upstream failed or reset.
    UpstreamError,
    /// The client went away before the response ended.
    ClientAborted,
    /// Weir failed internally and refused to forward (fail closed).
    #[default]
    Error,
}

#[derive(Debug, Clone, Default)]
#[cfg_attr(test, derive(Serialize))]
pub struct AuditRecord {
    /// RFC 3339, UTC, milliseconds: when the request arrived.
    pub time: String,
    pub request_id: String,
    pub method: String,
    /// Path without the query string (queries can carry credentials).
    pub path: String,
    pub endpoint: Option<&'static str>,
    /// `api_key` or `jwt`: how the caller was identified.
    pub identity: Option<&'static str>,
    /// The key id, or `jwt:<subject>` for a JWT identity. Never the secret.
    pub key_id: Option<String>,
    /// Set when a rotated key was used inside its overlap window: the key replacing it.
    pub key_successor: Option<String>,
    pub team: Option<String>,
    pub project: Option<String>,
    /// The end user the caller named (`x-weir-user` / `weir.user`).
    pub user: Option<String>,
    /// Groups calls of one agent run or conversation (`x-weir-run-id`); the request id
    /// when the caller named none.
    pub run_id: String,
    pub tags: Vec<String>,
    pub requested_model: Option<String>,
    pub tier: Option<String>,
    /// The model the provider said served the request, else the one Weir sent.
    pub served_model: Option<String>,
    pub provider: Option<String>,
    pub cluster: Option<String>,
    pub status: u32,
    pub stream: bool,
    /// Weir added `stream_options.include_usage` to get usage from the provider.
    pub usage_requested_by_weir: bool,
    pub outcome: Outcome,
    /// The policy evaluated, if any.
    pub policy: Option<String>,
    /// Its evaluation time in microseconds.
    pub policy_us: Option<u64>,
    /// The decision was the one the policy made for the same input earlier (its decision
    /// cache), not a new evaluation.
    pub policy_cached: bool,
    /// The tier the policy forced, if it did.
    pub policy_tier: Option<String>,
    /// The `max_tokens` cap the policy set, if it did.
    pub max_tokens_cap: Option<u64>,
    /// `allow` (forwarded or answered), `deny` (refused by Weir), `error` (Weir failed).
    pub decision: &'static str,
    /// Upstream attempts (0 when the request was not forwarded).
    pub attempts: u32,
    /// Weir's error code when it refused (e.g. `invalid_api_key`), else null.
    pub error: Option<&'static str>,
    /// The message shown to the client when Weir refused.
    pub reason: Option<String>,
    /// Envoy's response code details (e.g. `upstream_reset_before_response_started{...}`).
    pub detail: Option<String>,
    pub usage: Option<Usage>,
    /// What the request cost, when usage and a price were known.
    pub cost: Option<CostRecord>,
    /// The limit counters could not be used and `fail_mode = "open"` let the request through.
    pub limits_unavailable: bool,
    /// An end-user limit (`limits.per_user`) did not count this request: every slot the
    /// user may take in its counter table was held by other users in the current window.
    pub limits_uncounted: bool,
    /// `priced`, `unpriced` (no price for the model: flagged, never silently zero),
    /// `no_usage` (forwarded but the provider reported no usage), or null (not forwarded).
    pub cost_status: Option<&'static str>,
    pub duration_ms: f64,
    /// Time to the first byte of the response headers, when there was a response.
    pub ttfb_ms: Option<f64>,
}

// Serialize: the response metadata (`weir.cost`) carries it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CostRecord {
    pub currency: String,
    /// Rounded half up to whole micro-units (millionths of the currency unit).
    pub micros: u64,
    /// Exact, in pico-units (10^-12): sum these for invoices.
    pub picos: u128,
    /// The price-table entry used.
    pub priced_as: String,
}

impl AuditRecord {
    /// The record as one line of JSON: the same bytes serde_json writes for the derived
    /// `Serialize` (a property test holds them equal), written directly. Through serde the
    /// record took ~2.3 µs of the filter's ~18 per request: every key went through the string
    /// escaper and every token through a small write call.
    pub fn to_json(&self) -> Vec<u8> {
        // A typical record is 1.1-1.4 KB: one allocation instead of growing copies.
        let mut o = Vec::with_capacity(2048);
        let o = &mut o;
        str(o, b"{\"time\":", &self.time);
        str(o, head!("request_id"), &self.request_id);
        str(o, head!("method"), &self.method);
        str(o, head!("path"), &self.path);
        opt_str(o, head!("endpoint"), self.endpoint);
        opt_str(o, head!("identity"), self.identity);
        opt_str(o, head!("key_id"), self.key_id.as_deref());
        opt_str(o, head!("key_successor"), self.key_successor.as_deref());
        opt_str(o, head!("team"), self.team.as_deref());
        opt_str(o, head!("project"), self.project.as_deref());
        opt_str(o, head!("user"), self.user.as_deref());
        str(o, head!("run_id"), &self.run_id);
        o.extend_from_slice(head!("tags"));
        o.push(b'[');
        for (i, tag) in self.tags.iter().enumerate() {
            if i > 0 {
                o.push(b',');
            }
            write_str(o, tag);
        }
        o.push(b']');
        opt_str(o, head!("requested_model"), self.requested_model.as_deref());
        opt_str(o, head!("tier"), self.tier.as_deref());
        opt_str(o, head!("served_model"), self.served_model.as_deref());
        opt_str(o, head!("provider"), self.provider.as_deref());
        opt_str(o, head!("cluster"), self.cluster.as_deref());
        uint(o, head!("status"), self.status.into());
        bool(o, head!("stream"), self.stream);
        bool(
            o,
            head!("usage_requested_by_weir"),
            self.usage_requested_by_weir,
        );
        str(o, head!("outcome"), self.outcome.as_str());
        opt_str(o, head!("policy"), self.policy.as_deref());
        opt_uint(o, head!("policy_us"), self.policy_us);
        bool(o, head!("policy_cached"), self.policy_cached);
        opt_str(o, head!("policy_tier"), self.policy_tier.as_deref());
        opt_uint(o, head!("max_tokens_cap"), self.max_tokens_cap);
        str(o, head!("decision"), self.decision);
        uint(o, head!("attempts"), self.attempts.into());
        opt_str(o, head!("error"), self.error);
        opt_str(o, head!("reason"), self.reason.as_deref());
        opt_str(o, head!("detail"), self.detail.as_deref());
        match &self.usage {
            Some(u) => {
                uint(o, b",\"usage\":{\"prompt_tokens\":", u.prompt_tokens.into());
                uint(o, head!("completion_tokens"), u.completion_tokens.into());
                uint(o, head!("total_tokens"), u.total_tokens.into());
                uint(o, head!("cached_tokens"), u.cached_tokens.into());
                uint(o, head!("cache_write_tokens"), u.cache_write_tokens.into());
                uint(o, head!("reasoning_tokens"), u.reasoning_tokens.into());
                o.push(b'}');
            }
            None => o.extend_from_slice(b",\"usage\":null"),
        }
        match &self.cost {
            Some(c) => {
                str(o, b",\"cost\":{\"currency\":", &c.currency);
                uint(o, head!("micros"), c.micros.into());
                uint(o, head!("picos"), c.picos);
                str(o, head!("priced_as"), &c.priced_as);
                o.push(b'}');
            }
            None => o.extend_from_slice(b",\"cost\":null"),
        }
        bool(o, head!("limits_unavailable"), self.limits_unavailable);
        bool(o, head!("limits_uncounted"), self.limits_uncounted);
        opt_str(o, head!("cost_status"), self.cost_status);
        float(o, head!("duration_ms"), Some(self.duration_ms));
        float(o, head!("ttfb_ms"), self.ttfb_ms);
        o.push(b'}');
        std::mem::take(o)
    }
}

impl Outcome {
    /// The name serde gives it (`snake_case`).
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::Denied => "denied",
            Outcome::UpstreamError => "upstream_error",
            Outcome::ClientAborted => "client_aborted",
            Outcome::Error => "error",
        }
    }
}

// The record's members, written in serde_json's compact format. Each writer takes the
// member's head (`,"name":`, one static copy) and appends the value.

/// `,"name":`: the head of a member after an object's first.
macro_rules! head {
    ($name:literal) => {
        concat!(",\"", $name, "\":").as_bytes()
    };
}
use head;

fn str(out: &mut Vec<u8>, head: &[u8], value: &str) {
    out.extend_from_slice(head);
    write_str(out, value);
}

fn opt_str(out: &mut Vec<u8>, head: &[u8], value: Option<&str>) {
    out.extend_from_slice(head);
    match value {
        Some(v) => write_str(out, v),
        None => out.extend_from_slice(b"null"),
    }
}

fn uint(out: &mut Vec<u8>, head: &[u8], value: u128) {
    out.extend_from_slice(head);
    // u64 formatting where it fits: u128 division is a library call in wasm.
    let mut digits = itoa::Buffer::new();
    let text = match u64::try_from(value) {
        Ok(v) => digits.format(v),
        Err(_) => digits.format(value),
    };
    out.extend_from_slice(text.as_bytes());
}

fn opt_uint(out: &mut Vec<u8>, head: &[u8], value: Option<u64>) {
    match value {
        Some(v) => uint(out, head, v.into()),
        None => {
            out.extend_from_slice(head);
            out.extend_from_slice(b"null");
        }
    }
}

fn bool(out: &mut Vec<u8>, head: &[u8], value: bool) {
    out.extend_from_slice(head);
    out.extend_from_slice(if value { b"true" } else { b"false" });
}

/// serde_json's way: the shortest round-trip form (`zmij`, as serde_json uses), `null`
/// for NaN and infinities.
fn float(out: &mut Vec<u8>, head: &[u8], value: Option<f64>) {
    out.extend_from_slice(head);
    match value {
        Some(v) if v.is_finite() => {
            let mut digits = zmij::Buffer::new();
            out.extend_from_slice(digits.format_finite(v).as_bytes());
        }
        _ => out.extend_from_slice(b"null"),
    }
}

/// A byte JSON writes escaped: `"`, `\` and the control characters.
fn needs_escape(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

/// `value` as a JSON string, escaped as serde_json escapes: `"` and `\`, the short forms
/// of backspace, tab, newline, form feed and carriage return, `\u00xx` for the other
/// control characters; everything else (non-ASCII included) as it is.
fn write_str(out: &mut Vec<u8>, value: &str) {
    let bytes = value.as_bytes();
    // Almost every value (ids, names, models) has nothing to escape: one check of 16 bytes
    // at a time (no early exit inside a chunk, so it vectorises), then one copy.
    let clean = bytes
        .chunks(16)
        .all(|chunk| !chunk.iter().fold(false, |any, &b| any | needs_escape(b)));
    out.push(b'"');
    if clean {
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    }
    let mut run = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if !needs_escape(b) {
            continue;
        }
        out.extend_from_slice(bytes.get(run..i).unwrap_or_default());
        run = i + 1;
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x09 => out.extend_from_slice(b"\\t"),
            0x0a => out.extend_from_slice(b"\\n"),
            0x0c => out.extend_from_slice(b"\\f"),
            0x0d => out.extend_from_slice(b"\\r"),
            _ => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(b >> 4)]);
                out.push(HEX[usize::from(b & 0xf)]);
            }
        }
    }
    out.extend_from_slice(bytes.get(run..).unwrap_or_default());
    out.push(b'"');
}

/// At most the first `max_chars` characters of `s` (request text kept in a record is
/// bounded). Usually `s` itself: no character is counted when the bytes already fit.
pub fn clip(s: &str, max_chars: usize) -> &str {
    if s.len() <= max_chars {
        return s;
    }
    match s.char_indices().nth(max_chars) {
        Some((end, _)) => &s[..end],
        None => s,
    }
}

/// A request id Weir did not check (Envoy's `x-request-id`, which a client may send), made fit
/// for records and headers: the characters of `x-weir-request-id` (others become `_`), at
/// most 128. Envoy's own UUIDs pass unchanged.
pub fn bounded_request_id(raw: &str) -> String {
    if raw.len() <= 128 && raw.bytes().all(is_request_id_byte) {
        return raw.to_string();
    }
    raw.chars()
        .take(128)
        .map(|c| match u8::try_from(c) {
            Ok(b) if is_request_id_byte(b) => c,
            _ => '_',
        })
        .collect()
}

/// The alphabet of request ids: `A-Za-z0-9._:-`.
pub fn is_request_id_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-')
}

/// Milliseconds with microsecond precision, for readable JSON.
pub fn millis(d: std::time::Duration) -> f64 {
    (d.as_micros() as f64) / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn serialises_every_field() {
        let r = AuditRecord {
            request_id: "r1".into(),
            outcome: Outcome::ClientAborted,
            usage: Some(Usage {
                prompt_tokens: 1,
                ..Default::default()
            }),
            ..Default::default()
        };
        let v: serde_json::Value = serde_json::from_slice(&r.to_json()).unwrap();
        assert_eq!(v["outcome"], "client_aborted");
        assert_eq!(v["usage"]["prompt_tokens"], 1);
        assert!(v.get("key_id").unwrap().is_null());
        assert_eq!(v.as_object().unwrap().len(), 39);
    }

    fn text() -> impl Strategy<Value = String> {
        // Control characters, quotes and backslashes often; any Unicode too.
        prop_oneof!["[\\x00-\\x7f]{0,12}", any::<String>(), Just(String::new())]
    }

    fn opt_text() -> impl Strategy<Value = Option<String>> {
        proptest::option::of(text())
    }

    fn float() -> impl Strategy<Value = f64> {
        prop_oneof![
            any::<f64>(),
            (0u64..10_000_000).prop_map(|us| us as f64 / 1000.0),
            Just(f64::NAN),
            Just(f64::INFINITY),
            Just(-0.0),
        ]
    }

    fn statics() -> impl Strategy<Value = Option<&'static str>> {
        proptest::option::of(prop_oneof![
            Just("chat_completions"),
            Just("a \"quoted\"\\ name\n"),
            Just(""),
        ])
    }

    fn record() -> impl Strategy<Value = AuditRecord> {
        let ids = (text(), text(), text(), text(), text(), statics(), statics());
        let who = (opt_text(), opt_text(), opt_text(), opt_text(), opt_text());
        let routing = (
            proptest::collection::vec(text(), 0..4),
            opt_text(),
            opt_text(),
            opt_text(),
            opt_text(),
            opt_text(),
        );
        let flags = (
            any::<u32>(),
            any::<bool>(),
            any::<bool>(),
            prop_oneof![
                Just(Outcome::Completed),
                Just(Outcome::Denied),
                Just(Outcome::UpstreamError),
                Just(Outcome::ClientAborted),
                Just(Outcome::Error),
            ],
            any::<bool>(),
            any::<bool>(),
            any::<u32>(),
            any::<bool>(),
        );
        let policy = (
            opt_text(),
            proptest::option::of(any::<u64>()),
            opt_text(),
            proptest::option::of(any::<u64>()),
            statics(),
            opt_text(),
            opt_text(),
        );
        let usage = proptest::option::of(any::<[u64; 6]>().prop_map(|n| Usage {
            prompt_tokens: n[0],
            completion_tokens: n[1],
            total_tokens: n[2],
            cached_tokens: n[3],
            cache_write_tokens: n[4],
            reasoning_tokens: n[5],
        }));
        let cost = proptest::option::of(
            (text(), any::<u64>(), any::<u128>(), 0u64..1_000_000, text()).prop_map(
                |(currency, micros, picos, small, priced_as)| CostRecord {
                    currency,
                    micros,
                    // Small exact costs as often as huge ones.
                    picos: if micros % 2 == 0 { picos } else { small.into() },
                    priced_as,
                },
            ),
        );
        let end = (
            usage,
            cost,
            statics(),
            float(),
            proptest::option::of(float()),
        );
        (ids, who, routing, flags, policy, end).prop_map(
            |(ids, who, routing, flags, policy, end)| AuditRecord {
                time: ids.0,
                request_id: ids.1,
                method: ids.2,
                path: ids.3,
                run_id: ids.4,
                endpoint: ids.5,
                identity: ids.6,
                key_id: who.0,
                key_successor: who.1,
                team: who.2,
                project: who.3,
                user: who.4,
                tags: routing.0,
                requested_model: routing.1,
                tier: routing.2,
                served_model: routing.3,
                provider: routing.4,
                cluster: routing.5,
                status: flags.0,
                stream: flags.1,
                usage_requested_by_weir: flags.2,
                outcome: flags.3,
                policy_cached: flags.4,
                limits_unavailable: flags.5,
                limits_uncounted: flags.7,
                attempts: flags.6,
                policy: policy.0,
                policy_us: policy.1,
                policy_tier: policy.2,
                max_tokens_cap: policy.3,
                error: policy.4,
                reason: policy.5,
                detail: policy.6,
                usage: end.0,
                cost: end.1,
                cost_status: end.2,
                decision: "allow",
                duration_ms: end.3,
                ttfb_ms: end.4,
            },
        )
    }

    proptest! {
        /// The hand-written record is byte for byte what serde_json writes for the derived
        /// `Serialize`: same fields, order, escaping and number forms.
        #[test]
        fn to_json_is_serde_json(r in record()) {
            let ours = r.to_json();
            let serde = serde_json::to_vec(&r).unwrap();
            prop_assert_eq!(String::from_utf8(ours).unwrap(), String::from_utf8(serde).unwrap());
        }
    }

    #[test]
    fn to_json_escapes_like_serde_json() {
        let r = AuditRecord {
            user: Some("a\"b\\c\u{0}\u{1f}\u{7f}\u{8}\t\n\u{c}\r é 😀".into()),
            tags: vec!["x\u{1}".into(), "".into()],
            duration_ms: 1.5,
            ttfb_ms: Some(f64::NAN),
            ..Default::default()
        };
        let ours = String::from_utf8(r.to_json()).unwrap();
        assert_eq!(ours, serde_json::to_string(&r).unwrap());
        assert!(ours.contains(r#""user":"a\"b\\c\u0000\u001f"#), "{ours}");
        assert!(ours.contains(r#""ttfb_ms":null"#), "{ours}");
    }

    #[test]
    fn request_ids_from_envoy_are_bounded() {
        let uuid = "c40cde26-cd88-4947-aec4-24b4352e699f";
        assert_eq!(bounded_request_id(uuid), uuid);
        assert_eq!(bounded_request_id("a b\"c\u{e9}"), "a_b_c_");
        let long = "x".repeat(5000);
        assert_eq!(bounded_request_id(&long), "x".repeat(128));
        assert_eq!(bounded_request_id(""), "");
        // At the bound, valid ids pass whole; one character over, they are cut.
        let at_bound = "a.b_c:d-".repeat(16);
        assert_eq!(bounded_request_id(&at_bound), at_bound);
        assert_eq!(bounded_request_id(&format!("{at_bound}9")), at_bound);
        assert_eq!(
            bounded_request_id(&format!("{}é", "y".repeat(127))),
            format!("{}_", "y".repeat(127))
        );
    }

    #[test]
    fn clip_counts_characters() {
        assert_eq!(clip("/v1/chat", 512), "/v1/chat");
        assert_eq!(clip("abcdef", 3), "abc");
        assert_eq!(clip("ééé", 2), "éé");
        assert_eq!(clip("ééé", 3), "ééé");
        assert_eq!(clip("", 0), "");
    }

    #[test]
    fn millis_precision() {
        assert_eq!(millis(std::time::Duration::from_micros(1500)), 1.5);
    }
}
