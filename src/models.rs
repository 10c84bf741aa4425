//! `GET /v1/models`: the tiers a caller may use, in OpenAI's or Anthropic's list format.

use serde_json::json;

use crate::config::{Api, Gateway};
use crate::scopes::Scopes;

/// Tier names the scopes allow, sorted.
pub fn visible_tiers<'g>(gateway: &'g Gateway, scopes: &Scopes) -> Vec<&'g str> {
    let mut names: Vec<&str> = gateway
        .tiers
        .keys()
        .map(String::as_str)
        .filter(|name| scopes.allows_model(name))
        .collect();
    names.sort_unstable();
    names
}

pub fn list_body(gateway: &Gateway, scopes: &Scopes, api: Api) -> Vec<u8> {
    let names = visible_tiers(gateway, scopes);
    let value = match api {
        Api::Openai => json!({
            "object": "list",
            "data": names.iter().map(|id| json!({
                "id": id, "object": "model", "created": 0, "owned_by": "weir",
            })).collect::<Vec<_>>(),
        }),
        Api::Anthropic => json!({
            "data": names.iter().map(|id| json!({
                "type": "model", "id": id, "display_name": id, "created_at": "1970-01-01T00:00:00Z",
            })).collect::<Vec<_>>(),
            "has_more": false,
            "first_id": names.first(),
            "last_id": names.last(),
        }),
    };
    serde_json::to_vec(&value).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn lists_only_allowed_tiers() {
        let g = Config::from_json(
            br#"{"providers": {"p": {"api": "openai", "cluster": "c", "auth": "none"}},
                 "tiers": {"fast": {"targets": [{"provider": "p", "model": "m"}]},
                           "best": {"targets": [{"provider": "p", "model": "m"}]}}}"#,
        )
        .unwrap()
        .compile()
        .unwrap();
        let scopes = Scopes::parse(&["model:f*"]).unwrap();
        let v: serde_json::Value =
            serde_json::from_slice(&list_body(&g, &scopes, Api::Openai)).unwrap();
        assert_eq!(v["object"], "list");
        assert_eq!(v["data"][0]["id"], "fast");
        assert_eq!(v["data"].as_array().unwrap().len(), 1);
        let all = Scopes::parse(&["*"]).unwrap();
        let v: serde_json::Value =
            serde_json::from_slice(&list_body(&g, &all, Api::Anthropic)).unwrap();
        assert_eq!(v["data"][0]["type"], "model");
        assert_eq!(
            (v["first_id"].as_str(), v["last_id"].as_str()),
            (Some("best"), Some("fast"))
        );
        assert_eq!(v["has_more"], false);
    }
}
