//! Client directives: `x-weir-*` headers, or the same under a `weir` object in the body
//! for SDKs that cannot set headers. Header values win over body values.

use serde::Deserialize;

/// The directives a client may set. Anything else in a `weir` body object is refused:
/// identity, scopes, limits and routing belong to keys and policies, not to callers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Directives {
    pub request_id: Option<String>,
    pub user: Option<String>,
    pub run_id: Option<String>,
    pub tags: Vec<String>,
    pub policy: Option<String>,
}

pub const MAX_VALUE: usize = 128;
pub const MAX_TAGS: usize = 16;
pub const MAX_TAG: usize = 64;

/// An identifier-like directive value: printable ASCII without spaces, 1-128 characters.
/// (Values end up in headers, logs and metric labels.)
pub fn check_id(name: &str, value: &[u8]) -> Result<String, String> {
    let ok = !value.is_empty()
        && value.len() <= MAX_VALUE
        && value
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"._:-@/+=".contains(b));
    if ok {
        Ok(String::from_utf8_lossy(value).into_owned())
    } else {
        Err(format!(
            "The {name} directive must be 1 to {MAX_VALUE} characters of letters, digits and . _ : - @ / + ="
        ))
    }
}

/// `x-weir-tags: a,b,c` or `["a","b","c"]`: at most 16 tags of at most 64 characters.
pub fn check_tags<S: AsRef<[u8]>>(tags: &[S]) -> Result<Vec<String>, String> {
    if tags.len() > MAX_TAGS {
        return Err(format!("At most {MAX_TAGS} tags are allowed."));
    }
    tags.iter()
        .map(|t| t.as_ref())
        .map(|t| {
            let trimmed = trim_ascii(t);
            if trimmed.is_empty()
                || trimmed.len() > MAX_TAG
                || !trimmed
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || b"._:-=/".contains(b))
            {
                Err(format!(
                    "Each tag must be 1 to {MAX_TAG} characters of letters, digits and . _ : - = /"
                ))
            } else {
                Ok(String::from_utf8_lossy(trimmed).into_owned())
            }
        })
        .collect()
}

fn trim_ascii(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &b[start..end]
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BodyDirectives {
    #[serde(default)]
    request_id: Option<String>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    run_id: Option<String>,
    #[serde(default)]
    tags: Option<Vec<String>>,
    #[serde(default)]
    policy: Option<String>,
}

/// Reads the `weir` body object.
pub fn from_body(raw: &str) -> Result<Directives, String> {
    let parsed: BodyDirectives = serde_json::from_str(raw).map_err(|e| {
        let text = e.to_string();
        match text.strip_prefix("unknown field `") {
            Some(rest) => format!(
                "`weir.{}` is not a directive a client may set (allowed: request_id, user, run_id, tags, policy).",
                rest.split('`').next().unwrap_or("")
            ),
            None => "The `weir` object must be an object of string directives and a `tags` array of strings.".into(),
        }
    })?;
    let id = |name: &str, v: Option<String>| v.map(|v| check_id(name, v.as_bytes())).transpose();
    Ok(Directives {
        request_id: id("weir.request_id", parsed.request_id)?,
        user: id("weir.user", parsed.user)?,
        run_id: id("weir.run_id", parsed.run_id)?,
        tags: check_tags(&parsed.tags.unwrap_or_default())?,
        policy: id("weir.policy", parsed.policy)?,
    })
}

impl Directives {
    /// Fills what the headers left unset from the body object.
    pub fn merge_body(&mut self, body: Directives) {
        self.request_id = self.request_id.take().or(body.request_id);
        self.user = self.user.take().or(body.user);
        self.run_id = self.run_id.take().or(body.run_id);
        if self.tags.is_empty() {
            self.tags = body.tags;
        }
        self.policy = self.policy.take().or(body.policy);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert_eq!(check_id("x", b"user-42@acme").unwrap(), "user-42@acme");
        assert!(check_id("x", b"").is_err());
        assert!(check_id("x", b"a b").is_err());
        assert!(check_id("x", b"a\r\nInjected: 1").is_err());
        assert!(check_id("x", &[b'a'; 129]).is_err());
    }

    #[test]
    fn tags() {
        assert_eq!(check_tags(&["a", " b=c "]).unwrap(), vec!["a", "b=c"]);
        assert!(check_tags(&["a,b"]).is_err());
        assert!(check_tags(&vec!["t"; 17]).is_err());
        assert!(check_tags(&["x".repeat(65)]).is_err());
    }

    #[test]
    fn body_object() {
        let d = from_body(r#"{"user":"u1","run_id":"r1","tags":["a","b"],"policy":"support"}"#)
            .unwrap();
        assert_eq!(
            (d.user.as_deref(), d.run_id.as_deref(), d.policy.as_deref()),
            (Some("u1"), Some("r1"), Some("support"))
        );
        assert_eq!(d.tags, vec!["a", "b"]);
        let e = from_body(r#"{"team":"finance"}"#).unwrap_err();
        assert!(e.contains("`weir.team` is not a directive"), "{e}");
        assert!(from_body(r#"{"user": 5}"#).is_err());
        assert!(from_body(r#"[1]"#).is_err());
        assert!(from_body(r#"{"user": "a\nb"}"#).is_err());
    }

    #[test]
    fn headers_win() {
        let mut h = Directives {
            user: Some("header".into()),
            ..Default::default()
        };
        h.merge_body(from_body(r#"{"user":"body","run_id":"r","tags":["t"]}"#).unwrap());
        assert_eq!(
            (h.user.as_deref(), h.run_id.as_deref()),
            (Some("header"), Some("r"))
        );
        assert_eq!(h.tags, vec!["t"]);
    }
}
