//! Scopes: what a key may call. Endpoint scopes name an API surface (`chat`, `messages`,
//! `models`, ...); model scopes (`model:GLOB`) name the tiers and models it may use; policy
//! scopes (`policy:GLOB`) name the policies it may choose with `x-weir-policy`; `*` grants
//! everything.

use crate::endpoint::Endpoint;

/// Endpoint scope names Weir knows. Unknown names are refused when the configuration is
/// compiled, so a typo cannot silently grant or withhold access.
pub const ENDPOINT_SCOPES: [&str; 8] = [
    "chat",
    "messages",
    "models",
    "advice",
    "embeddings",
    "completions",
    "responses",
    "passthrough",
];

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scopes {
    all: bool,
    endpoints: Vec<&'static str>,
    models: Vec<String>,
    policies: Vec<String>,
    /// As configured, for the policy input.
    raw: Vec<String>,
}

impl Scopes {
    /// Parses scope strings; the error names the offending one.
    pub fn parse<S: AsRef<str>>(scopes: &[S]) -> Result<Scopes, String> {
        let mut out = Scopes::default();
        for scope in scopes {
            let scope = scope.as_ref().trim();
            if scope == "*" {
                out.all = true;
            } else if let Some(glob) = scope.strip_prefix("model:") {
                check_pattern(scope, "model", glob)?;
                out.models.push(glob.to_string());
            } else if let Some(glob) = scope.strip_prefix("policy:") {
                check_pattern(scope, "policy", glob)?;
                out.policies.push(glob.to_string());
            } else if let Some(known) = ENDPOINT_SCOPES.iter().find(|s| **s == scope) {
                out.endpoints.push(known);
            } else {
                return Err(format!(
                    "unknown scope {scope:?}: use \"*\", \"model:<pattern>\", \"policy:<pattern>\" or one of {}",
                    ENDPOINT_SCOPES.join(", ")
                ));
            }
            out.raw.push(scope.to_string());
        }
        Ok(out)
    }

    pub fn as_strings(&self) -> &[String] {
        &self.raw
    }

    /// Scopes from a JWT claim: unknown names are ignored (an identity provider may carry
    /// scopes meant for other services), never an error.
    pub fn parse_lenient<S: AsRef<str>>(scopes: &[S]) -> Scopes {
        let known: Vec<&str> = scopes
            .iter()
            .map(|s| s.as_ref())
            .filter(|s| Scopes::parse(&[*s]).is_ok())
            .collect();
        Scopes::parse(&known).unwrap_or_default()
    }

    pub fn allows_endpoint(&self, endpoint: Endpoint) -> bool {
        self.all || self.endpoints.contains(&endpoint.scope())
    }

    pub fn allows_model(&self, model: &str) -> bool {
        self.all || self.models.iter().any(|glob| glob_match(glob, model))
    }

    /// Whether the caller may choose policy `name` itself (`x-weir-policy`, `weir.policy`).
    /// The policy that applies without a choice needs no scope: naming it changes nothing.
    pub fn allows_policy(&self, name: &str) -> bool {
        self.all || self.policies.iter().any(|glob| glob_match(glob, name))
    }
}

fn check_pattern(scope: &str, what: &str, glob: &str) -> Result<(), String> {
    if glob.is_empty() || glob.len() > 256 || glob.chars().any(|c| c.is_control() || c == ' ') {
        return Err(format!(
            "scope {scope:?}: the {what} pattern must be 1-256 characters without spaces"
        ));
    }
    Ok(())
}

/// `*` matches any run of characters, `?` one character; everything else literally.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    // Most scopes are `*` or a plain name: no matching loop for those.
    if pattern == "*" {
        return true;
    }
    if !pattern.contains(['*', '?']) {
        return pattern == text;
    }
    // Greedy matching with one backtrack point, on bytes (no per-call allocation): a literal
    // character matches its UTF-8 bytes one by one, `?` takes one whole character, and a
    // backtrack moves the star's match on by a whole character.
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some(b'?') => {
                pi += 1;
                ti = next_char(text, ti);
            }
            Some(b'*') => {
                star = Some((pi, ti));
                pi += 1;
            }
            Some(c) if t.get(ti) == Some(c) => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    let next = next_char(text, st);
                    pi = sp + 1;
                    ti = next;
                    star = Some((sp, next));
                }
                None => return false,
            },
        }
    }
    p.get(pi..).unwrap_or_default().iter().all(|c| *c == b'*')
}

/// The byte index of the character after the one starting at `at` (`at` is a character
/// boundary of `text`, below its length).
fn next_char(text: &str, at: usize) -> usize {
    let width = text
        .as_bytes()
        .get(at)
        .map_or(1, |b| match b.leading_ones() {
            0 => 1,
            n => n as usize,
        });
    at + width
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The matcher by characters: the implementation before the byte-wise one, except that
    /// a `*` in the pattern is always a wildcard (it matched a `*` in the text literally
    /// first, so `a*` did not match `a*b`).
    fn glob_by_chars(pattern: &str, text: &str) -> bool {
        let p: Vec<char> = pattern.chars().collect();
        let t: Vec<char> = text.chars().collect();
        let (mut pi, mut ti) = (0, 0);
        let mut star: Option<(usize, usize)> = None;
        while ti < t.len() {
            if pi < p.len() && p[pi] == '*' {
                star = Some((pi, ti));
                pi += 1;
            } else if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
                pi += 1;
                ti += 1;
            } else if let Some((sp, st)) = star {
                pi = sp + 1;
                ti = st + 1;
                star = Some((sp, st + 1));
            } else {
                return false;
            }
        }
        p[pi..].iter().all(|c| *c == '*')
    }

    proptest! {
        /// Byte-wise matching agrees with matching by characters, multi-byte ones included.
        #[test]
        fn glob_matches_as_by_characters(
            pattern in "[ab*?é😀]{0,8}",
            text in "[ab*?é😀]{0,10}",
        ) {
            prop_assert_eq!(glob_match(&pattern, &text), glob_by_chars(&pattern, &text));
        }
    }

    #[test]
    fn globs() {
        assert!(glob_match("*", "anything"));
        assert!(glob_match("gpt-4o*", "gpt-4o-mini"));
        assert!(glob_match("openai/*", "openai/gpt-4o"));
        assert!(!glob_match("gpt-4o*", "gpt-4.1"));
        assert!(glob_match("b?st", "best"));
        assert!(glob_match("*-mini", "gpt-4.1-mini"));
        assert!(glob_match("a*b*c", "aXXbYYc"));
        assert!(!glob_match("a*b*c", "aXXbYY"));
        assert!(glob_match("", ""));
        assert!(!glob_match("", "x"));
        assert!(glob_match("a*", "a*b") && glob_match("a?", "a*"));
        assert!(glob_match("?", "é") && !glob_match("??", "é"));
    }

    #[test]
    fn parse_and_check() {
        let s = Scopes::parse(&["chat", "model:balanced", "model:gpt-4o*"]).unwrap();
        assert!(s.allows_endpoint(Endpoint::ChatCompletions));
        assert!(!s.allows_endpoint(Endpoint::Messages));
        assert!(s.allows_model("balanced") && s.allows_model("gpt-4o-mini"));
        assert!(!s.allows_model("best"));
        let all = Scopes::parse(&["*"]).unwrap();
        assert!(all.allows_endpoint(Endpoint::Models) && all.allows_model("x"));
        assert!(Scopes::parse(&["chats"])
            .unwrap_err()
            .contains("unknown scope \"chats\""));
        assert!(Scopes::parse(&["model:"]).is_err());
        let none = Scopes::parse::<&str>(&[]).unwrap();
        assert!(!none.allows_endpoint(Endpoint::ChatCompletions) && !none.allows_model("x"));
        assert!(!none.allows_policy("x"));
    }

    #[test]
    fn policy_scopes() {
        let s = Scopes::parse(&["chat", "policy:dlp", "policy:team-*"]).unwrap();
        assert!(s.allows_policy("dlp") && s.allows_policy("team-web"));
        assert!(!s.allows_policy("standard") && !s.allows_policy("dlp2"));
        // A model scope grants no policy, and a policy scope no model.
        let m = Scopes::parse(&["model:*"]).unwrap();
        assert!(!m.allows_policy("dlp"));
        assert!(!s.allows_model("dlp"));
        assert!(Scopes::parse(&["*"]).unwrap().allows_policy("anything"));
        assert!(Scopes::parse(&["policy:"])
            .unwrap_err()
            .contains("policy pattern"));
        assert!(Scopes::parse(&["policy:a b"]).is_err());
        assert_eq!(
            Scopes::parse_lenient(&["policy:dlp", "openid"]).as_strings(),
            ["policy:dlp"]
        );
    }

    #[test]
    fn lenient_ignores_foreign_scopes() {
        let s = Scopes::parse_lenient(&["openid", "chat", "model:fast", "email"]);
        assert!(s.allows_endpoint(Endpoint::ChatCompletions) && s.allows_model("fast"));
    }
}
