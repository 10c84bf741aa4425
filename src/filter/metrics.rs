//! Metrics through proxy-wasm: each distinct name is defined once per VM and cached, and
//! a request's metrics are recorded together at its end ([`record_request`]).

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};

use foldhash::fast::FixedState;
use proxy_wasm::types::MetricType;

use crate::metrics::write_name;

thread_local! {
    // A VM is single-threaded; the cache lives as long as the VM.
    // foldhash, not SipHash: the names are Weir's own (bounded labels), and a request
    // looks up several.
    static DEFINED: RefCell<HashMap<String, u32, FixedState>> = RefCell::new(HashMap::default());
    // The name being looked up, reused: a request updates several metrics.
    static NAME: RefCell<String> = const { RefCell::new(String::new()) };
    // The ids of each label combination's metrics, by a hash of the combination.
    static BY_LABELS: RefCell<HashMap<u64, Vec<IdSet>, FixedState>> = RefCell::new(HashMap::default());
}

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_define_metric(
        metric_type: u32,
        name_data: *const u8,
        name_size: usize,
        return_id: *mut u32,
    ) -> u32;
    fn proxy_increment_metric(metric_id: u32, offset: i64) -> u32;
    fn proxy_record_metric(metric_id: u32, value: u64) -> u32;
}

/// The id of `base;label=value;...`, defined on first use.
fn id(kind: MetricType, base: &str, labels: &[(&str, &str)]) -> Option<u32> {
    NAME.with(|name| {
        let mut name = name.borrow_mut();
        write_name(&mut name, base, labels);
        DEFINED.with(|defined| {
            if let Some(id) = defined.borrow().get(name.as_str()) {
                return Some(*id);
            }
            let mut id = 0;
            // SAFETY: pointers are valid for the call; the host writes `id`.
            let status =
                unsafe { proxy_define_metric(kind as u32, name.as_ptr(), name.len(), &mut id) };
            if status != 0 {
                log::warn!("weir: defining metric {name} failed with host status {status}");
                return None;
            }
            defined.borrow_mut().insert(name.clone(), id);
            Some(id)
        })
    })
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
}

const TOKEN_DIRECTIONS: [&str; 5] = ["prompt", "completion", "cached", "cache_write", "reasoning"];

/// The metric ids of one label combination, each defined on first use: a request finds all
/// of its ids with one lookup, where six name lookups took ~10% of the filter's own work.
struct IdSet {
    labels: Labels,
    /// requests_total, tokens by direction (5), cost, unpriced, ttfb, policy_eval_us.
    ids: [Option<u32>; 10],
}

/// A label combination, owned (the key of an [`IdSet`]).
#[derive(PartialEq)]
struct Labels {
    strings: [Box<str>; 6],
    status: u32,
    cached: bool,
}

impl RequestMetrics<'_> {
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

/// At most this many label combinations keep their ids (then the cache starts over; the
/// names stay defined).
const CACHED_COMBINATIONS: usize = 1024;

/// Counts and records one request's metrics (labels through Envoy's `stats_tags`).
pub fn record_request(m: &RequestMetrics) {
    let hash = m.hash();
    BY_LABELS.with(|sets| {
        let mut sets = sets.borrow_mut();
        if !sets.contains_key(&hash) && sets.len() >= CACHED_COMBINATIONS {
            sets.clear();
        }
        let list = sets.entry(hash).or_default();
        let at = match list.iter().position(|s| m.is(&s.labels)) {
            Some(at) => at,
            None => {
                list.push(IdSet {
                    labels: Labels {
                        strings: m.strings().map(Box::from),
                        status: m.status,
                        cached: m.cached(),
                    },
                    ids: [None; 10],
                });
                list.len() - 1
            }
        };
        if let Some(set) = list.get_mut(at) {
            record_with(m, &mut set.ids);
        }
    });
}

fn record_with(m: &RequestMetrics, ids: &mut [Option<u32>; 10]) {
    // On the stack: the label's text is only needed when a slot is first defined.
    let mut digits = itoa::Buffer::new();
    let status = digits.format(m.status);
    let [requests, tokens @ .., cost, unpriced, ttfb, policy] = ids;
    count(
        requests,
        "weir_requests_total",
        &[
            ("endpoint", m.endpoint),
            ("tier", m.tier),
            ("decision", m.decision),
            ("status", status),
        ],
        1,
    );
    if let Some(counts) = m.tokens {
        for ((slot, direction), n) in tokens.iter_mut().zip(TOKEN_DIRECTIONS).zip(counts) {
            count(
                slot,
                "weir_tokens_total",
                &[("direction", direction), ("model", m.model)],
                n,
            );
        }
    }
    if let Some(micros) = m.cost_micros {
        count(
            cost,
            "weir_cost_micros_total",
            &[("model", m.model), ("team", m.team)],
            micros,
        );
    }
    if m.unpriced {
        count(
            unpriced,
            "weir_unpriced_requests_total",
            &[("model", m.model)],
            1,
        );
    }
    if let Some(ms) = m.ttfb_ms {
        record(ttfb, "weir_ttfb_ms", &[("endpoint", m.endpoint)], ms);
    }
    if let Some((name, cached, micros)) = m.policy {
        // Kept decisions and evaluations apart: microseconds against tens of them.
        let cached = if cached { "true" } else { "false" };
        record(
            policy,
            "weir_policy_eval_us",
            &[("policy", name), ("cached", cached)],
            micros,
        );
    }
}

/// `slot`'s id, found (and defined if new) by name the first time.
fn slot_id(
    slot: &mut Option<u32>,
    kind: MetricType,
    base: &str,
    labels: &[(&str, &str)],
) -> Option<u32> {
    if slot.is_none() {
        *slot = id(kind, base, labels);
    }
    *slot
}

/// Adds `by` to a counter (nothing, not even a lookup, when `by` is 0).
fn count(slot: &mut Option<u32>, base: &str, labels: &[(&str, &str)], by: u64) {
    if by == 0 {
        return;
    }
    if let Some(id) = slot_id(slot, MetricType::Counter, base, labels) {
        // SAFETY: plain values.
        unsafe { proxy_increment_metric(id, i64::try_from(by).unwrap_or(i64::MAX)) };
    }
}

fn record(slot: &mut Option<u32>, base: &str, labels: &[(&str, &str)], value: u64) {
    if let Some(id) = slot_id(slot, MetricType::Histogram, base, labels) {
        // SAFETY: plain values.
        unsafe { proxy_record_metric(id, value) };
    }
}
