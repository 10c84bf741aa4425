//! Token accounting in one provider-neutral shape.

use std::sync::LazyLock;

use memchr::arch::all::packedpair::HeuristicFrequencyRank;
use memchr::memmem;
use serde::Serialize;

/// Tokens of one response. `prompt_tokens` counts every input token, cached or not (as
/// OpenAI reports it); `cached_tokens` and `cache_write_tokens` say how many of those were
/// read from or written to the provider's prompt cache; `reasoning_tokens` are part of
/// `completion_tokens`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    pub cached_tokens: u64,
    pub cache_write_tokens: u64,
    pub reasoning_tokens: u64,
}

/// True when `data` has a top-level-looking `"usage": {` (not `"usage": null`), so that
/// stream chunks without usage are skipped without a JSON parse.
pub fn has_usage_object(data: &[u8]) -> bool {
    let mut from = 0;
    while let Some(pos) = data.get(from..).and_then(find_usage_key) {
        let after = &data[from + pos + USAGE_KEY.len()..];
        let mut rest = after.iter().skip_while(|b| b.is_ascii_whitespace());
        if rest.next() == Some(&b':') && rest.find(|b| !b.is_ascii_whitespace()) == Some(&b'{') {
            return true;
        }
        from += pos + USAGE_KEY.len();
    }
    false
}

/// The key every provider reports usage under, quoted as it appears in JSON.
pub const USAGE_KEY: &[u8] = b"\"usage\"";

/// Where [`USAGE_KEY`] first occurs in `haystack`. The searcher is built once (
/// `memmem::find` builds one per call), and told that in JSON a quote is no rare byte:
/// memchr's default ranks bytes as in prose, so its prefilter stopped at every string of a
/// stream event (with both, a streamed request's time in the filter fell by about half).
pub fn find_usage_key(haystack: &[u8]) -> Option<usize> {
    static FINDER: LazyLock<memmem::Finder<'static>> = LazyLock::new(|| {
        memmem::FinderBuilder::new().build_forward_with_ranker(JsonRank, USAGE_KEY)
    });
    FINDER.find(haystack)
}

/// How common the bytes of [`USAGE_KEY`] are in providers' JSON (higher: more common):
/// quotes most, then the letters in their order in English text, `g` least.
struct JsonRank;

impl HeuristicFrequencyRank for JsonRank {
    fn rank(&self, byte: u8) -> u8 {
        match byte {
            b'"' => 255,
            b'e' => 230,
            b'a' => 220,
            b's' => 210,
            b'u' => 180,
            b'g' => 120,
            _ => 128,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_object_detection() {
        assert!(has_usage_object(br#"{"usage": {"a":1}}"#));
        assert!(has_usage_object(br#"{"x":"usage","usage":{}}"#));
        assert!(!has_usage_object(br#"{"usage":null}"#));
        assert!(!has_usage_object(br#"{"usage" : null, "x": {}}"#));
        assert!(!has_usage_object(b""));
        assert!(has_usage_object(
            br#"{"usage":null,"more":1,"usage" :{"b":2}}"#
        ));
    }

    #[test]
    fn the_usage_key_is_found() {
        assert_eq!(find_usage_key(br#"{"usage":1}"#), Some(1));
        // Inside a string its quotes are escaped: not the key.
        assert_eq!(find_usage_key(br#"{"x":"\"usage\""}"#), None);
        assert_eq!(find_usage_key(br#"{"x":1,"usage":{}}"#), Some(7));
        assert_eq!(find_usage_key(b"usage"), None);
        assert_eq!(find_usage_key(b""), None);
    }
}
