//! Tiers to a concrete provider model and Envoy cluster.

use crate::config::{Api, Gateway, Provider, Target};
use crate::errors::{ErrorKind, GatewayError};
use crate::models::visible_tiers;
use crate::scopes::Scopes;

#[derive(Debug, Clone, Copy)]
pub struct Route<'g> {
    pub tier: &'g str,
    pub target: &'g Target,
    pub provider: &'g Provider,
}

/// Picks the target that serves `model` for a client speaking `api`: the first target of
/// the tier whose provider speaks the same API (translating between APIs comes later).
/// The 404 for an unknown name lists only the tiers `scopes` allow.
pub fn route<'g>(
    gateway: &'g Gateway,
    api: Api,
    model: &str,
    scopes: &Scopes,
) -> Result<Route<'g>, GatewayError> {
    let not_found = |message: String| {
        Err(GatewayError::new(ErrorKind::ModelNotFound, message).with_param(Some("model")))
    };
    let Some(tier) = gateway.tiers.get(model) else {
        let names = visible_tiers(gateway, scopes);
        return not_found(format!(
            "The model `{}` does not exist or you do not have access to it. Available tiers: {}.",
            printable(model),
            names.join(", ")
        ));
    };
    for target in &tier.targets {
        if let Some(provider) = gateway.providers.get(target.provider) {
            if provider.api == api {
                return Ok(Route {
                    tier: &tier.name,
                    target,
                    provider,
                });
            }
        }
    }
    not_found(format!(
        "The tier `{}` has no model served over the {} API.",
        tier.name,
        api.as_str()
    ))
}

/// A client-supplied name made safe to echo in an error: printable ASCII, bounded.
pub fn printable(s: &str) -> String {
    s.chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn gateway() -> Gateway {
        Config::from_json(
            br#"{
              "providers": {
                "oa": {"api": "openai", "cluster": "c-oa", "auth": "none"},
                "an": {"api": "anthropic", "cluster": "c-an", "auth": "none"}
              },
              "tiers": {
                "balanced": {"targets": [
                  {"provider": "an", "model": "claude"},
                  {"provider": "oa", "model": "gpt"}
                ]},
                "claude-only": {"targets": [{"provider": "an", "model": "claude"}]}
              }
            }"#,
        )
        .unwrap()
        .compile()
        .unwrap()
    }

    #[test]
    fn picks_target_of_the_clients_api() {
        let g = gateway();
        let r = route(&g, Api::Openai, "balanced", &all()).unwrap();
        assert_eq!(
            (r.target.model.as_str(), r.target.cluster.as_str()),
            ("gpt", "c-oa")
        );
        let r = route(&g, Api::Anthropic, "balanced", &all()).unwrap();
        assert_eq!(r.target.model, "claude");
        assert_eq!(r.tier, "balanced");
    }

    fn all() -> Scopes {
        Scopes::parse(&["*"]).unwrap()
    }

    #[test]
    fn unknown_tier_lists_only_visible_tiers() {
        let g = gateway();
        let e = route(
            &g,
            Api::Openai,
            "x",
            &Scopes::parse(&["model:bal*"]).unwrap(),
        )
        .unwrap_err();
        assert!(
            e.message.ends_with("Available tiers: balanced."),
            "{}",
            e.message
        );
    }

    #[test]
    fn unknown_tier_is_404() {
        let g = gateway();
        let e = route(&g, Api::Openai, "gpt-9\n", &all()).unwrap_err();
        assert_eq!(e.status(), 404);
        assert!(e.message.contains("`gpt-9?`"), "{}", e.message);
        assert!(e.message.contains("balanced, claude-only"));
        let e = route(&g, Api::Openai, "claude-only", &all()).unwrap_err();
        assert_eq!(e.status(), 404);
    }
}
