//! The proxy-wasm ABI's encoding of a header map: a count, then (name length, value length)
//! pairs, then each name and value followed by a NUL. Envoy hands Weir a map in it (one
//! host call for all the headers) and takes local replies' headers in it. Pure, so the
//! decoding of bytes from the host is tested here, including against arbitrary bytes.

use std::ops::Range;

/// A header's name and value, as byte ranges of an encoded map.
pub type Entry = (Range<usize>, Range<usize>);

/// Encodes `headers`.
pub fn encode(headers: &[(&str, &str)]) -> Vec<u8> {
    let size = 4 + headers
        .iter()
        .map(|(n, v)| n.len() + v.len() + 10)
        .sum::<usize>();
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&(headers.len() as u32).to_le_bytes());
    for (n, v) in headers {
        out.extend_from_slice(&(n.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (n, v) in headers {
        out.extend_from_slice(n.as_bytes());
        out.push(0);
        out.extend_from_slice(v.as_bytes());
        out.push(0);
    }
    out
}

/// Where each header's name and value lie in encoded map `bytes`, in order; `None` when
/// the bytes are not such a map. Every bound is checked: never a range outside `bytes`.
pub fn index(bytes: &[u8]) -> Option<Vec<Entry>> {
    let u32_at = |at: usize| -> Option<usize> {
        Some(u32::from_le_bytes(bytes.get(at..at.checked_add(4)?)?.try_into().ok()?) as usize)
    };
    let count = u32_at(0)?;
    let mut at = count.checked_mul(8)?.checked_add(4)?;
    // A count the bytes cannot hold is refused before anything is allocated for it.
    if at > bytes.len() {
        return None;
    }
    let mut entries = Vec::with_capacity(count);
    for i in 0..count {
        let name = at..at.checked_add(u32_at(4 + i * 8)?)?;
        let value_at = name.end.checked_add(1)?;
        let value = value_at..value_at.checked_add(u32_at(8 + i * 8)?)?;
        bytes.get(name.start..value.end)?;
        at = value.end.checked_add(1)?;
        entries.push((name, value));
    }
    Some(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoded_maps_are_indexed_back() {
        let headers = [
            (":path", "/v1/models"),
            ("x-empty", ""),
            ("content-type", "a/b"),
        ];
        let bytes = encode(&headers);
        let entries = index(&bytes).unwrap();
        let read: Vec<(&[u8], &[u8])> = entries
            .iter()
            .map(|(n, v)| (&bytes[n.clone()], &bytes[v.clone()]))
            .collect();
        let expected: Vec<(&[u8], &[u8])> = headers
            .iter()
            .map(|(n, v)| (n.as_bytes(), v.as_bytes()))
            .collect();
        assert_eq!(read, expected);
        assert_eq!(index(&encode(&[])).unwrap(), vec![]);
    }

    #[test]
    fn what_is_not_a_map_is_refused() {
        let bytes = encode(&[("a", "b")]);
        // Truncated anywhere before the last value's end.
        for end in 0..bytes.len() - 1 {
            assert_eq!(index(&bytes[..end]), None, "{end}");
        }
        // A count or a length beyond the bytes (no allocation for the count either).
        assert_eq!(index(&u32::MAX.to_le_bytes()), None);
        let mut long = bytes.clone();
        long[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(index(&long), None);
    }
}
