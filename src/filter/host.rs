//! The few host calls Weir makes, as functions that never panic.
//!
//! `proxy_wasm::hostcalls` (0.2.5) panics on any status it does not expect (for example a
//! header edit after the headers were sent, or a non-UTF-8 header value), and a panic kills
//! the VM for every request on the worker. These wrappers call the same ABI functions and
//! turn every status into a `Result`.

use std::ptr::{null, null_mut};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub const OK: u32 = 0;
pub const NOT_FOUND: u32 = 1;
/// proxy-wasm's `ParseFailure` status.
pub const PARSE_FAILURE: u32 = 4;

pub const REQUEST_HEADERS: u32 = 0;
pub const RESPONSE_HEADERS: u32 = 2;

pub const REQUEST_BODY: u32 = 0;
pub const RESPONSE_BODY: u32 = 1;
pub const PLUGIN_CONFIGURATION: u32 = 7;

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_get_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> u32;
    fn proxy_replace_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_remove_header_map_value(map_type: u32, key_data: *const u8, key_size: usize) -> u32;
    fn proxy_get_buffer_bytes(
        buffer_type: u32,
        start: usize,
        max_size: usize,
        return_buffer_data: *mut *mut u8,
        return_buffer_size: *mut usize,
    ) -> u32;
    fn proxy_set_buffer_bytes(
        buffer_type: u32,
        start: usize,
        size: usize,
        buffer_data: *const u8,
        buffer_size: usize,
    ) -> u32;
    fn proxy_get_property(
        path_data: *const u8,
        path_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> u32;
    fn proxy_set_property(
        path_data: *const u8,
        path_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_send_local_response(
        status_code: u32,
        status_code_details_data: *const u8,
        status_code_details_size: usize,
        body_data: *const u8,
        body_size: usize,
        headers_data: *const u8,
        headers_size: usize,
        grpc_status: i32,
    ) -> u32;
    fn proxy_get_current_time_nanoseconds(return_time: *mut u64) -> u32;
    fn proxy_call_foreign_function(
        function_name_data: *const u8,
        function_name_size: usize,
        arguments_data: *const u8,
        arguments_size: usize,
        results_data: *mut *mut u8,
        results_size: *mut usize,
    ) -> u32;
}

/// Takes ownership of a buffer the host allocated through `proxy_on_memory_allocate`
/// (proxy-wasm's allocator, i.e. the global allocator).
fn owned(data: *mut u8, size: usize) -> Vec<u8> {
    if data.is_null() {
        Vec::new()
    } else {
        // SAFETY: the host wrote `size` bytes into memory it got from our allocator.
        unsafe { Vec::from_raw_parts(data, size, size) }
    }
}

/// A header's raw value; `None` when absent or unreadable.
pub fn header(map: u32, name: &str) -> Option<Vec<u8>> {
    let mut data = null_mut();
    let mut size = 0;
    // SAFETY: pointers are valid for the call; the host writes the out-parameters.
    let status =
        unsafe { proxy_get_header_map_value(map, name.as_ptr(), name.len(), &mut data, &mut size) };
    (status == OK).then(|| owned(data, size))
}

/// A header as text; `None` when absent or not UTF-8.
pub fn header_str(map: u32, name: &str) -> Option<String> {
    header(map, name).and_then(|v| String::from_utf8(v).ok())
}

pub fn set_header(map: u32, name: &str, value: &str) -> Result<(), u32> {
    // SAFETY: pointers are valid for the call.
    let status = unsafe {
        proxy_replace_header_map_value(map, name.as_ptr(), name.len(), value.as_ptr(), value.len())
    };
    if status == OK {
        Ok(())
    } else {
        Err(status)
    }
}

pub fn remove_header(map: u32, name: &str) -> Result<(), u32> {
    // SAFETY: pointers are valid for the call.
    let status = unsafe { proxy_remove_header_map_value(map, name.as_ptr(), name.len()) };
    if status == OK || status == NOT_FOUND {
        Ok(())
    } else {
        Err(status)
    }
}

pub fn buffer(kind: u32, start: usize, max: usize) -> Option<Vec<u8>> {
    let mut data = null_mut();
    let mut size = 0;
    // SAFETY: pointers are valid for the call; the host writes the out-parameters.
    let status = unsafe { proxy_get_buffer_bytes(kind, start, max, &mut data, &mut size) };
    (status == OK).then(|| owned(data, size))
}

pub fn set_buffer(kind: u32, start: usize, size: usize, value: &[u8]) -> Result<(), u32> {
    // SAFETY: pointers are valid for the call.
    let status = unsafe { proxy_set_buffer_bytes(kind, start, size, value.as_ptr(), value.len()) };
    if status == OK {
        Ok(())
    } else {
        Err(status)
    }
}

fn property_path(path: &[&str]) -> Vec<u8> {
    path.join("\0").into_bytes()
}

pub fn property(path: &[&str]) -> Option<Vec<u8>> {
    let path = property_path(path);
    let mut data = null_mut();
    let mut size = 0;
    // SAFETY: pointers are valid for the call; the host writes the out-parameters.
    let status = unsafe { proxy_get_property(path.as_ptr(), path.len(), &mut data, &mut size) };
    (status == OK).then(|| owned(data, size))
}

/// An integer property (Envoy returns 8 bytes, little endian).
pub fn property_u64(path: &[&str]) -> Option<u64> {
    let bytes = property(path)?;
    let array: [u8; 8] = bytes.get(..8)?.try_into().ok()?;
    Some(u64::from_le_bytes(array))
}

pub fn set_property(path: &[&str], value: &[u8]) -> Result<(), u32> {
    let path = property_path(path);
    // SAFETY: pointers are valid for the call.
    let status =
        unsafe { proxy_set_property(path.as_ptr(), path.len(), value.as_ptr(), value.len()) };
    if status == OK {
        Ok(())
    } else {
        Err(status)
    }
}

/// A local reply, built when Weir decides and sent then or later (see `WeirHttp::reply`);
/// `details` shows in Envoy's `%RESPONSE_CODE_DETAILS%`.
pub struct LocalReply {
    status: u32,
    /// In Envoy's header-map encoding.
    headers: Vec<u8>,
    body: Vec<u8>,
    details: String,
}

impl LocalReply {
    pub fn new(status: u32, headers: &[(&str, &str)], body: Vec<u8>, details: &str) -> Self {
        LocalReply {
            status,
            headers: crate::header_map::encode(headers),
            body,
            details: details.to_string(),
        }
    }

    pub fn send(&self) -> Result<(), u32> {
        // SAFETY: pointers are valid for the call.
        let status = unsafe {
            proxy_send_local_response(
                self.status,
                self.details.as_ptr(),
                self.details.len(),
                self.body.as_ptr(),
                self.body.len(),
                self.headers.as_ptr(),
                self.headers.len(),
                -1,
            )
        };
        if status == OK {
            Ok(())
        } else {
            Err(status)
        }
    }
}

pub fn now() -> SystemTime {
    let mut nanos: u64 = 0;
    // SAFETY: the pointer is valid for the call.
    let status = unsafe { proxy_get_current_time_nanoseconds(&mut nanos) };
    if status == OK {
        UNIX_EPOCH + Duration::from_nanos(nanos)
    } else {
        UNIX_EPOCH
    }
}

/// Asks Envoy to pick the route again after Weir set the cluster header.
pub fn clear_route_cache() -> Result<(), u32> {
    let name = "clear_route_cache";
    let mut data = null_mut();
    let mut size = 0;
    // SAFETY: pointers are valid for the call; the host writes the out-parameters.
    let status = unsafe {
        proxy_call_foreign_function(name.as_ptr(), name.len(), null(), 0, &mut data, &mut size)
    };
    drop(owned(data, size));
    if status == OK {
        Ok(())
    } else {
        Err(status)
    }
}

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_get_header_map_pairs(
        map_type: u32,
        return_map_data: *mut *mut u8,
        return_map_size: *mut usize,
    ) -> u32;
}

/// A whole header map in the ABI's encoding (see [`crate::header_map`]); the host status
/// when unreadable.
pub fn header_map_bytes(map: u32) -> Result<Vec<u8>, u32> {
    let mut data = null_mut();
    let mut size = 0;
    // SAFETY: pointers are valid for the call; the host writes the out-parameters.
    let status = unsafe { proxy_get_header_map_pairs(map, &mut data, &mut size) };
    if status != OK {
        return Err(status);
    }
    Ok(owned(data, size))
}

#[link(wasm_import_module = "wasi_snapshot_preview1")]
extern "C" {
    fn environ_sizes_get(count: *mut usize, buf_size: *mut usize) -> u16;
    fn environ_get(environ: *mut *mut u8, environ_buf: *mut u8) -> u16;
}

/// A variable of the VM's environment (WASI), which Envoy fills from its own for the
/// names its `vm_config.environment_variables` lists. Read with the two WASI calls
/// directly: `std::env::var` made the module ~600 bytes larger for the same answer.
pub fn env_var(name: &str) -> Option<String> {
    let (mut count, mut size) = (0, 0);
    // SAFETY: pointers are valid for the call; the host writes the out-parameters.
    if unsafe { environ_sizes_get(&mut count, &mut size) } != 0 {
        return None;
    }
    let mut pointers = vec![null_mut::<u8>(); count];
    let mut entries = vec![0u8; size];
    // SAFETY: both buffers have the sizes the host just reported.
    if unsafe { environ_get(pointers.as_mut_ptr(), entries.as_mut_ptr()) } != 0 {
        return None;
    }
    // `entries` holds "NAME=value\0" one after another.
    entries
        .split(|b| *b == 0)
        .find_map(|entry| entry.strip_prefix(name.as_bytes())?.strip_prefix(b"="))
        .and_then(|value| String::from_utf8(value.to_vec()).ok())
}
