//! Filters of Weir's shape without its logic, for `make bench-floor`.
//!
//! The plugin configuration names what the filter does:
//! - `empty`: every callback continues at once (the cost of any proxy-wasm filter);
//! - `body`: holds the request headers until the body has arrived, reads the body and writes
//!   it back with its length, sets the routing header (what any filter that routes on the
//!   body must do);
//! - `shape`: `body`, plus Weir's moves on the answer: reads the response headers and sets
//!   four, reads a JSON answer whole (a stream's events one by one, never held) and writes it
//!   back, and leaves a record of Weir's size in filter state at the end.
//!
//! Host call results are ignored: it measures, it does not decide. (The SDK's hostcalls
//! return errors for the statuses they expect and panic on others; floor.py checks every
//! proxy on an answer before measuring it and flags any measured answer that is not a 200,
//! so a dead VM would not pass for a cheap one.)

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType};

#[derive(Clone, Copy, PartialEq, PartialOrd)]
enum Mode {
    Empty,
    Body,
    Shape,
}

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { mode: Mode::Empty }) });
}}

struct Root {
    mode: Mode,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let config = hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX)
            .ok()
            .flatten()
            .unwrap_or_default();
        self.mode = match config.as_slice() {
            b"empty" => Mode::Empty,
            b"body" => Mode::Body,
            b"shape" => Mode::Shape,
            other => {
                let message = format!(
                    "floor filter: unknown mode {:?}",
                    String::from_utf8_lossy(other)
                );
                let _ = hostcalls::log(LogLevel::Error, &message);
                return false;
            }
        };
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Floor {
            mode: self.mode,
            streaming: false,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Floor {
    mode: Mode,
    streaming: bool,
}

impl Context for Floor {}

/// Reads a body buffer into the VM and writes it back, as Weir does when it rewrites one;
/// the length written.
fn rewrite(buffer: BufferType, size: usize) -> usize {
    let body = hostcalls::get_buffer(buffer, 0, size)
        .ok()
        .flatten()
        .unwrap_or_default();
    let _ = hostcalls::set_buffer(buffer, 0, size, &body);
    body.len()
}

/// Weir's answer headers: request id, run id, tier, model.
const ANSWER_HEADERS: [(&str, &str); 4] = [
    ("x-weir-request-id", "5b0c1d9e-0000-4000-8000-000000000000"),
    ("x-weir-run-id", "5b0c1d9e-0000-4000-8000-000000000000"),
    ("x-weir-tier", "balanced"),
    ("x-weir-model", "gpt-4.1-mini"),
];

impl HttpContext for Floor {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        if self.mode == Mode::Empty || end_of_stream {
            return Action::Continue;
        }
        // Read the headers once (Weir reads them as one map); the length goes until the
        // body is rewritten, as with Weir.
        let _ = hostcalls::get_map_bytes(MapType::HttpRequestHeaders);
        let _ = hostcalls::remove_map_value(MapType::HttpRequestHeaders, "content-length");
        Action::Pause
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.mode == Mode::Empty {
            return Action::Continue;
        }
        if !end_of_stream {
            return Action::Pause;
        }
        let length = rewrite(BufferType::HttpRequestBody, body_size);
        let _ = hostcalls::set_map_value(
            MapType::HttpRequestHeaders,
            "content-length",
            Some(&length.to_string()),
        );
        // Weir's route picks the cluster by this header; plain routes ignore it.
        let _ = hostcalls::set_map_value(
            MapType::HttpRequestHeaders,
            "x-weir-cluster",
            Some("openai"),
        );
        let _ = hostcalls::call_foreign_function("clear_route_cache", None);
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if self.mode < Mode::Shape {
            return Action::Continue;
        }
        let headers = hostcalls::get_map(MapType::HttpResponseHeaders).unwrap_or_default();
        self.streaming = headers
            .iter()
            .any(|(k, v)| k == "content-type" && v.starts_with("text/event-stream"));
        if !self.streaming {
            // A JSON answer is read whole and may be rewritten: its length goes.
            let _ = hostcalls::remove_map_value(MapType::HttpResponseHeaders, "content-length");
        }
        for (name, value) in ANSWER_HEADERS {
            let _ = hostcalls::set_map_value(MapType::HttpResponseHeaders, name, Some(value));
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.mode < Mode::Shape {
            return Action::Continue;
        }
        if !self.streaming && !end_of_stream {
            return Action::Pause;
        }
        rewrite(BufferType::HttpResponseBody, body_size);
        Action::Continue
    }

    fn on_log(&mut self) {
        if self.mode < Mode::Shape {
            return;
        }
        // About the size of Weir's audit record, where Weir's access log finds it.
        let record = [b'x'; 700];
        let _ = hostcalls::set_property(vec!["weir_audit"], Some(&record));
    }
}
