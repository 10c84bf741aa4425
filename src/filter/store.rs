//! The counter store in Envoy: proxy-wasm shared data, one copy per Envoy process shared
//! by every worker VM, with compare-and-swap. (The SDK's wrappers panic on statuses they
//! do not expect; these return them.)

use std::ptr::null_mut;

use crate::limits::{Store, StoreError};

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_get_shared_data(
        key_data: *const u8,
        key_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
        return_cas: *mut u32,
    ) -> u32;
    fn proxy_set_shared_data(
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
        cas: u32,
    ) -> u32;
}

const OK: u32 = 0;
const NOT_FOUND: u32 = 1;
const CAS_MISMATCH: u32 = 8;
/// The CAS Weir writes with when it read no value. Envoy creates an absent key whatever the
/// CAS, but checks a non-zero CAS against a present key's, so this makes a first write
/// "create only": if another worker created the key since Weir read it, the write
/// conflicts (and the caller reads again) instead of overwriting that worker's count. Zero
/// would overwrite. A present key's CAS (a process-wide counter) equals this one time in 2^32.
const CREATE_ONLY: u32 = u32::MAX;

pub struct SharedData;

impl Store for SharedData {
    fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), StoreError> {
        let mut data = null_mut();
        let mut size = 0;
        let mut cas = 0;
        // SAFETY: pointers are valid for the call; the host writes the out-parameters.
        let status = unsafe {
            proxy_get_shared_data(key.as_ptr(), key.len(), &mut data, &mut size, &mut cas)
        };
        match status {
            OK => {
                let value = if data.is_null() {
                    Vec::new()
                } else {
                    // SAFETY: the host allocated `size` bytes with our allocator.
                    unsafe { Vec::from_raw_parts(data, size, size) }
                };
                Ok((Some(value), Some(cas)))
            }
            NOT_FOUND => Ok((None, None)),
            _ => Err(StoreError::Unavailable),
        }
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
        // SAFETY: pointers are valid for the call.
        let status = unsafe {
            proxy_set_shared_data(
                key.as_ptr(),
                key.len(),
                value.as_ptr(),
                value.len(),
                cas.unwrap_or(CREATE_ONLY),
            )
        };
        match status {
            OK => Ok(()),
            CAS_MISMATCH => Err(StoreError::Conflict),
            _ => Err(StoreError::Unavailable),
        }
    }
}
