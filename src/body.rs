//! Reading an LLM request body once, without building a DOM: the top-level object is scanned
//! with serde, the few fields Weir needs are kept as borrowed raw JSON with their byte
//! ranges, everything else is skipped. Rewrites are splices into the original bytes, so
//! fields Weir does not know pass through byte for byte.

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::json_top;

/// Why a body was refused. The message is shown to the client, so it never quotes the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyError {
    pub message: String,
    pub param: Option<&'static str>,
}

impl BodyError {
    fn new(message: impl Into<String>, param: Option<&'static str>) -> Self {
        BodyError {
            message: message.into(),
            param,
        }
    }
}

/// A top-level field: its raw JSON text and where that text sits in the body.
#[derive(Debug, Clone, Copy)]
pub struct RawField<'a> {
    pub raw: &'a RawValue,
    pub start: usize,
    /// Where the field's key (its opening quote) starts; `None` for a key written with
    /// escapes, whose position serde does not reveal.
    pub key_start: Option<usize>,
}

impl<'a> RawField<'a> {
    pub fn text(&self) -> &'a str {
        self.raw.get()
    }
    pub fn range(&self) -> Range<usize> {
        self.start..self.start + self.raw.get().len()
    }
}

/// Scans the top-level JSON object of `body` and returns the raw value of each name in
/// `wanted` (in the same order), or `None` where absent. A wanted name given twice is
/// refused: Weir and the provider must never read different values of the same field.
pub fn scan_object<'a, const N: usize>(
    body: &'a [u8],
    wanted: [&str; N],
) -> Result<[Option<RawField<'a>>; N], BodyError> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    match first {
        None => {
            return Err(BodyError::new(
                "The request body is empty; a JSON object is required.",
                None,
            ))
        }
        Some(b'{') => {}
        Some(_) => {
            // Still tell "not JSON" from "JSON but not an object".
            return Err(if serde_json::from_slice::<IgnoredAny>(body).is_ok() {
                BodyError::new("The request body must be a JSON object.", None)
            } else {
                BodyError::new("The request body is not valid JSON.", None)
            });
        }
    }
    // serde_json does not check the UTF-8 of strings it skips; the provider must never get
    // bytes Weir could not read. Checked once here, so serde reads a `str` and does not
    // check the wanted fields' raw values again.
    let Ok(text) = simdutf8::basic::from_utf8(body) else {
        return Err(BodyError::new("The request body is not valid UTF-8.", None));
    };
    check_depth(body, MAX_DEPTH)?;
    let mut de = serde_json::Deserializer::from_str(text);
    let found = ScanSeed { wanted: &wanted }
        .deserialize(&mut de)
        .and_then(|found| de.end().map(|_| found))
        .map_err(|e| {
            let text = e.to_string();
            if let Some(rest) = text.strip_prefix("duplicate field `") {
                let field = rest.split('`').next().unwrap_or("");
                BodyError::new(
                    format!("The request body gives the field `{field}` more than once."),
                    None,
                )
            } else if e.is_syntax() || e.is_eof() {
                BodyError::new(format!("The request body is not valid JSON ({}).", e), None)
            } else {
                BodyError::new(format!("The request body could not be read ({}).", e), None)
            }
        })?;
    let base = body.as_ptr() as usize;
    let mut out = [None; N];
    for (slot, raw) in out.iter_mut().zip(found) {
        *slot = raw.map(|(raw, key): (&'a RawValue, Option<&'a str>)| RawField {
            raw,
            // The raw value and a borrowed key point into `body`, so these lie inside it.
            start: raw.get().as_ptr() as usize - base,
            // The key's text starts one byte after its opening quote.
            key_start: key.map(|k| k.as_ptr() as usize - base - 1),
        });
    }
    Ok(out)
}

/// Deepest nesting accepted. Real requests (messages, tool schemas) stay far below; a
/// deeper body is refused rather than handed to a provider's parser.
pub const MAX_DEPTH: usize = 128;

/// Refuses bodies nested deeper than `limit`. serde_json skips ignored values without a
/// depth limit, so this one pass over the bytes (strings respected) enforces it. Only
/// quotes and brackets matter, so it jumps from one to the next (`json_top`: strings with
/// `memchr2`, the rest sixteen bytes a step): most of a large body is strings (prompts,
/// base64 images) or numbers (token arrays), and a byte-at-a-time loop cost ~1 ns a byte.
fn check_depth(body: &[u8], limit: usize) -> Result<(), BodyError> {
    let mut depth = 0usize;
    let mut at = 0;
    while let Some(next) = json_top::next_structural(body, at) {
        at = next + 1;
        match body.get(next) {
            Some(b'"') => match json_top::string_end(body, at) {
                Some(end) => at = end + 1,
                // An unterminated string: serde reports the body as invalid.
                None => return Ok(()),
            },
            Some(b'{' | b'[') => {
                depth += 1;
                if depth > limit {
                    return Err(BodyError::new(
                        format!("The request body is nested deeper than {limit} levels."),
                        None,
                    ));
                }
            }
            _ => depth = depth.saturating_sub(1),
        }
    }
    Ok(())
}

struct ScanSeed<'w, const N: usize> {
    wanted: &'w [&'w str; N],
}

impl<'de, const N: usize> DeserializeSeed<'de> for ScanSeed<'_, N> {
    type Value = [Option<(&'de RawValue, Option<&'de str>)>; N];

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de, const N: usize> Visitor<'de> for ScanSeed<'_, N> {
    type Value = [Option<(&'de RawValue, Option<&'de str>)>; N];

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = [None; N];
        while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
            match self.wanted.iter().position(|w| *w == key) {
                Some(i) => {
                    if found[i].is_some() {
                        return Err(de::Error::custom(format_args!("duplicate field `{key}`")));
                    }
                    let borrowed = match key {
                        Cow::Borrowed(k) => Some(k),
                        Cow::Owned(_) => None,
                    };
                    found[i] = Some((map.next_value::<&'de RawValue>()?, borrowed));
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(found)
    }
}

/// An object key, borrowed when it has no escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> de::Deserialize<'de> for Key<'de> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v.to_string())))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

/// The fields every LLM request shape shares and Weir needs to route it.
#[derive(Debug, Clone)]
pub struct LlmRequest<'a> {
    pub model: String,
    pub model_field: RawField<'a>,
    pub stream: bool,
    /// `stream_options` (OpenAI), when present.
    pub stream_options: Option<RawField<'a>>,
    /// Weir's own directives object, removed before the body goes upstream.
    pub weir: Option<RawField<'a>>,
    pub max_tokens: Option<RawField<'a>>,
    pub max_completion_tokens: Option<RawField<'a>>,
    pub temperature: Option<RawField<'a>>,
    pub messages: Option<RawField<'a>>,
    pub tools: Option<RawField<'a>>,
    /// Anthropic's system prompt.
    pub system: Option<RawField<'a>>,
    /// Byte offset of the opening `{` of the top-level object.
    pub object_start: usize,
}

pub const MAX_MODEL_LEN: usize = 256;

/// Reads `model`, `stream` and `stream_options` from a request body.
pub fn parse_llm_request(body: &[u8]) -> Result<LlmRequest<'_>, BodyError> {
    let [model, stream, stream_options, weir, max_tokens, max_completion_tokens, temperature, messages, tools, system] =
        scan_object(
            body,
            [
                "model",
                "stream",
                "stream_options",
                "weir",
                "max_tokens",
                "max_completion_tokens",
                "temperature",
                "messages",
                "tools",
                "system",
            ],
        )?;
    let model_field = model
        .ok_or_else(|| BodyError::new("You must provide a model parameter.", Some("model")))?;
    let model: String = serde_json::from_str(model_field.text())
        .map_err(|_| BodyError::new("The model parameter must be a string.", Some("model")))?;
    if model.is_empty() || model.len() > MAX_MODEL_LEN {
        return Err(BodyError::new(
            format!("The model parameter must be 1 to {MAX_MODEL_LEN} characters long."),
            Some("model"),
        ));
    }
    let stream = match stream.map(|f| f.text()) {
        None | Some("null") | Some("false") => false,
        Some("true") => true,
        Some(_) => {
            return Err(BodyError::new(
                "The stream parameter must be a boolean.",
                Some("stream"),
            ))
        }
    };
    // Fields Weir reads must mean the same to Weir and to the provider.
    for (name, field) in [
        ("max_tokens", &max_tokens),
        ("max_completion_tokens", &max_completion_tokens),
    ] {
        if let Some(f) = field {
            let ok = matches!(f.text(), "null") || f.text().parse::<u32>().is_ok_and(|n| n > 0);
            if !ok {
                return Err(BodyError::new(
                    format!("The {name} parameter must be a positive integer."),
                    Some(name),
                ));
            }
        }
    }
    if let Some(f) = &temperature {
        let ok = f.text() == "null" || f.text().parse::<f64>().is_ok_and(|t| t.is_finite());
        if !ok {
            return Err(BodyError::new(
                "The temperature parameter must be a number.",
                Some("temperature"),
            ));
        }
    }
    let object_start = body.iter().position(|b| *b == b'{').unwrap_or(0);
    Ok(LlmRequest {
        model,
        model_field,
        stream,
        stream_options,
        weir,
        max_tokens,
        max_completion_tokens,
        temperature,
        messages,
        tools,
        system,
        object_start,
    })
}

/// The request's essentials for policies, read only when a policy applies.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Essentials {
    pub max_tokens: Option<u64>,
    pub temperature: Option<f64>,
    pub message_count: usize,
    /// Characters of text in messages and system prompt.
    pub input_chars: usize,
    pub tools: Vec<String>,
    /// (role, text) per message (the system prompt first), when asked for.
    pub messages: Option<Vec<(String, String)>>,
}

#[derive(serde::Deserialize)]
struct Message {
    #[serde(default)]
    role: String,
    #[serde(default)]
    content: serde_json::Value,
}

#[derive(serde::Deserialize)]
struct Tool {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    function: Option<ToolFunction>,
}

#[derive(serde::Deserialize)]
struct ToolFunction {
    #[serde(default)]
    name: Option<String>,
}

/// Text of a `content` (a string, or parts with `text`) or system prompt.
fn text_of(content: &serde_json::Value) -> String {
    match content {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(|t| t.as_str()))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

impl LlmRequest<'_> {
    /// Reads messages, tools and sampling parameters. Malformed ones are the provider's
    /// to reject; they simply count as absent here.
    pub fn essentials(&self, with_text: bool) -> Essentials {
        let value = |f: &Option<RawField<'_>>| {
            f.as_ref()
                .and_then(|f| serde_json::from_str::<serde_json::Value>(f.text()).ok())
        };
        let messages: Vec<Message> = self
            .messages
            .as_ref()
            .and_then(|f| serde_json::from_str(f.text()).ok())
            .unwrap_or_default();
        let system = value(&self.system).map(|v| text_of(&v)).unwrap_or_default();
        let mut texts: Vec<(String, String)> = messages
            .into_iter()
            .map(|m| (m.role, text_of(&m.content)))
            .collect();
        let message_count = texts.len();
        if !system.is_empty() {
            texts.insert(0, ("system".to_string(), system));
        }
        let tools: Vec<Tool> = self
            .tools
            .as_ref()
            .and_then(|f| serde_json::from_str(f.text()).ok())
            .unwrap_or_default();
        Essentials {
            max_tokens: value(&self.max_completion_tokens)
                .or_else(|| value(&self.max_tokens))
                .and_then(|v| v.as_u64()),
            temperature: value(&self.temperature).and_then(|v| v.as_f64()),
            message_count,
            input_chars: texts.iter().map(|(_, t)| t.chars().count()).sum(),
            tools: tools
                .into_iter()
                .filter_map(|t| t.name.or(t.function.and_then(|f| f.name)))
                .collect(),
            messages: with_text.then_some(texts),
        }
    }

    /// Caps the output tokens at `cap`: lowers the field the client used, or adds one
    /// (`max_completion_tokens` for OpenAI, `max_tokens` for Anthropic). `None` when the
    /// request already asks for no more than `cap`.
    pub fn cap_max_tokens(&self, cap: u64, openai: bool) -> Option<Edit> {
        let field = if openai {
            self.max_completion_tokens
                .as_ref()
                .or(self.max_tokens.as_ref())
        } else {
            self.max_tokens.as_ref()
        };
        match field {
            Some(f) => {
                let current = serde_json::from_str::<serde_json::Value>(f.text())
                    .ok()
                    .and_then(|v| v.as_u64());
                if current.is_some_and(|c| c <= cap) {
                    return None;
                }
                Some(Edit {
                    range: f.range(),
                    with: cap.to_string().into_bytes(),
                })
            }
            None => {
                let name = if openai {
                    "max_completion_tokens"
                } else {
                    "max_tokens"
                };
                let at = self.object_start + 1;
                Some(Edit {
                    range: at..at,
                    with: format!("\"{name}\":{cap},").into_bytes(),
                })
            }
        }
    }
}

/// The edit that removes a whole top-level member (key, value and one adjacent comma).
/// `None` when the key was written with escapes and its position is unknown.
pub fn remove_member(body: &[u8], field: &RawField<'_>) -> Option<Edit> {
    let key_start = field.key_start?;
    Some(Edit {
        range: member_range(body, key_start, field.range().end),
        with: Vec::new(),
    })
}

/// The bytes to cut to remove the object member spanning `key_start..value_end`: the
/// member and the comma after it, or for the last member the comma before it.
pub fn member_range(bytes: &[u8], key_start: usize, value_end: usize) -> Range<usize> {
    let is_ws = |b: &u8| b.is_ascii_whitespace();
    let after = value_end + bytes[value_end..].iter().take_while(|b| is_ws(b)).count();
    if bytes.get(after) == Some(&b',') {
        return key_start..after + 1;
    }
    let before = key_start
        - bytes[..key_start]
            .iter()
            .rev()
            .take_while(|b| is_ws(b))
            .count();
    if before > 0 && bytes[before - 1] == b',' {
        return before - 1..value_end;
    }
    key_start..value_end
}

/// One replacement of `range` in the original body by `with`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edit {
    pub range: Range<usize>,
    pub with: Vec<u8>,
}

/// Applies non-overlapping edits to `body` in one pass, into one new buffer.
pub fn splice(body: &[u8], edits: &mut [Edit]) -> Vec<u8> {
    edits.sort_by_key(|e| e.range.start);
    let added: usize = edits.iter().map(|e| e.with.len()).sum();
    let mut out = Vec::with_capacity(body.len() + added);
    let mut at = 0;
    for e in edits.iter() {
        let start = e.range.start.clamp(at, body.len());
        let end = e.range.end.clamp(start, body.len());
        out.extend_from_slice(&body[at..start]);
        out.extend_from_slice(&e.with);
        at = end;
    }
    out.extend_from_slice(&body[at..]);
    out
}

/// JSON string literal for `s`.
pub fn json_string(s: &str) -> Vec<u8> {
    // Serialising a &str cannot fail; fall back to an empty literal rather than panic.
    serde_json::to_vec(s).unwrap_or_else(|_| b"\"\"".to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reads_fields_and_ranges() {
        let body = br#" {"messages":[{"role":"user","content":"hi"}], "model" : "balanced", "stream":true}"#;
        let req = parse_llm_request(body).unwrap();
        assert_eq!(req.model, "balanced");
        assert!(req.stream);
        assert_eq!(&body[req.model_field.range()], br#""balanced""#);
        assert_eq!(req.object_start, 1);
    }

    #[test]
    fn escaped_model_and_keys() {
        let body = br#"{"mod\u0065l":"bal\u0061nced"}"#;
        let req = parse_llm_request(body).unwrap();
        assert_eq!(req.model, "balanced");
    }

    #[test]
    fn duplicate_model_is_refused() {
        let e = parse_llm_request(br#"{"model":"fast","model":"best"}"#).unwrap_err();
        assert!(
            e.message.contains("`model` more than once"),
            "{}",
            e.message
        );
    }

    #[test]
    fn errors() {
        assert!(parse_llm_request(b"")
            .unwrap_err()
            .message
            .contains("empty"));
        assert!(parse_llm_request(b"not json")
            .unwrap_err()
            .message
            .contains("not valid JSON"));
        assert!(parse_llm_request(b"[1,2]")
            .unwrap_err()
            .message
            .contains("JSON object"));
        assert!(parse_llm_request(br#"{"model":"a""#)
            .unwrap_err()
            .message
            .contains("not valid JSON"));
        assert!(parse_llm_request(br#"{"model":"a"} x"#)
            .unwrap_err()
            .message
            .contains("not valid JSON"));
        let e = parse_llm_request(br#"{"messages":[]}"#).unwrap_err();
        assert_eq!(e.param, Some("model"));
        let e = parse_llm_request(br#"{"model":5}"#).unwrap_err();
        assert!(e.message.contains("must be a string"));
        let e = parse_llm_request(br#"{"model":""}"#).unwrap_err();
        assert_eq!(e.param, Some("model"));
        let e = parse_llm_request(br#"{"model":"a","stream":"yes"}"#).unwrap_err();
        assert_eq!(e.param, Some("stream"));
    }

    #[test]
    fn invalid_utf8_anywhere_is_refused() {
        let mut body = br#"{"model":"fast","messages":[{"role":"user","content":"ab"}]}"#.to_vec();
        let at = body.iter().position(|b| *b == b'a').unwrap();
        body[at] = 0xff;
        assert!(parse_llm_request(&body)
            .unwrap_err()
            .message
            .contains("UTF-8"));
    }

    #[test]
    fn numbers_weir_reads_are_checked() {
        for (body, param) in [
            (r#"{"model":"m","max_tokens":1e400}"#, "max_tokens"),
            (
                r#"{"model":"m","max_tokens":99999999999999999999999}"#,
                "max_tokens",
            ),
            (r#"{"model":"m","max_tokens":-5}"#, "max_tokens"),
            (r#"{"model":"m","max_tokens":0}"#, "max_tokens"),
            (
                r#"{"model":"m","max_completion_tokens":"10"}"#,
                "max_completion_tokens",
            ),
            (r#"{"model":"m","temperature":1e999}"#, "temperature"),
            (r#"{"model":"m","temperature":"hot"}"#, "temperature"),
        ] {
            assert_eq!(
                parse_llm_request(body.as_bytes()).unwrap_err().param,
                Some(param),
                "{body}"
            );
        }
        assert!(parse_llm_request(
            br#"{"model":"m","max_tokens":100,"temperature":0.7,"x":1e999}"#
        )
        .is_ok());
    }

    /// The byte-at-a-time depth check `check_depth` replaced: the reference it must agree with.
    fn depth_exceeds_bytewise(body: &[u8], limit: usize) -> bool {
        let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
        for &b in body {
            if in_string {
                if escaped {
                    escaped = false;
                } else if b == b'\\' {
                    escaped = true;
                } else if b == b'"' {
                    in_string = false;
                }
                continue;
            }
            match b {
                b'"' => in_string = true,
                b'{' | b'[' => {
                    depth += 1;
                    if depth > limit {
                        return true;
                    }
                }
                b'}' | b']' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
        false
    }

    proptest! {
        /// Over bytes rich in quotes, backslashes and brackets (escapes at the very end,
        /// unterminated strings), the jumping check and the byte-wise one agree.
        #[test]
        fn depth_check_agrees_with_the_bytewise_reference(
            body in proptest::collection::vec(
                prop_oneof![
                    Just(b'"'), Just(b'\\'), Just(b'['), Just(b']'), Just(b'{'), Just(b'}'), Just(b'a'), any::<u8>()
                ],
                0..200,
            ),
            limit in 0usize..6,
        ) {
            prop_assert_eq!(check_depth(&body, limit).is_err(), depth_exceeds_bytewise(&body, limit));
        }
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let mut body = br#"{"model":"a","x":"#.to_vec();
        body.extend(std::iter::repeat_n(b'[', 100_000));
        body.extend(std::iter::repeat_n(b']', 100_000));
        body.push(b'}');
        let e = parse_llm_request(&body).unwrap_err();
        assert!(e.message.contains("nested deeper"), "{}", e.message);
        // Brackets inside strings do not count.
        let ok = format!(r#"{{"model":"a","x":"{}"}}"#, "[".repeat(1000));
        assert!(parse_llm_request(ok.as_bytes()).is_ok());
        let nested = format!(
            r#"{{"model":"a","x":{}1{}}}"#,
            "[".repeat(100),
            "]".repeat(100)
        );
        assert!(parse_llm_request(nested.as_bytes()).is_ok());
    }

    #[test]
    fn splice_replaces_in_place() {
        let body = br#"{"model":"balanced","x":1}"#;
        let req = parse_llm_request(body).unwrap();
        let mut edits = [Edit {
            range: req.model_field.range(),
            with: json_string("gpt-4o-mini"),
        }];
        assert_eq!(
            splice(body, &mut edits),
            br#"{"model":"gpt-4o-mini","x":1}"#.to_vec()
        );
    }

    #[test]
    fn essentials_and_caps() {
        let body = br#"{"model":"m","max_tokens":900,"temperature":0.5,"system":"Be brief",
            "messages":[{"role":"user","content":"hello there"},{"role":"assistant","content":[{"type":"text","text":"hi"}]}],
            "tools":[{"type":"function","function":{"name":"lookup"}},{"name":"search"}]}"#;
        let req = parse_llm_request(body).unwrap();
        let e = req.essentials(true);
        assert_eq!(
            (e.max_tokens, e.temperature, e.message_count),
            (Some(900), Some(0.5), 2)
        );
        assert_eq!(e.input_chars, "Be brief".len() + "hello there".len() + 2);
        assert_eq!(e.tools, vec!["lookup", "search"]);
        assert_eq!(
            e.messages.unwrap()[1],
            ("user".to_string(), "hello there".to_string())
        );
        assert!(req.essentials(false).messages.is_none());

        let capped = splice(body, &mut [req.cap_max_tokens(256, true).unwrap()]);
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&capped).unwrap()["max_tokens"],
            256
        );
        assert!(req.cap_max_tokens(1000, true).is_none());
        let bare = br#"{"model":"m"}"#;
        let req = parse_llm_request(bare).unwrap();
        let out = splice(bare, &mut [req.cap_max_tokens(64, true).unwrap()]);
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&out).unwrap()["max_completion_tokens"],
            64
        );
        let out = splice(bare, &mut [req.cap_max_tokens(64, false).unwrap()]);
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&out).unwrap()["max_tokens"],
            64
        );
    }

    #[test]
    fn removes_members_wherever_they_are() {
        for (body, expected) in [
            (r#"{"weir":{"user":"u"},"model":"a"}"#, r#"{"model":"a"}"#),
            (
                r#"{"model":"a", "weir" : {"user":"u"} }"#,
                r#"{"model":"a" }"#,
            ),
            (r#"{"model":"a","weir":{},"x":1}"#, r#"{"model":"a","x":1}"#),
            (r#"{"weir":{}}"#, r#"{}"#),
        ] {
            let [weir] = scan_object(body.as_bytes(), ["weir"]).unwrap();
            let edit = remove_member(body.as_bytes(), &weir.unwrap()).unwrap();
            let out = splice(body.as_bytes(), &mut [edit]);
            assert_eq!(String::from_utf8(out).unwrap(), expected);
        }
        let body = br#"{"w\u0065ir":{}}"#;
        let [weir] = scan_object(body, ["weir"]).unwrap();
        assert!(remove_member(body, &weir.unwrap()).is_none());
    }

    #[test]
    fn splice_multiple_out_of_order() {
        let mut edits = [
            Edit {
                range: 5..6,
                with: b"Z".to_vec(),
            },
            Edit {
                range: 1..1,
                with: b"+".to_vec(),
            },
        ];
        assert_eq!(splice(b"abcdefg", &mut edits), b"a+bcdeZg".to_vec());
    }
}
