//! Client keys: hashing, the per-VM hash index, and reading the key a client presented.
//!
//! Only SHA-256 hashes of secrets are configured. A lookup hashes the presented secret and
//! probes a hash map, so its cost does not depend on the number of keys. No constant-time
//! compare is needed: what is compared is a SHA-256 digest of the attacker's input, and
//! timing that reveals how many leading bytes of a *digest* matched does not help to find a
//! preimage (the attacker cannot steer digest bytes one at a time).

use std::collections::HashMap;

use sha2::{Digest, Sha256};

pub type KeyHash = [u8; 32];

/// What the filter knows about a key once it is found. Never holds the secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyEntry {
    pub id: String,
    pub team: String,
}

#[derive(Debug, Default)]
pub struct KeyIndex {
    by_hash: HashMap<KeyHash, KeyEntry>,
    ids: std::collections::HashSet<String>,
}

pub fn hash_secret(secret: &str) -> KeyHash {
    Sha256::digest(secret.as_bytes()).into()
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
            by_hash: HashMap::with_capacity(n),
            ids: std::collections::HashSet::with_capacity(n),
        }
    }

    pub fn insert(&mut self, hash: KeyHash, id: &str, team: &str) -> Result<(), String> {
        if !self.ids.insert(id.to_string()) {
            return Err(format!("duplicate key id {id:?}"));
        }
        if self.by_hash.contains_key(&hash) {
            return Err(format!("key {id:?} has the same hash as another key"));
        }
        self.by_hash.insert(
            hash,
            KeyEntry {
                id: id.to_string(),
                team: team.to_string(),
            },
        );
        Ok(())
    }

    pub fn lookup(&self, secret: &str) -> Option<&KeyEntry> {
        self.by_hash.get(&hash_secret(secret))
    }

    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
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

#[cfg(test)]
mod tests {
    use super::*;

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
        idx.insert(hash_secret("wk_a"), "a", "team-a").unwrap();
        assert_eq!(idx.lookup("wk_a").unwrap().id, "a");
        assert!(idx.lookup("wk_b").is_none());
        assert!(idx.insert(hash_secret("wk_c"), "a", "t").is_err());
        assert!(idx.insert(hash_secret("wk_a"), "z", "t").is_err());
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
