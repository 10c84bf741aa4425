//! The top-level fields of a JSON object, found without parsing the rest. A provider's
//! answer can be megabytes of numbers (embeddings) around the two small fields Weir meters
//! (`model`, `usage`); serde skips numbers a byte at a time, this skips eight bytes at a
//! time (sixteen with SIMD). The values found are returned raw, unvalidated: callers parse
//! them.

/// The raw text of each top-level field of the object in `json` named in `names` (the last
/// one where a name repeats, as serde_json's `Value` does), or `None`. Keys are compared as
/// written (a key spelled with escapes does not match). Scanning stops at the first byte
/// that cannot continue the object; fields found before it are kept.
pub fn top_level_fields<'a, const N: usize>(
    json: &'a [u8],
    names: [&str; N],
) -> [Option<&'a [u8]>; N] {
    let mut found = [None; N];
    let mut at = skip_whitespace(json, 0);
    if json.get(at) != Some(&b'{') {
        return found;
    }
    at += 1;
    loop {
        at = skip_whitespace(json, at);
        if json.get(at) != Some(&b'"') {
            // `}` (the end) or not an object's member.
            return found;
        }
        let Some(key_end) = string_end(json, at + 1) else {
            return found;
        };
        let key = json.get(at + 1..key_end).unwrap_or_default();
        at = skip_whitespace(json, key_end + 1);
        if json.get(at) != Some(&b':') {
            return found;
        }
        let value_start = skip_whitespace(json, at + 1);
        let Some(value_end) = value_end(json, value_start) else {
            return found;
        };
        if let Some(i) = names.iter().position(|n| n.as_bytes() == key) {
            if let (Some(slot), Some(value)) = (found.get_mut(i), json.get(value_start..value_end))
            {
                *slot = Some(value);
            }
        }
        at = skip_whitespace(json, value_end);
        if json.get(at) != Some(&b',') {
            return found;
        }
        at += 1;
    }
}

fn skip_whitespace(json: &[u8], mut at: usize) -> usize {
    while json.get(at).is_some_and(|b| b.is_ascii_whitespace()) {
        at += 1;
    }
    at
}

/// The index of the quote closing the string whose content starts at `from`; `None` when
/// the string does not end (or ends in a lone backslash). Jumps between quotes and
/// backslashes with `memchr2`.
pub(crate) fn string_end(json: &[u8], mut from: usize) -> Option<usize> {
    loop {
        let i = memchr::memchr2(b'"', b'\\', json.get(from..)?)?;
        if json.get(from + i) == Some(&b'"') {
            return Some(from + i);
        }
        // A backslash: the byte after it is escaped.
        from += i + 2;
    }
}

/// Where the value starting at `at` ends (exclusive).
fn value_end(json: &[u8], at: usize) -> Option<usize> {
    match json.get(at)? {
        b'"' => string_end(json, at + 1).map(|end| end + 1),
        b'{' | b'[' => container_end(json, at),
        // A number or a literal: up to the next delimiter.
        _ => {
            let rest = json.get(at..)?;
            let len = rest
                .iter()
                .position(|b| matches!(b, b',' | b'}' | b']') || b.is_ascii_whitespace())
                .unwrap_or(rest.len());
            (len > 0).then_some(at + len)
        }
    }
}

/// Where the object or array opening at `open` ends (exclusive), brackets inside strings
/// not counted.
fn container_end(json: &[u8], open: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut at = open;
    loop {
        at = next_structural(json, at)?;
        match json.get(at)? {
            b'"' => at = string_end(json, at + 1)? + 1,
            b'{' | b'[' => {
                depth += 1;
                at += 1;
            }
            _ => {
                depth = depth.saturating_sub(1);
                at += 1;
                if depth == 0 {
                    return Some(at);
                }
            }
        }
    }
}

/// The index of the next `"`, `[`, `]`, `{` or `}` from `at`. Runs without any (numbers,
/// commas) are skipped eight bytes a step: a word holds one of them when, after setting
/// each byte's 0x20 bit (which turns `[` into `{` and `]` into `}`, and no other byte into
/// either), some byte equals `{` or `}`, or some byte of the word itself equals `"`.
pub(crate) fn next_structural(json: &[u8], at: usize) -> Option<usize> {
    let mut at = skip_plain_simd(json, at);
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let has_zero_byte = |v: u64| v.wrapping_sub(ONES) & !v & HIGH != 0;
    while let Some(chunk) = json.get(at..at + 8) {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let x = u64::from_le_bytes(word);
        let folded = x | (0x20 * ONES);
        if has_zero_byte(x ^ (u64::from(b'"') * ONES))
            || has_zero_byte(folded ^ (u64::from(b'{') * ONES))
            || has_zero_byte(folded ^ (u64::from(b'}') * ONES))
        {
            break;
        }
        at += 8;
    }
    json.get(at..)?
        .iter()
        .position(|b| matches!(b, b'"' | b'[' | b']' | b'{' | b'}'))
        .map(|i| at + i)
}

/// With Wasm SIMD (the filter's build): the same test sixteen bytes a step, up to the first
/// sixteen that hold a structural byte (the eight-byte loop finds it exactly).
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
fn skip_plain_simd(json: &[u8], mut at: usize) -> usize {
    use core::arch::wasm32::{u8x16_eq, u8x16_splat, v128, v128_any_true, v128_load, v128_or};
    let quote = u8x16_splat(b'"');
    let open = u8x16_splat(b'{');
    let close = u8x16_splat(b'}');
    let bit = u8x16_splat(0x20);
    while let Some(chunk) = json.get(at..at + 16) {
        // SAFETY: `chunk` is sixteen readable bytes; `v128_load` has no alignment needs.
        let x = unsafe { v128_load(chunk.as_ptr().cast::<v128>()) };
        let folded = v128_or(x, bit);
        let hit = v128_or(
            u8x16_eq(x, quote),
            v128_or(u8x16_eq(folded, open), u8x16_eq(folded, close)),
        );
        if v128_any_true(hit) {
            break;
        }
        at += 16;
    }
    at
}

#[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
fn skip_plain_simd(_json: &[u8], at: usize) -> usize {
    at
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn text(v: Option<&[u8]>) -> Option<&str> {
        v.map(|v| std::str::from_utf8(v).unwrap())
    }

    #[test]
    fn finds_top_level_fields_and_skips_nested_ones() {
        let json = br#" { "id": "x\"usage\"", "data": [{"usage": {"a": 1}, "model": "inner"}, [1, -2.5e3, "]"]],
            "model" : "gpt-4.1-mini", "n": 12, "ok": true, "usage": {"prompt_tokens": 3, "d": {"x": [1]}} } "#;
        let [model, usage, n, ok, missing] =
            top_level_fields(json, ["model", "usage", "n", "ok", "missing"]);
        assert_eq!(text(model), Some(r#""gpt-4.1-mini""#));
        assert_eq!(
            text(usage),
            Some(r#"{"prompt_tokens": 3, "d": {"x": [1]}}"#)
        );
        assert_eq!(text(n), Some("12"));
        assert_eq!(text(ok), Some("true"));
        assert_eq!(missing, None);
    }

    #[test]
    fn a_repeated_name_gives_its_last_value_as_serde_does() {
        let json = br#"{"usage": {"a": 1}, "x": 0, "usage": {"a": 2}}"#;
        let [usage] = top_level_fields(json, ["usage"]);
        let serde: serde_json::Value = serde_json::from_slice(json).unwrap();
        assert_eq!(text(usage), Some(r#"{"a": 2}"#));
        assert_eq!(serde["usage"]["a"], 2);
    }

    #[test]
    fn not_an_object_or_cut_short() {
        assert_eq!(top_level_fields(b"[1,2]", ["a"]), [None]);
        assert_eq!(top_level_fields(b"", ["a"]), [None]);
        assert_eq!(top_level_fields(b"{}", ["a"]), [None]);
        // Fields before the cut are kept; the cut one is not.
        let [a, b] = top_level_fields(br#"{"a": 1, "b": [1, 2"#, ["a", "b"]);
        assert_eq!((text(a), b), (Some("1"), None));
        let [a] = top_level_fields(br#"{"a": "unterminated"#, ["a"]);
        assert_eq!(a, None);
        // A trailing backslash does not read past the end.
        assert_eq!(top_level_fields(br#"{"a": "x\"#, ["a"]), [None]);
    }

    #[test]
    fn structural_bytes_are_found_in_every_position_of_a_word() {
        for len in 0..20 {
            for byte in [b'"', b'[', b']', b'{', b'}'] {
                let mut json = vec![b'1'; len];
                json.push(byte);
                json.extend_from_slice(b"0000000000");
                assert_eq!(
                    next_structural(&json, 0),
                    Some(len),
                    "{len} {}",
                    byte as char
                );
            }
            // Bytes one bit away from them are not structural.
            let near: Vec<u8> = (0..len)
                .map(|i| [b'#', b'\'', b'K', b'M', b'Z', b'\\', b'^'][i % 7])
                .collect();
            assert_eq!(next_structural(&near, 0), None);
        }
    }

    /// JSON values with strings that hold quotes, brackets and backslashes.
    fn value() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            (-1e9f64..1e9).prop_map(serde_json::Value::from),
            "[a-z\"\\\\\\[\\]{}: ,é]{0,12}".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
                prop::collection::btree_map("[a-z\"]{0,6}", inner, 0..6)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// On any object serde_json writes (compact or pretty), each top-level field is
        /// found with exactly serde's value.
        #[test]
        fn agrees_with_serde_on_every_field(
            fields in prop::collection::btree_map("[a-z]{1,4}", value(), 0..8),
            pretty in any::<bool>(),
        ) {
            let object = serde_json::Value::Object(fields.clone().into_iter().collect());
            let json = if pretty {
                serde_json::to_vec_pretty(&object).unwrap()
            } else {
                serde_json::to_vec(&object).unwrap()
            };
            for (name, expected) in &fields {
                let [raw] = top_level_fields(&json, [name.as_str()]);
                let raw = raw.expect("a top-level field is found");
                let parsed: serde_json::Value = serde_json::from_slice(raw).unwrap();
                // Compared through serde's own text (its float parse is not a round trip).
                let reparsed: serde_json::Value =
                    serde_json::from_slice(&serde_json::to_vec(expected).unwrap()).unwrap();
                prop_assert_eq!(parsed, reparsed);
            }
            let [absent] = top_level_fields(&json, ["NOT-A-KEY"]);
            prop_assert_eq!(absent, None);
        }

        /// Arbitrary bytes: no panic, and every value found lies inside the input.
        #[test]
        fn never_panics_on_arbitrary_bytes(json in prop::collection::vec(
            prop_oneof![Just(b'"'), Just(b'\\'), Just(b'{'), Just(b'}'), Just(b'['), Just(b']'),
                        Just(b':'), Just(b','), Just(b'a'), any::<u8>()], 0..300)) {
            let mut input = b"{\"a\":".to_vec();
            input.extend_from_slice(&json);
            for found in top_level_fields(&input, ["a", "b"]).into_iter().flatten() {
                let start = found.as_ptr() as usize - input.as_ptr() as usize;
                prop_assert!(start + found.len() <= input.len());
            }
        }
    }
}
