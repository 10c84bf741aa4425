//! Weir: an AI gateway that runs inside Envoy as a proxy-wasm HTTP filter.
//!
//! Everything but `filter` is a pure core with no host calls, tested on the host.

pub mod audit;
pub mod body;
pub mod config;
pub mod cost;
pub mod directives;
pub mod endpoint;
pub mod errors;
pub mod header_map;
pub mod json_top;
pub mod jwt;
pub mod keys;
pub mod limits;
pub mod metrics;
pub mod models;
pub mod policy;
pub mod providers;
#[cfg(not(target_arch = "wasm32"))]
pub mod rego_text;
pub mod routing;
pub mod scopes;
pub mod sse;
pub mod translate;
pub mod usage;

#[cfg(target_arch = "wasm32")]
mod filter;

/// A map looked up on every request by names from the configuration (tiers, prices, key
/// hashes, policies): foldhash instead of SipHash, which was ~3% of the filter's time.
/// Not for keys a client chooses (a fixed-seed hash could be flooded with collisions).
pub type ConfigMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::FixedState>;

#[cfg(target_arch = "wasm32")]
proxy_wasm::main! {{
    proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Info);
    proxy_wasm::set_root_context(|_| Box::new(filter::root::WeirRoot::default()));
}}
