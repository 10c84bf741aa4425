//! A header map read with one host call. Every host call crosses the Wasm boundary, and the
//! headers phase used to make one per header it looked at (about twenty per request, most
//! of them for headers that were absent). Now it reads the map once, looks names up here,
//! and asks the host to remove only the headers that exist.
//!
//! The snapshot keeps the host's bytes as they came and indexes them: no allocation per
//! header (a request's and a response's headers were some forty allocations).
//!
//! The snapshot stays true while no one else edits the map: during one callback, or across
//! a pause (Envoy runs no other filter on a paused stream). Weir's own edits go through it.

use std::ops::Range;

use super::host;
use crate::header_map;

#[derive(Debug, Default)]
pub struct HeaderSnapshot {
    map: u32,
    /// The host's encoding of the map, then the names and values Weir set.
    bytes: Vec<u8>,
    /// Each header's name and value in `bytes`, in Envoy's order.
    entries: Vec<header_map::Entry>,
}

impl HeaderSnapshot {
    /// Reads header map `map` (`host::REQUEST_HEADERS` or `host::RESPONSE_HEADERS`).
    pub fn read(map: u32) -> Result<Self, u32> {
        let bytes = host::header_map_bytes(map)?;
        // A map that does not decode is as unreadable as a failed call.
        let entries = header_map::index(&bytes).ok_or(host::PARSE_FAILURE)?;
        Ok(HeaderSnapshot {
            map,
            bytes,
            entries,
        })
    }

    /// A snapshot of map `map` that holds no headers (when the map could not be read).
    pub fn empty(map: u32) -> Self {
        HeaderSnapshot {
            map,
            ..Default::default()
        }
    }

    fn slice(&self, range: &Range<usize>) -> &[u8] {
        self.bytes.get(range.clone()).unwrap_or_default()
    }

    /// The first value of `name` (Envoy's own lookup returns the first too).
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.entries
            .iter()
            .find(|(n, _)| self.slice(n).eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| self.slice(v))
    }

    /// The first value of `name` as text; `None` when absent or not UTF-8.
    pub fn get_str(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// Every (name, value) pair, in Envoy's order (names are ASCII; any other is skipped).
    pub fn pairs(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.entries.iter().filter_map(|(n, v)| {
            let name = std::str::from_utf8(self.slice(n)).ok()?;
            Some((name, self.slice(v)))
        })
    }

    /// The names that start with `prefix` (ASCII, any case), in Envoy's order; the names
    /// are compared as bytes first, so the others cost no UTF-8 check.
    pub fn names_with_prefix(&self, prefix: &str) -> Vec<String> {
        self.entries
            .iter()
            .map(|(n, _)| self.slice(n))
            .filter(|name| {
                name.get(..prefix.len())
                    .is_some_and(|p| p.eq_ignore_ascii_case(prefix.as_bytes()))
            })
            .filter_map(|name| std::str::from_utf8(name).ok().map(str::to_string))
            .collect()
    }

    /// Drops every value of `name` from the snapshot (not from the host's map).
    fn forget(&mut self, name: &str) {
        let bytes = &self.bytes;
        self.entries.retain(|(n, _)| {
            !bytes
                .get(n.clone())
                .unwrap_or_default()
                .eq_ignore_ascii_case(name.as_bytes())
        });
    }

    /// Removes every value of `name`, calling the host only when there is one.
    pub fn remove(&mut self, name: &str) -> Result<(), u32> {
        if !self.contains(name) {
            return Ok(());
        }
        host::remove_header(self.map, name)?;
        self.forget(name);
        Ok(())
    }

    /// Sets `name` to `value` (replacing every value), on the host and here.
    pub fn set(&mut self, name: &str, value: &str) -> Result<(), u32> {
        host::set_header(self.map, name, value)?;
        self.forget(name);
        let name_at = self.bytes.len();
        self.bytes
            .extend(name.bytes().map(|b| b.to_ascii_lowercase()));
        let value_at = self.bytes.len();
        self.bytes.extend_from_slice(value.as_bytes());
        self.entries
            .push((name_at..value_at, value_at..self.bytes.len()));
        Ok(())
    }
}
