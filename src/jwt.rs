//! Caller identity from a JWT that Envoy's `jwt_authn` filter has already verified and
//! forwarded (base64url payload in a header). Envoy does the cryptography; Weir only maps
//! claims to an identity, as configured.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::Value;

use crate::config::JwtConfig;
use crate::scopes::Scopes;

#[derive(Debug, Clone, PartialEq)]
pub struct JwtIdentity {
    /// `jwt:<subject>`: what audit records show in place of a key id.
    pub id: String,
    pub team: String,
    pub project: Option<String>,
    pub scopes: Scopes,
    /// The verified payload, for policies.
    pub claims: Value,
}

/// A claim by dotted path (`org.team`), as a string.
fn claim<'a>(payload: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(payload, |v, part| v.get(part))
}

fn claim_str(payload: &Value, path: &str) -> Option<String> {
    match claim(payload, path)? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Reads the identity from the forwarded payload header value.
pub fn identity(config: &JwtConfig, header_value: &[u8]) -> Result<JwtIdentity, String> {
    // jwt_authn forwards base64url without padding; tolerate padding anyway.
    let trimmed: Vec<u8> = header_value
        .iter()
        .copied()
        .filter(|b| *b != b'=')
        .collect();
    let json = URL_SAFE_NO_PAD
        .decode(trimmed)
        .map_err(|_| "the token payload is not base64url".to_string())?;
    let payload: Value =
        serde_json::from_slice(&json).map_err(|_| "the token payload is not JSON".to_string())?;
    let subject = claim_str(&payload, &config.subject_claim)
        .ok_or_else(|| format!("the token has no `{}` claim", config.subject_claim))?;
    let team = claim_str(&payload, &config.team_claim)
        .or_else(|| config.default_team.clone())
        .ok_or_else(|| format!("the token has no `{}` claim", config.team_claim))?;
    let project = config
        .project_claim
        .as_deref()
        .and_then(|c| claim_str(&payload, c));
    let scopes = match claim(&payload, &config.scopes_claim) {
        Some(Value::String(s)) => Scopes::parse_lenient(&s.split_whitespace().collect::<Vec<_>>()),
        Some(Value::Array(items)) => {
            Scopes::parse_lenient(&items.iter().filter_map(Value::as_str).collect::<Vec<_>>())
        }
        _ => Scopes::parse_lenient(&config.default_scopes),
    };
    let printable: String = subject
        .chars()
        .take(128)
        .map(|c| if c.is_ascii_graphic() { c } else { '_' })
        .collect();
    Ok(JwtIdentity {
        id: format!("jwt:{printable}"),
        team,
        project,
        scopes,
        claims: payload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::Endpoint;

    fn config() -> JwtConfig {
        serde_json::from_str(r#"{"payload_header": "x-jwt-payload", "team_claim": "org.team", "project_claim": "proj"}"#)
            .unwrap()
    }

    fn encode(v: serde_json::Value) -> Vec<u8> {
        URL_SAFE_NO_PAD.encode(v.to_string()).into_bytes()
    }

    #[test]
    fn maps_claims() {
        let id = identity(
            &config(),
            &encode(serde_json::json!({"sub": "alice", "org": {"team": "search"}, "proj": "p1", "scope": "openid chat model:fast"})),
        )
        .unwrap();
        assert_eq!(id.id, "jwt:alice");
        assert_eq!(id.team, "search");
        assert_eq!(id.project.as_deref(), Some("p1"));
        assert!(id.scopes.allows_endpoint(Endpoint::ChatCompletions));
        assert!(id.scopes.allows_model("fast") && !id.scopes.allows_model("best"));
    }

    #[test]
    fn scopes_as_array_and_padding() {
        let mut value =
            encode(serde_json::json!({"sub": "b", "org": {"team": "t"}, "scope": ["messages"]}));
        value.extend_from_slice(b"==");
        let id = identity(&config(), &value).unwrap();
        assert!(id.scopes.allows_endpoint(Endpoint::Messages));
    }

    #[test]
    fn errors() {
        assert!(identity(&config(), b"%%%")
            .unwrap_err()
            .contains("base64url"));
        assert!(
            identity(&config(), &URL_SAFE_NO_PAD.encode("nope").into_bytes())
                .unwrap_err()
                .contains("JSON")
        );
        let e = identity(&config(), &encode(serde_json::json!({"sub": "a"}))).unwrap_err();
        assert!(e.contains("`org.team`"), "{e}");
        let mut c = config();
        c.default_team = Some("everyone".into());
        assert_eq!(
            identity(&c, &encode(serde_json::json!({"sub": "a"})))
                .unwrap()
                .team,
            "everyone"
        );
    }
}
