//! Tiers to a concrete provider model and Envoy cluster.

use crate::config::{Api, Gateway, Provider, Target};
use crate::errors::{ErrorKind, GatewayError};
use crate::models::visible_tiers;
use crate::scopes::Scopes;

#[derive(Debug, Clone)]
pub struct Route<'g> {
    /// The tier named, or `None` for a concrete model.
    pub tier: Option<&'g str>,
    pub target: Target,
    pub provider: &'g Provider,
    /// For a failover tier: indexes into the tier's targets in attempt order (the chosen
    /// target first) and the Envoy cluster that tries them in that order.
    pub failover: Option<Failover>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failover {
    pub order: Vec<usize>,
    pub cluster: String,
}

/// The failover cluster for `tier`, `api`, with the tier's `first`-th target of that API
/// tried first: `weir-failover.<tier>.<api>.<first>`. tools/devstack.py generates these.
pub fn failover_cluster(tier: &str, api: Api, first: usize) -> String {
    format!("weir-failover.{tier}.{}.{first}", api.as_str())
}

/// The header carrying the attempt order from the filter to the per-attempt filter:
/// `<tier>;<index>,<index>,...`.
pub const FAILOVER_HEADER: &str = "x-weir-failover";

pub fn failover_header(tier: &str, order: &[usize]) -> String {
    let order: Vec<String> = order.iter().map(usize::to_string).collect();
    format!("{tier};{}", order.join(","))
}

/// Reads `x-weir-failover` back: the tier and the target index for `attempt` (1-based).
pub fn failover_target(value: &str, attempt: usize) -> Option<(&str, usize)> {
    let (tier, order) = value.split_once(';')?;
    let order: Vec<usize> = order
        .split(',')
        .map(|i| i.parse().ok())
        .collect::<Option<_>>()?;
    let at = attempt.checked_sub(1)? % order.len().max(1);
    Some((tier, *order.get(at)?))
}

/// Picks among `targets` by weight, stably for `request_id`: the same id always picks the
/// same target (retries and traces agree), and which ids pick which target is keyed by
/// `key` (`Gateway::canary_key`), so a client cannot choose its side of a canary.
pub fn pick<'t>(targets: &[&'t Target], request_id: &str, key: &[u8; 32]) -> Option<&'t Target> {
    let mut weighted = targets.iter().filter(|t| t.weight > 0);
    let (Some(first), Some(_)) = (weighted.next(), weighted.next()) else {
        // Nothing to choose between (no hash): the one weighted target, else the first.
        return targets
            .iter()
            .find(|t| t.weight > 0)
            .or(targets.first())
            .copied();
    };
    let total: u64 = targets.iter().map(|t| u64::from(t.weight)).sum();
    let mut point = canary_point(key, request_id) % total;
    for t in targets {
        let w = u64::from(t.weight);
        if point < w {
            return Some(t);
        }
        point -= w;
    }
    Some(first)
}

/// Where `request_id` falls: the first 8 bytes of SHA-256(key, request id). Without the
/// key the value cannot be computed, so it cannot be aimed at.
fn canary_point(key: &[u8; 32], request_id: &str) -> u64 {
    let mut bytes = Vec::with_capacity(key.len() + request_id.len());
    bytes.extend_from_slice(key);
    bytes.extend_from_slice(request_id.as_bytes());
    let digest = crate::keys::sha256(&bytes);
    digest
        .first_chunk::<8>()
        .map_or(0, |first| u64::from_le_bytes(*first))
}

/// Picks the target that serves `model` for a client speaking `api`:
/// - a tier: among its targets whose provider speaks the client's API (translating between
///   APIs comes later), by weight, stably for `request_id`;
/// - `provider/model`: that model at that provider;
/// - a model some tier serves: that target.
///
/// The 404 for an unknown name lists only the tiers `scopes` allow.
pub fn route<'g>(
    gateway: &'g Gateway,
    api: Api,
    model: &str,
    scopes: &Scopes,
    request_id: &str,
) -> Result<Route<'g>, GatewayError> {
    let not_found = |message: String| {
        Err(GatewayError::new(ErrorKind::ModelNotFound, message).with_param(Some("model")))
    };
    let Some(tier) = gateway.tiers.get(model) else {
        if let Some(route) = concrete(gateway, api, model) {
            return Ok(route);
        }
        let names = visible_tiers(gateway, scopes);
        return not_found(format!(
            "The model `{}` does not exist or you do not have access to it. Available tiers: {}.",
            printable(model),
            names.join(", ")
        ));
    };
    // Targets of the client's own API first; the other API's targets (translated) when the
    // tier has none of the client's.
    let of_api = |want: Api| -> Vec<(usize, &Target)> {
        tier.targets
            .iter()
            .enumerate()
            .filter(|(_, t)| {
                gateway
                    .providers
                    .get(t.provider)
                    .is_some_and(|p| p.api == want)
            })
            .collect()
    };
    let other_api = match api {
        Api::Openai => Api::Anthropic,
        Api::Anthropic => Api::Openai,
    };
    let (candidates, rest) = match of_api(api) {
        same if same.is_empty() => (of_api(other_api), Vec::new()),
        same => (same, of_api(other_api)),
    };
    let only: Vec<&Target> = candidates.iter().map(|(_, t)| *t).collect();
    if let Some(target) = pick(&only, request_id, &gateway.canary_key) {
        if let Some(provider) = gateway.providers.get(target.provider) {
            let first = only
                .iter()
                .position(|t| std::ptr::eq(*t, target))
                .unwrap_or(0);
            // Attempt order: the chosen target, the client's API's other targets, then the
            // other API's (translated).
            let mut order = vec![candidates[first].0];
            order.extend(
                candidates
                    .iter()
                    .map(|(i, _)| *i)
                    .filter(|i| *i != candidates[first].0),
            );
            order.extend(rest.iter().map(|(i, _)| *i));
            let failover = (tier.failover && order.len() > 1).then(|| Failover {
                order,
                cluster: failover_cluster(&tier.name, api, first),
            });
            return Ok(Route {
                tier: Some(&tier.name),
                target: target.clone(),
                provider,
                failover,
            });
        }
    }
    not_found(format!(
        "The tier `{}` has no model served over the {} API.",
        tier.name,
        api.as_str()
    ))
}

/// A concrete model: `provider/model`, or a model some tier serves over `api`.
fn concrete<'g>(gateway: &'g Gateway, api: Api, model: &str) -> Option<Route<'g>> {
    if let Some((name, rest)) = model.split_once('/') {
        if let Some(provider) = gateway.providers.iter().find(|p| p.name == name) {
            if !rest.is_empty() {
                return Some(Route {
                    tier: None,
                    failover: None,
                    target: Target {
                        provider: gateway.providers.iter().position(|p| p.name == name)?,
                        model: rest.to_string(),
                        cluster: provider.cluster.clone(),
                        weight: 1,
                    },
                    provider,
                });
            }
        }
    }
    let mut tiers: Vec<&crate::config::Tier> = gateway.tiers.values().collect();
    tiers.sort_by(|a, b| a.name.cmp(&b.name));
    let by_name = |same_api: bool| {
        tiers.iter().flat_map(|t| t.targets.iter()).find_map(|t| {
            let provider = gateway.providers.get(t.provider)?;
            // The client's own API first; the other one (translated) otherwise.
            let fits = !same_api || provider.api == api;
            (t.model == model && fits).then(|| Route {
                tier: None,
                target: t.clone(),
                provider,
                failover: None,
            })
        })
    };
    by_name(true).or_else(|| by_name(false))
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
        let r = route(&g, Api::Openai, "balanced", &all(), "r").unwrap();
        assert_eq!(
            (r.target.model.as_str(), r.target.cluster.as_str()),
            ("gpt", "c-oa")
        );
        let r = route(&g, Api::Anthropic, "balanced", &all(), "r").unwrap();
        assert_eq!(r.target.model, "claude");
        assert_eq!(r.tier, Some("balanced"));
    }

    fn all() -> Scopes {
        Scopes::parse(&["*"]).unwrap()
    }

    #[test]
    fn weights_split_traffic_stably() {
        let g = Config::from_json(
            br#"{"providers": {"oa": {"api": "openai", "cluster": "c", "auth": "none"}},
                 "tiers": {"canary": {"targets": [
                   {"provider": "oa", "model": "stable", "weight": 95},
                   {"provider": "oa", "model": "new", "weight": 5}]}}}"#,
        )
        .unwrap()
        .compile()
        .unwrap();
        let n = 20_000;
        let new = (0..n)
            .filter(|i| {
                route(&g, Api::Openai, "canary", &all(), &format!("req-{i}"))
                    .unwrap()
                    .target
                    .model
                    == "new"
            })
            .count();
        let share = new as f64 / n as f64;
        assert!((0.04..0.06).contains(&share), "{share}");
        for i in 0..100 {
            let id = format!("r{i}");
            let a = route(&g, Api::Openai, "canary", &all(), &id)
                .unwrap()
                .target
                .model;
            let b = route(&g, Api::Openai, "canary", &all(), &id)
                .unwrap()
                .target
                .model;
            assert_eq!(a, b);
        }
    }

    /// A 50/50 canary tier on one provider: with `credential` a keyed provider, without
    /// it a self-hosted one (`auth = "none"`); `seed` the gateway's canary seed.
    fn canary(credential: Option<&str>, seed: Option<&str>) -> Gateway {
        let provider = match credential {
            Some(c) => format!(r#""auth": "bearer", "credential": "{c}""#),
            None => r#""auth": "none""#.to_string(),
        };
        let seed = seed.map_or(String::new(), |s| format!(r#", "canary_seed": "{s}""#));
        let json = format!(
            r#"{{"gateway": {{"cluster_header": "x-weir-cluster"{seed}}},
                 "providers": {{"p": {{"api": "openai", "cluster": "c", {provider}}}}},
                 "tiers": {{"canary": {{"targets": [
                   {{"provider": "p", "model": "stable", "weight": 1}},
                   {{"provider": "p", "model": "new", "weight": 1}}]}}}}}}"#
        );
        Config::from_json(json.as_bytes())
            .unwrap()
            .compile()
            .unwrap()
    }

    fn canary_with_credential(credential: &str) -> Gateway {
        canary(Some(credential), None)
    }

    fn sides(g: &Gateway, n: usize) -> Vec<String> {
        (0..n)
            .map(|i| {
                route(g, Api::Openai, "canary", &all(), &format!("id-{i}"))
                    .unwrap()
                    .target
                    .model
            })
            .collect()
    }

    #[test]
    fn canary_sides_are_keyed_by_the_provider_credentials() {
        // The same configuration and credentials: the same side for every id (every VM and
        // every Envoy of a fleet agree).
        let a = sides(&canary_with_credential("sk-one"), 400);
        assert_eq!(a, sides(&canary_with_credential("sk-one"), 400));
        // Another credential: ids land elsewhere (about half of them on a 50/50 split), so
        // without the credential no one can tell which ids pick which side.
        let b = sides(&canary_with_credential("sk-two"), 400);
        let moved = a.iter().zip(&b).filter(|(x, y)| x != y).count();
        assert!((120..280).contains(&moved), "{moved}");
        for side in [&a, &b] {
            let new = side.iter().filter(|m| *m == "new").count();
            assert!((150..250).contains(&new), "{new}");
        }
        assert_ne!(
            canary_with_credential("sk-one").canary_key,
            canary_with_credential("sk-two").canary_key
        );
    }

    /// Self-hosted providers only (`auth = "none"`), with or without a canary seed.
    #[test]
    fn a_canary_seed_keys_the_pick_when_no_provider_has_a_credential() {
        // Without credentials or a seed the key comes from the configuration alone.
        let public = sides(&canary(None, None), 400);
        let seeded = sides(&canary(None, Some("seed-one")), 400);
        assert_eq!(seeded, sides(&canary(None, Some("seed-one")), 400));
        for other in [&public, &sides(&canary(None, Some("seed-two")), 400)] {
            let moved = seeded.iter().zip(other).filter(|(x, y)| x != y).count();
            assert!((120..280).contains(&moved), "{moved}");
        }
    }

    #[test]
    fn a_single_weighted_target_is_picked_without_a_hash() {
        let g = gateway();
        let target = |model: &str, weight: u32| Target {
            provider: 0,
            model: model.into(),
            cluster: "c".into(),
            weight,
        };
        let (zero, one, other) = (target("zero", 0), target("one", 1), target("other", 3));
        // Whatever the key: nothing is chosen by the id when only one target has weight.
        for key in [[0u8; 32], [7u8; 32], g.canary_key] {
            assert_eq!(pick(&[&zero, &one], "r", &key).unwrap().model, "one");
            assert_eq!(pick(&[&zero], "r", &key).unwrap().model, "zero");
            assert!(pick(&[], "r", &key).is_none());
            let chosen = pick(&[&one, &other], "r", &key).unwrap().model.clone();
            assert_eq!(pick(&[&one, &other], "r", &key).unwrap().model, chosen);
        }
    }

    #[test]
    fn failover_order_starts_with_the_chosen_target() {
        let g = Config::from_json(
            br#"{"providers": {"a": {"api": "openai", "cluster": "ca", "auth": "none"},
                               "b": {"api": "openai", "cluster": "cb", "auth": "none"},
                               "x": {"api": "anthropic", "cluster": "cx", "auth": "none"}},
                 "tiers": {"t": {"failover": true, "targets": [
                   {"provider": "a", "model": "m1", "weight": 0},
                   {"provider": "x", "model": "c"},
                   {"provider": "b", "model": "m2"}]}}}"#,
        )
        .unwrap()
        .compile()
        .unwrap();
        let r = route(&g, Api::Openai, "t", &all(), "r").unwrap();
        assert_eq!(r.target.model, "m2");
        let f = r.failover.unwrap();
        assert_eq!(f.order, vec![2, 0, 1]);
        assert_eq!(f.cluster, "weir-failover.t.openai.1");
        let h = failover_header("t", &f.order);
        assert_eq!(h, "t;2,0,1");
        assert_eq!(failover_target(&h, 1), Some(("t", 2)));
        assert_eq!(failover_target(&h, 2), Some(("t", 0)));
        assert_eq!(failover_target(&h, 4), Some(("t", 2)));
        assert_eq!(failover_target("t;", 1), None);
        assert_eq!(failover_target("garbage", 1), None);
        // Anthropic clients start with their own target, then the OpenAI ones (translated).
        let f = route(&g, Api::Anthropic, "t", &all(), "r")
            .unwrap()
            .failover
            .unwrap();
        assert_eq!(f.order, vec![1, 0, 2]);
        assert_eq!(f.cluster, "weir-failover.t.anthropic.0");
    }

    #[test]
    fn failover_needs_distinct_clusters() {
        let e = Config::from_json(
            br#"{"providers": {"a": {"api": "openai", "cluster": "c", "auth": "none"}},
                 "tiers": {"t": {"failover": true, "targets": [
                   {"provider": "a", "model": "m1"}, {"provider": "a", "model": "m2"}]}}}"#,
        )
        .unwrap()
        .compile()
        .unwrap_err();
        assert_eq!(e.path, "tiers.t.targets");
    }

    #[test]
    fn concrete_models() {
        let g = gateway();
        let r = route(&g, Api::Openai, "oa/gpt-5-preview", &all(), "r").unwrap();
        assert_eq!(
            (r.tier, r.target.model.as_str(), r.target.cluster.as_str()),
            (None, "gpt-5-preview", "c-oa")
        );
        let r = route(&g, Api::Anthropic, "claude", &all(), "r").unwrap();
        assert_eq!((r.tier, r.provider.name.as_str()), (None, "an"));
        // Clients reach the other API's models (translated).
        let r = route(&g, Api::Openai, "an/claude", &all(), "r").unwrap();
        assert_eq!(r.provider.name, "an");
        assert_eq!(
            route(&g, Api::Anthropic, "oa/gpt", &all(), "r")
                .unwrap()
                .provider
                .name,
            "oa"
        );
        assert!(route(&g, Api::Openai, "oa/", &all(), "r").is_err());
        assert_eq!(
            route(&g, Api::Openai, "claude", &all(), "r")
                .unwrap()
                .provider
                .name,
            "an"
        );
    }

    #[test]
    fn unknown_tier_lists_only_visible_tiers() {
        let g = gateway();
        let e = route(
            &g,
            Api::Openai,
            "x",
            &Scopes::parse(&["model:bal*"]).unwrap(),
            "r",
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
        let e = route(&g, Api::Openai, "gpt-9\n", &all(), "r").unwrap_err();
        assert_eq!(e.status(), 404);
        assert!(e.message.contains("`gpt-9?`"), "{}", e.message);
        assert!(e.message.contains("balanced, claude-only"));
        let r = route(&g, Api::Openai, "claude-only", &all(), "r").unwrap();
        assert_eq!(
            r.provider.name, "an",
            "no OpenAI target: served by Anthropic, translated"
        );
    }
}
