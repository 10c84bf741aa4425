//! Token accounting in one provider-neutral shape.

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
    let needle = b"\"usage\"";
    let mut from = 0;
    while let Some(pos) = find(&data[from..], needle) {
        let after = &data[from + pos + needle.len()..];
        let mut rest = after.iter().skip_while(|b| b.is_ascii_whitespace());
        if rest.next() == Some(&b':') && rest.find(|b| !b.is_ascii_whitespace()) == Some(&b'{') {
            return true;
        }
        from += pos + needle.len();
    }
    false
}

pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return None;
    }
    memchr::memmem::find(haystack, needle)
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
    }
}
