//! The audit record: exactly one JSON object per request, written through Envoy's access
//! log. It never holds a secret: keys appear only by id.

use serde::Serialize;

use crate::usage::Usage;

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "snake_case")]
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

#[derive(Debug, Clone, Default, Serialize)]
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
    /// `priced`, `unpriced` (no price for the model: flagged, never silently zero),
    /// `no_usage` (forwarded but the provider reported no usage), or null (not forwarded).
    pub cost_status: Option<&'static str>,
    pub duration_ms: f64,
    /// Time to the first byte of the response headers, when there was a response.
    pub ttfb_ms: Option<f64>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
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
    pub fn to_json(&self) -> Vec<u8> {
        // A typical record is 1.1-1.4 KB: one allocation instead of eight growing copies.
        let mut out = Vec::with_capacity(2048);
        match serde_json::to_writer(&mut out, self) {
            Ok(()) => out,
            Err(_) => Vec::new(),
        }
    }
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

/// Milliseconds with microsecond precision, for readable JSON.
pub fn millis(d: std::time::Duration) -> f64 {
    (d.as_micros() as f64) / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(v.as_object().unwrap().len(), 38);
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
