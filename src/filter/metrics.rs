//! Metrics through proxy-wasm: each distinct name is defined once per VM and cached.

use std::cell::RefCell;
use std::collections::HashMap;

use proxy_wasm::types::MetricType;

thread_local! {
    // A VM is single-threaded; the cache lives as long as the VM.
    static DEFINED: RefCell<HashMap<String, u32>> = RefCell::new(HashMap::new());
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

fn id(kind: MetricType, name: &str) -> Option<u32> {
    DEFINED.with(|defined| {
        if let Some(id) = defined.borrow().get(name) {
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
        defined.borrow_mut().insert(name.to_string(), id);
        Some(id)
    })
}

pub fn count(name: &str, by: u64) {
    if by == 0 {
        return;
    }
    if let Some(id) = id(MetricType::Counter, name) {
        // SAFETY: plain values.
        unsafe { proxy_increment_metric(id, i64::try_from(by).unwrap_or(i64::MAX)) };
    }
}

pub fn record(name: &str, value: u64) {
    if let Some(id) = id(MetricType::Histogram, name) {
        // SAFETY: plain values.
        unsafe { proxy_record_metric(id, value) };
    }
}
