//! A header map read with one host call. Every host call crosses the Wasm boundary, and the
//! headers phase used to make one per header it looked at (about twenty per request, most
//! of them for headers that were absent). Now it reads the map once, looks names up here,
//! and asks the host to remove only the headers that exist.
//!
//! The snapshot stays true while no one else edits the map: during one callback, or across
//! a pause (Envoy runs no other filter on a paused stream). Weir's own edits go through it.

use super::host;

#[derive(Debug, Default)]
pub struct HeaderSnapshot {
    map: u32,
    pairs: Vec<(String, Vec<u8>)>,
}

impl HeaderSnapshot {
    /// Reads header map `map` (`host::REQUEST_HEADERS` or `host::RESPONSE_HEADERS`).
    pub fn read(map: u32) -> Result<Self, u32> {
        Ok(HeaderSnapshot {
            map,
            pairs: host::headers(map)?,
        })
    }

    /// A snapshot of map `map` that holds no headers (when the map could not be read).
    pub fn empty(map: u32) -> Self {
        HeaderSnapshot {
            map,
            pairs: Vec::new(),
        }
    }

    /// The first value of `name` (Envoy's own lookup returns the first too).
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.pairs
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }

    /// The first value of `name` as text; `None` when absent or not UTF-8.
    pub fn get_str(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// Every (name, value) pair, in Envoy's order.
    pub fn pairs(&self) -> &[(String, Vec<u8>)] {
        &self.pairs
    }

    /// Removes every value of `name`, calling the host only when there is one.
    pub fn remove(&mut self, name: &str) -> Result<(), u32> {
        if !self.contains(name) {
            return Ok(());
        }
        host::remove_header(self.map, name)?;
        self.pairs.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        Ok(())
    }

    /// Sets `name` to `value` (replacing every value), on the host and here.
    pub fn set(&mut self, name: &str, value: &str) -> Result<(), u32> {
        host::set_header(self.map, name, value)?;
        self.pairs.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self.pairs
            .push((name.to_ascii_lowercase(), value.as_bytes().to_vec()));
        Ok(())
    }
}
