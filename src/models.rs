//! `GET /v1/models`: the tiers a caller may use, in OpenAI's or Anthropic's list format;
//! `GET /v1/models/{id}`: one of them.

use serde_json::{json, Value};

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

/// One model object in the API's shape.
fn model_object(id: &str, api: Api) -> Value {
    match api {
        Api::Openai => json!({"id": id, "object": "model", "created": 0, "owned_by": "weir"}),
        Api::Anthropic => json!({
            "type": "model", "id": id, "display_name": id, "created_at": "1970-01-01T00:00:00Z",
        }),
    }
}

pub fn list_body(gateway: &Gateway, scopes: &Scopes, api: Api) -> Vec<u8> {
    let names = visible_tiers(gateway, scopes);
    let data: Vec<Value> = names.iter().map(|id| model_object(id, api)).collect();
    let value = match api {
        Api::Openai => json!({"object": "list", "data": data}),
        Api::Anthropic => json!({
            "data": data,
            "has_more": false,
            "first_id": names.first(),
            "last_id": names.last(),
        }),
    };
    serde_json::to_vec(&value).unwrap_or_default()
}

/// `GET /v1/models/{id}`: the tier's object if the scopes let the caller see it (the list
/// would show it), else `None` (404, as for a model that does not exist).
pub fn model_body(gateway: &Gateway, scopes: &Scopes, api: Api, id: &str) -> Option<Vec<u8>> {
    let visible = gateway.tiers.contains_key(id) && scopes.allows_model(id);
    visible.then(|| serde_json::to_vec(&model_object(id, api)).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    /// Tiers `fast` and `best`, of one provider's model `m`.
    fn two_tiers() -> Gateway {
        Config::from_json(
            br#"{"providers": {"p": {"api": "openai", "cluster": "c", "auth": "none"}},
                 "tiers": {"fast": {"targets": [{"provider": "p", "model": "m"}]},
                           "best": {"targets": [{"provider": "p", "model": "m"}]}}}"#,
        )
        .unwrap()
        .compile()
        .unwrap()
    }

    #[test]
    fn lists_only_allowed_tiers() {
        let g = two_tiers();
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

    #[test]
    fn one_model_only_if_listed() {
        let g = two_tiers();
        let scopes = Scopes::parse(&["model:f*"]).unwrap();
        let one = |api, id| {
            model_body(&g, &scopes, api, id).map(|b| serde_json::from_slice::<Value>(&b).unwrap())
        };
        let openai = one(Api::Openai, "fast").unwrap();
        assert_eq!(
            (openai["id"].as_str(), openai["object"].as_str()),
            (Some("fast"), Some("model"))
        );
        let anthropic = one(Api::Anthropic, "fast").unwrap();
        assert_eq!(
            (anthropic["id"].as_str(), anthropic["type"].as_str()),
            (Some("fast"), Some("model"))
        );
        // Hidden by the scopes, unknown, or a provider's model: not found.
        assert_eq!(one(Api::Openai, "best"), None);
        assert_eq!(one(Api::Openai, "fastest"), None);
        assert_eq!(one(Api::Openai, "m"), None);
    }
}
