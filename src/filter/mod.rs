//! The proxy-wasm shell: host calls in, decisions from the pure core, host calls out.

pub mod headers;
pub mod host;
pub mod http;
pub mod metrics;
pub mod root;
pub mod store;
pub mod upstream;
