//! Metric names with labels. proxy-wasm metrics have no labels, so Weir encodes them in
//! the name (`weir_requests_total;endpoint=chat_completions;status=200`) and Envoy's
//! `stats_tags` (see envoy/envoy.yaml) turns each `;label=value` into a real Prometheus label.
//! A request's metrics ([`RequestMetrics`]) are recorded together at its end, their ids found
//! with one lookup of its label combination ([`IdCache`]).

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};

use foldhash::fast::FixedState;

/// The labels Weir uses; envoy.yaml has one `stats_tags` entry for each.
pub const LABELS: [&str; 9] = [
    "endpoint",
    "tier",
    "decision",
    "status",
    "direction",
    "model",
    "team",
    "policy",
    "cached",
];

/// `name;label=value;...` into `out` (cleared first), each value sanitised so it cannot
/// break the encoding: no `;` or `=`, printable, at most 128 characters, `none` when empty.
/// The filter formats several names per request and reuses one buffer.
pub fn write_name(out: &mut String, base: &str, labels: &[(&str, &str)]) {
    out.clear();
    out.push_str(base);
    for (label, value) in labels {
        out.push(';');
        out.push_str(label);
        out.push('=');
        if !value.is_empty() && value.len() <= 128 && value.chars().all(allowed) {
            // The usual case (configured names, numbers): copied as it is.
            out.push_str(value);
            continue;
        }
        let start = out.len();
        for c in value.chars().take(128) {
            out.push(if allowed(c) { c } else { '_' });
        }
        if out.len() == start {
            out.push_str("none");
        }
    }
}

/// What a label value may hold as it is: printable ASCII, but not the encoding's `;` and `=`.
fn allowed(c: char) -> bool {
    c.is_ascii_graphic() && c != ';' && c != '='
}

/// The kind of metric an update goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Histogram,
}

/// One request's metrics: its labels and what it counts.
pub struct RequestMetrics<'a> {
    pub endpoint: &'a str,
    pub tier: &'a str,
    pub decision: &'a str,
    pub status: u32,
    /// The configured model, never the provider's string: labels must stay bounded.
    pub model: &'a str,
    pub team: &'a str,
    /// Prompt, completion, cached, cache-write and reasoning tokens.
    pub tokens: Option<[u64; 5]>,
    pub cost_micros: Option<u64>,
    pub unpriced: bool,
    pub ttfb_ms: Option<u64>,
    /// The policy evaluated: its name, whether the decision was a kept one, microseconds.
    pub policy: Option<(&'a str, bool, u64)>,
    /// A per-user or per-run limit did not count the request (its table had no slot).
    pub limits_uncounted: bool,
    /// Recording the request's id evicted a live id from the idempotency table.
    pub idempotency_evicted: bool,
}

const TOKEN_DIRECTIONS: [&str; 5] = ["prompt", "completion", "cached", "cache_write", "reasoning"];

/// How many metrics one label combination has: requests_total, tokens by direction (5),
/// cost, unpriced, ttfb, policy_eval_us, limits_uncounted, idempotency_evictions.
pub const SLOTS: usize = 12;

/// A label combination's metric ids, by slot (`None`: not defined yet).
pub type Ids = [Option<u32>; SLOTS];

impl RequestMetrics<'_> {
    /// Calls `update(slot, kind, base, labels, value)` for each of this request's metric
    /// updates; `slot` (below [`SLOTS`]) names the metric within the label combination.
    /// Counters that would add 0 are left out.
    pub fn for_each_update(&self, mut update: impl FnMut(usize, Kind, &str, &[(&str, &str)], u64)) {
        // On the stack: the status label's text.
        let mut digits = itoa::Buffer::new();
        let status = digits.format(self.status);
        update(
            0,
            Kind::Counter,
            "weir_requests_total",
            &[
                ("endpoint", self.endpoint),
                ("tier", self.tier),
                ("decision", self.decision),
                ("status", status),
            ],
            1,
        );
        if let Some(counts) = self.tokens {
            for (i, (direction, n)) in TOKEN_DIRECTIONS.into_iter().zip(counts).enumerate() {
                if n > 0 {
                    let labels = [("direction", direction), ("model", self.model)];
                    update(1 + i, Kind::Counter, "weir_tokens_total", &labels, n);
                }
            }
        }
        if let Some(micros) = self.cost_micros.filter(|m| *m > 0) {
            let labels = [("model", self.model), ("team", self.team)];
            update(6, Kind::Counter, "weir_cost_micros_total", &labels, micros);
        }
        if self.unpriced {
            let labels = [("model", self.model)];
            update(7, Kind::Counter, "weir_unpriced_requests_total", &labels, 1);
        }
        if let Some(ms) = self.ttfb_ms {
            update(
                8,
                Kind::Histogram,
                "weir_ttfb_ms",
                &[("endpoint", self.endpoint)],
                ms,
            );
        }
        if let Some((name, cached, micros)) = self.policy {
            // Kept decisions and evaluations apart: microseconds against tens of them.
            let cached = if cached { "true" } else { "false" };
            let labels = [("policy", name), ("cached", cached)];
            update(9, Kind::Histogram, "weir_policy_eval_us", &labels, micros);
        }
        if self.limits_uncounted {
            update(10, Kind::Counter, "weir_limits_uncounted_total", &[], 1);
        }
        if self.idempotency_evicted {
            update(
                11,
                Kind::Counter,
                "weir_idempotency_evictions_total",
                &[],
                1,
            );
        }
    }

    fn strings(&self) -> [&str; 6] {
        let policy = self.policy.map_or("", |p| p.0);
        [
            self.endpoint,
            self.tier,
            self.decision,
            self.model,
            self.team,
            policy,
        ]
    }

    fn cached(&self) -> bool {
        self.policy.is_some_and(|p| p.1)
    }

    fn is(&self, labels: &Labels) -> bool {
        labels.status == self.status
            && labels.cached == self.cached()
            && labels
                .strings
                .iter()
                .zip(self.strings())
                .all(|(a, b)| **a == *b)
    }

    fn hash(&self) -> u64 {
        let mut h = FixedState::default().build_hasher();
        self.strings().hash(&mut h);
        self.status.hash(&mut h);
        self.cached().hash(&mut h);
        h.finish()
    }
}

/// A label combination, owned.
struct Labels {
    strings: [Box<str>; 6],
    status: u32,
    cached: bool,
}

/// At most this many label combinations keep their ids (then the cache starts over).
pub const CACHED_COMBINATIONS: usize = 1024;

/// The metric ids of each label combination seen: a request finds all of its ids with one
/// lookup (six name lookups took ~10% of the filter's own work). The ids themselves come
/// from the host, by name, on first use of a slot.
#[derive(Default)]
pub struct IdCache {
    by_labels: HashMap<u64, Vec<(Labels, Ids)>, FixedState>,
    len: usize,
}

impl IdCache {
    /// The id slots of `m`'s label combination (all empty for a new one).
    pub fn slots(&mut self, m: &RequestMetrics) -> Option<&mut Ids> {
        let hash = m.hash();
        let known = self
            .by_labels
            .get(&hash)
            .and_then(|list| list.iter().position(|(labels, _)| m.is(labels)));
        let at = match known {
            Some(at) => at,
            None => {
                if self.len >= CACHED_COMBINATIONS {
                    self.by_labels.clear();
                    self.len = 0;
                }
                self.len += 1;
                let labels = Labels {
                    strings: m.strings().map(Box::from),
                    status: m.status,
                    cached: m.cached(),
                };
                let list = self.by_labels.entry(hash).or_default();
                list.push((labels, [None; SLOTS]));
                list.len() - 1
            }
        };
        self.by_labels
            .get_mut(&hash)
            .and_then(|list| list.get_mut(at))
            .map(|(_, ids)| ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request<'a>(status: u32, policy: Option<(&'a str, bool, u64)>) -> RequestMetrics<'a> {
        RequestMetrics {
            endpoint: "chat_completions",
            tier: "fast",
            decision: "allow",
            status,
            model: "gpt-4o-mini",
            team: "search",
            tokens: Some([12, 7, 0, 0, 3]),
            cost_micros: Some(16),
            unpriced: false,
            ttfb_ms: Some(2),
            policy,
            limits_uncounted: false,
            idempotency_evicted: false,
        }
    }

    #[test]
    fn a_request_s_updates() {
        let mut seen = Vec::new();
        request(200, Some(("standard", true, 4))).for_each_update(
            |slot, kind, base, labels, value| {
                let mut name = String::new();
                write_name(&mut name, base, labels);
                seen.push((slot, kind, name, value));
            },
        );
        let expected = [
            (
                0,
                Kind::Counter,
                "weir_requests_total;endpoint=chat_completions;tier=fast;decision=allow;status=200",
                1,
            ),
            (
                1,
                Kind::Counter,
                "weir_tokens_total;direction=prompt;model=gpt-4o-mini",
                12,
            ),
            (
                2,
                Kind::Counter,
                "weir_tokens_total;direction=completion;model=gpt-4o-mini",
                7,
            ),
            (
                5,
                Kind::Counter,
                "weir_tokens_total;direction=reasoning;model=gpt-4o-mini",
                3,
            ),
            (
                6,
                Kind::Counter,
                "weir_cost_micros_total;model=gpt-4o-mini;team=search",
                16,
            ),
            (
                8,
                Kind::Histogram,
                "weir_ttfb_ms;endpoint=chat_completions",
                2,
            ),
            (
                9,
                Kind::Histogram,
                "weir_policy_eval_us;policy=standard;cached=true",
                4,
            ),
        ];
        let expected: Vec<_> = expected
            .iter()
            .map(|(s, k, n, v)| (*s, *k, n.to_string(), *v))
            .collect();
        assert_eq!(seen, expected);
        let mut denied = Vec::new();
        let refused = RequestMetrics {
            tokens: None,
            cost_micros: None,
            ttfb_ms: None,
            unpriced: true,
            limits_uncounted: true,
            idempotency_evicted: true,
            ..request(401, None)
        };
        refused.for_each_update(|slot, _, base, _, _| denied.push((slot, base.to_string())));
        assert_eq!(
            denied,
            [
                (0, "weir_requests_total".to_string()),
                (7, "weir_unpriced_requests_total".to_string()),
                (10, "weir_limits_uncounted_total".to_string()),
                (11, "weir_idempotency_evictions_total".to_string())
            ]
        );
    }

    #[test]
    fn ids_are_kept_per_label_combination() {
        let mut cache = IdCache::default();
        let ok = request(200, Some(("standard", false, 9)));
        cache.slots(&ok).unwrap()[0] = Some(41);
        // The same labels (other values counted) find the same slots.
        let again = RequestMetrics {
            tokens: None,
            ..request(200, Some(("standard", false, 1)))
        };
        assert_eq!(cache.slots(&again).unwrap()[0], Some(41));
        // Any label that differs is another combination.
        for other in [
            request(500, Some(("standard", false, 9))),
            request(200, Some(("standard", true, 9))),
            request(200, Some(("dlp", false, 9))),
            request(200, None),
            RequestMetrics {
                team: "ads",
                ..request(200, Some(("standard", false, 9)))
            },
        ] {
            assert_eq!(cache.slots(&other).unwrap()[0], None);
        }
        assert_eq!(cache.slots(&ok).unwrap()[0], Some(41));
    }

    #[test]
    fn the_id_cache_is_bounded() {
        let mut cache = IdCache::default();
        let first = request(100, None);
        cache.slots(&first).unwrap()[0] = Some(1);
        for status in 101..(100 + CACHED_COMBINATIONS as u32) {
            cache.slots(&request(status, None)).unwrap()[0] = Some(status);
        }
        assert_eq!(cache.slots(&first).unwrap()[0], Some(1));
        // One more combination starts the cache over.
        cache.slots(&request(9999, None));
        assert_eq!(cache.slots(&first).unwrap()[0], None);
        assert!(cache.len <= 2);
    }

    #[test]
    fn names() {
        let name = |base: &str, labels: &[(&str, &str)]| {
            let mut out = String::from("left over");
            write_name(&mut out, base, labels);
            out
        };
        assert_eq!(
            name(
                "weir_requests_total",
                &[
                    ("endpoint", "chat"),
                    ("model", "gpt-4.1"),
                    ("team", "a;b=c")
                ]
            ),
            "weir_requests_total;endpoint=chat;model=gpt-4.1;team=a_b_c"
        );
        assert_eq!(name("m", &[("l", "")]), "m;l=none");
        assert_eq!(name("m", &[("l", "x y\n")]), "m;l=x_y_");
        // One `_` per character, and at most 128 characters, clean or not.
        assert_eq!(name("m", &[("l", "café")]), "m;l=caf_");
        let long = "a".repeat(200);
        assert_eq!(name("m", &[("l", &long)]), format!("m;l={}", &long[..128]));
        assert_eq!(
            name("m", &[("l", &long[..128])]),
            format!("m;l={}", &long[..128])
        );
        assert_eq!(
            name("weir_ttfb_ms", &[("endpoint", "")]),
            "weir_ttfb_ms;endpoint=none"
        );
    }
}
