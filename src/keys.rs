//! Client keys: hashing, the per-VM hash index, lifecycle checks, and reading the key a
//! client presented.
//!
//! Only SHA-256 hashes of secrets are configured. A lookup hashes the presented secret and
//! probes a hash map, so its cost does not depend on the number of keys. No constant-time
//! compare is needed: what is compared is a SHA-256 digest of the caller's input, and
//! timing that reveals how many leading bytes of a *digest* matched does not help to find a
//! preimage (the caller cannot steer digest bytes one at a time).

use std::collections::BTreeMap;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::scopes::Scopes;

pub type KeyHash = [u8; 32];

/// The non-secret prefix of every secret `weir keys new` issues: visible in logs and easy
/// to grep for when a key leaks.
pub const SECRET_PREFIX: &str = "wk_live_";

/// What the filter knows about a key once it is found. Never holds the secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyEntry {
    pub id: String,
    pub team: String,
    pub project: Option<String>,
    /// Shared by the keys with the same scope list.
    pub scopes: Arc<Scopes>,
    /// Unix seconds after which the key no longer works, and the same as configured text.
    pub expires_at: Option<(u64, String)>,
    pub revoked: bool,
    /// Set on a rotated key: the id of the key that replaces it.
    pub successor: Option<String>,
    pub default_policy: Option<String>,
    pub metadata: BTreeMap<String, String>,
}

/// Why a known key is refused. Messages are for the key's own holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyProblem {
    Revoked,
    Expired {
        at: String,
    },
    /// Rotated, and the overlap window has ended.
    Superseded {
        at: String,
        successor: String,
    },
}

impl KeyProblem {
    pub fn code(&self) -> &'static str {
        match self {
            KeyProblem::Revoked => "key_revoked",
            KeyProblem::Expired { .. } => "key_expired",
            KeyProblem::Superseded { .. } => "key_rotated",
        }
    }

    pub fn message(&self) -> String {
        match self {
            KeyProblem::Revoked => "This API key has been revoked.".to_string(),
            KeyProblem::Expired { at } => format!("This API key expired at {at}."),
            KeyProblem::Superseded { at, successor } => format!(
                "This API key was rotated; its overlap window ended at {at}. Use its successor (key id {successor})."
            ),
        }
    }
}

impl KeyEntry {
    /// Whether the key works at `now` (Unix seconds).
    pub fn check(&self, now: u64) -> Result<(), KeyProblem> {
        if self.revoked {
            return Err(KeyProblem::Revoked);
        }
        match (&self.expires_at, &self.successor) {
            (Some((at, text)), Some(successor)) if now >= *at => Err(KeyProblem::Superseded {
                at: text.clone(),
                successor: successor.clone(),
            }),
            (Some((at, text)), None) if now >= *at => Err(KeyProblem::Expired { at: text.clone() }),
            _ => Ok(()),
        }
    }
}

#[derive(Debug, Default)]
pub struct KeyIndex {
    entries: Vec<KeyEntry>,
    by_hash: crate::ConfigMap<KeyHash, usize>,
}

pub fn hash_secret(secret: &str) -> KeyHash {
    sha256(secret.as_bytes())
}

/// SHA-256 of `bytes` (one instance of the hasher for every use in the module).
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

pub fn hash_secret_hex(secret: &str) -> String {
    hex::encode(hash_secret(secret))
}

/// Parses `sha256:<64 hex digits>` (the prefix is optional).
pub fn parse_key_hash(text: &str) -> Result<KeyHash, String> {
    let hex_part = text.strip_prefix("sha256:").unwrap_or(text);
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_part, &mut out)
        .map_err(|_| "must be \"sha256:\" followed by 64 hexadecimal digits".to_string())?;
    Ok(out)
}

impl KeyIndex {
    pub fn with_capacity(n: usize) -> Self {
        KeyIndex {
            entries: Vec::with_capacity(n),
            by_hash: crate::ConfigMap::with_capacity_and_hasher(n, Default::default()),
        }
    }

    /// Adds a key; ids must be unique (checked by the caller, which sees the whole list).
    pub fn insert(&mut self, hash: KeyHash, entry: KeyEntry) -> Result<(), String> {
        if self.by_hash.contains_key(&hash) {
            return Err(format!(
                "key {:?} has the same hash as another key",
                entry.id
            ));
        }
        self.by_hash.insert(hash, self.entries.len());
        self.entries.push(entry);
        Ok(())
    }

    /// The index of the key whose secret this is.
    pub fn lookup(&self, secret: &str) -> Option<usize> {
        self.by_hash.get(&hash_secret(secret)).copied()
    }

    pub fn get(&self, index: usize) -> Option<&KeyEntry> {
        self.entries.get(index)
    }

    /// Whether a key has this id (a scan: for checking configuration, not per request).
    pub fn contains_id(&self, id: &str) -> bool {
        self.entries.iter().any(|e| e.id == id)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The key a client presented, from `Authorization: Bearer <key>` or `x-api-key: <key>`.
#[derive(Debug, PartialEq, Eq)]
pub enum PresentedKey<'a> {
    Missing,
    /// A credential header is present but unusable (e.g. `Authorization: Basic ...`).
    Malformed,
    Key(&'a str),
}

/// `Authorization` wins when both are present: it is what OpenAI SDKs send, and the
/// Anthropic SDK sends only `x-api-key`.
pub fn presented_key<'a>(
    authorization: Option<&'a str>,
    x_api_key: Option<&'a str>,
) -> PresentedKey<'a> {
    if let Some(auth) = authorization {
        let auth = auth.trim();
        let Some((scheme, rest)) = auth.split_once(' ') else {
            return PresentedKey::Malformed;
        };
        if !scheme.eq_ignore_ascii_case("bearer") {
            return PresentedKey::Malformed;
        }
        let key = rest.trim();
        return if key.is_empty() {
            PresentedKey::Malformed
        } else {
            PresentedKey::Key(key)
        };
    }
    match x_api_key.map(str::trim) {
        Some("") => PresentedKey::Malformed,
        Some(key) => PresentedKey::Key(key),
        None => PresentedKey::Missing,
    }
}

/// Parses an RFC 3339 UTC time (`2026-12-31T23:59:59Z`) to Unix seconds.
pub fn parse_time(text: &str) -> Result<u64, String> {
    let t = humantime::parse_rfc3339_weak(text.trim_end_matches('Z')).map_err(|_| {
        format!("{text:?} is not an RFC 3339 UTC time such as 2026-12-31T23:59:59Z")
    })?;
    Ok(t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str) -> KeyEntry {
        KeyEntry {
            id: id.into(),
            team: "t".into(),
            project: None,
            scopes: Arc::new(Scopes::parse(&["*"]).unwrap()),
            expires_at: None,
            revoked: false,
            successor: None,
            default_policy: None,
            metadata: BTreeMap::new(),
        }
    }

    #[test]
    fn hash_is_sha256() {
        // echo -n abc | sha256sum
        assert_eq!(
            hash_secret_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn parse_hash_forms() {
        let h = hash_secret_hex("abc");
        assert_eq!(
            parse_key_hash(&format!("sha256:{h}")).unwrap(),
            hash_secret("abc")
        );
        assert_eq!(parse_key_hash(&h).unwrap(), hash_secret("abc"));
        assert!(parse_key_hash("sha256:xyz").is_err());
        assert!(parse_key_hash("").is_err());
    }

    #[test]
    fn lookup_by_secret() {
        let mut idx = KeyIndex::default();
        idx.insert(hash_secret("wk_a"), entry("a")).unwrap();
        let i = idx.lookup("wk_a").unwrap();
        assert_eq!(idx.get(i).unwrap().id, "a");
        assert!(idx.lookup("wk_b").is_none());
        assert!(idx.insert(hash_secret("wk_a"), entry("z")).is_err());
    }

    #[test]
    fn lifecycle() {
        let mut e = entry("a");
        assert!(e.check(100).is_ok());
        e.expires_at = Some((100, "T".into()));
        assert!(e.check(99).is_ok());
        assert_eq!(e.check(100), Err(KeyProblem::Expired { at: "T".into() }));
        e.successor = Some("b".into());
        assert!(e.check(99).is_ok());
        let problem = e.check(100).unwrap_err();
        assert_eq!(problem.code(), "key_rotated");
        assert!(problem.message().contains("key id b"));
        e.revoked = true;
        assert_eq!(e.check(0), Err(KeyProblem::Revoked));
    }

    #[test]
    fn times() {
        assert_eq!(parse_time("1970-01-01T00:01:00Z").unwrap(), 60);
        assert_eq!(parse_time("2026-11-22T08:00:00Z").unwrap(), 1_795_334_400);
        assert!(parse_time("tomorrow").is_err());
    }

    #[test]
    fn presented_key_forms() {
        assert_eq!(
            presented_key(Some("Bearer wk_1"), None),
            PresentedKey::Key("wk_1")
        );
        assert_eq!(
            presented_key(Some("bearer   wk_1 "), None),
            PresentedKey::Key("wk_1")
        );
        assert_eq!(presented_key(None, Some("wk_2")), PresentedKey::Key("wk_2"));
        assert_eq!(
            presented_key(Some("Bearer wk_1"), Some("wk_2")),
            PresentedKey::Key("wk_1")
        );
        assert_eq!(
            presented_key(Some("Basic abc"), None),
            PresentedKey::Malformed
        );
        assert_eq!(
            presented_key(Some("Bearer "), None),
            PresentedKey::Malformed
        );
        assert_eq!(presented_key(None, Some(" ")), PresentedKey::Malformed);
        assert_eq!(presented_key(None, None), PresentedKey::Missing);
    }
}
