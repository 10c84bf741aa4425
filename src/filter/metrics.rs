//! Metrics through proxy-wasm: each distinct name is defined once per VM and cached, and
//! a request's metrics are recorded together at its end ([`record_request`]).

use std::cell::RefCell;
use std::collections::HashMap;

use foldhash::fast::FixedState;
use proxy_wasm::types::MetricType;

use crate::metrics::{write_name, IdCache, Kind, RequestMetrics};

thread_local! {
    // A VM is single-threaded; the cache lives as long as the VM.
    // foldhash, not SipHash: the names are Weir's own (bounded labels), and a request
    // looks up several.
    static DEFINED: RefCell<HashMap<String, u32, FixedState>> = RefCell::new(HashMap::default());
    // The name being looked up, reused: a request updates several metrics.
    static NAME: RefCell<String> = const { RefCell::new(String::new()) };
    // The ids of each label combination's metrics.
    static IDS: RefCell<IdCache> = RefCell::new(IdCache::default());
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

/// Counts and records one request's metrics (labels through Envoy's `stats_tags`).
pub fn record_request(m: &RequestMetrics) {
    IDS.with(|cache| {
        let mut cache = cache.borrow_mut();
        let Some(ids) = cache.slots(m) else {
            return;
        };
        m.for_each_update(|slot, kind, base, labels, value| {
            let Some(slot) = ids.get_mut(slot) else {
                return;
            };
            match kind {
                Kind::Counter => count(slot, base, labels, value),
                Kind::Histogram => record(slot, base, labels, value),
            }
        });
    });
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
