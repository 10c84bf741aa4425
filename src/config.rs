//! The plugin configuration: the serde types operators write (as TOML, through the `weir`
//! CLI) and the filter receives (as JSON), their validation, and the compiled form the
//! filter uses per request. One schema for both, so the CLI refuses exactly what the
//! filter would refuse.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::cost::ModelPrice;
use crate::keys::{parse_key_hash, parse_time, KeyEntry, KeyHash, KeyIndex};
use crate::scopes::Scopes;

/// The operator-facing configuration. `deny_unknown_fields` everywhere: a misspelt option
/// is an error, never silently ignored.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub gateway: GatewaySettings,
    #[serde(default)]
    pub providers: BTreeMap<String, ProviderConfig>,
    #[serde(default)]
    pub tiers: BTreeMap<String, TierConfig>,
    #[serde(default)]
    pub keys: Vec<KeyConfig>,
    /// Prices per million tokens, by model name as the provider reports it or as Weir
    /// sends it.
    #[serde(default)]
    pub prices: BTreeMap<String, ModelPrice>,
    /// Caller identity from a JWT verified by Envoy's `jwt_authn` filter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<JwtConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicyConfig>,
    /// Rate limits, budgets, run limits and idempotency.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<crate::limits::LimitsConfig>,
}

/// Rego policies. Operators set `dir` and `default`; `weir bundle` reads the directory,
/// fills in `modules` and `data`, and compiles each policy into `programs`, which is what
/// the filter runs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Directory of `*.rego` and `*.json` files, relative to the configuration file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<String>,
    /// The policy for requests that name none and whose key has no default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub modules: Vec<crate::policy::PolicyModule>,
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub data: serde_json::Value,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub programs: BTreeMap<String, crate::policy::BundledPolicy>,
    /// Keep the decisions of policies that read only the caller, the model and the time,
    /// per VM, for requests with the same input (see the README's "Policies"). `false`:
    /// every request runs its policy.
    #[serde(default = "default_true", skip_serializing_if = "is_true")]
    pub decision_cache: bool,
}

/// How to read a caller's identity from the JWT payload `jwt_authn` forwards.
/// Envoy must remove any client-sent copy of `payload_header` before `jwt_authn` runs
/// (see envoy/envoy.yaml), or a client could forge it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// `forward_payload_header` of the jwt_authn provider.
    pub payload_header: String,
    #[serde(default = "default_subject_claim")]
    pub subject_claim: String,
    /// Dotted paths reach nested claims (`org.team`).
    #[serde(default = "default_team_claim")]
    pub team_claim: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_team: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project_claim: Option<String>,
    /// A space-separated string or an array of Weir scopes; others are ignored.
    #[serde(default = "default_scopes_claim")]
    pub scopes_claim: String,
    /// Scopes of a token without the scopes claim.
    #[serde(default)]
    pub default_scopes: Vec<String>,
}

fn default_subject_claim() -> String {
    "sub".to_string()
}
fn default_team_claim() -> String {
    "team".to_string()
}
fn default_scopes_claim() -> String {
    "scope".to_string()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewaySettings {
    /// Largest request body Weir reads, in bytes. Larger bodies get 413.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// The request header the filter sets and the Envoy route reads with `cluster_header`.
    #[serde(default = "default_cluster_header")]
    pub cluster_header: String,
    /// Filter-state key of the audit record (`%FILTER_STATE(wasm.<key>:PLAIN)%`).
    #[serde(default = "default_audit_property")]
    pub audit_property: String,
    /// Ask OpenAI-shaped providers for a usage chunk on streams (`stream_options.include_usage`).
    /// The extra chunk is removed from what the client receives.
    #[serde(default = "default_true")]
    pub stream_usage: bool,
    /// The currency of the price table (shown in audit records).
    #[serde(default = "default_currency")]
    pub currency: String,
    /// Add a top-level `weir` object (request id, tier, model, usage, cost) to buffered
    /// successful JSON responses.
    #[serde(default)]
    pub response_metadata: bool,
    /// Other `/v1/` paths (files, batches, ...): passed through to this provider, with
    /// auth (scope `passthrough`) and audit; unset: refused with 404.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passthrough_provider: Option<String>,
    /// An environment variable whose value also keys the canary pick. The pick is keyed by
    /// the providers' credentials; with none (only `auth = "none"` providers) its key is as
    /// public as this file, and a client who knows the file could choose its side of a
    /// canary by its request id. `weir bundle` reads the variable; only the bundle carries
    /// the value (`canary_seed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_seed_env: Option<String>,
    /// The value of `canary_seed_env`, put here by `weir bundle` (refused in the file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_seed: Option<Secret>,
}

impl Default for GatewaySettings {
    fn default() -> Self {
        GatewaySettings {
            max_body_bytes: default_max_body_bytes(),
            cluster_header: default_cluster_header(),
            audit_property: default_audit_property(),
            stream_usage: true,
            currency: default_currency(),
            response_metadata: false,
            passthrough_provider: None,
            canary_seed_env: None,
            canary_seed: None,
        }
    }
}

fn default_max_body_bytes() -> usize {
    8 * 1024 * 1024
}
fn default_cluster_header() -> String {
    "x-weir-cluster".to_string()
}
fn default_audit_property() -> String {
    "weir_audit".to_string()
}
fn default_currency() -> String {
    "USD".to_string()
}
fn default_true() -> bool {
    true
}
fn default_anthropic_version() -> String {
    "2023-06-01".to_string()
}

/// The wire format a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Api {
    Openai,
    Anthropic,
}

impl Api {
    pub fn as_str(self) -> &'static str {
        match self {
            Api::Openai => "openai",
            Api::Anthropic => "anthropic",
        }
    }
}

/// How the provider expects its credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuthStyle {
    /// `Authorization: Bearer <credential>` (OpenAI and compatible servers).
    Bearer,
    /// `x-api-key: <credential>` (Anthropic).
    XApiKey,
    /// `api-key: <credential>` (Azure OpenAI).
    ApiKey,
    /// No credential (self-hosted vLLM, TGI, ...).
    None,
}

/// A secret string: serialised as itself (the bundle must carry it to the filter) but never
/// shown by `Debug`, so it cannot leak through a log line or an error message.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    pub api: Api,
    /// The Envoy cluster that reaches this provider.
    pub cluster: String,
    pub auth: AuthStyle,
    /// The credential itself. Only the bundle carries it: operators name `credential_env`
    /// or `credential_file` and `weir bundle` resolves them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<Secret>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_env: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_file: Option<String>,
    /// A variable of Envoy's own environment that holds the credential: the filter reads it
    /// when it loads the configuration (through the VM's `environment_variables`, which
    /// `weir bundle` names), so neither the bundle nor Envoy's config dump holds the value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envoy_credential_env: Option<String>,
    /// `anthropic-version` sent when the client did not send one (Anthropic only).
    #[serde(default = "default_anthropic_version")]
    pub anthropic_version: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub targets: Vec<TargetConfig>,
    /// On 429, 5xx or an unreachable provider, Envoy retries on the tier's next target (of
    /// the client's API). Needs the tier's failover clusters in Envoy (see the README).
    #[serde(default, skip_serializing_if = "is_false")]
    pub failover: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    pub provider: String,
    pub model: String,
    /// Overrides the provider's cluster for this target (e.g. a regional deployment).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// Share of the tier's traffic this target serves first (relative to the others; 0:
    /// never first, fallback only).
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// Stable, non-secret identifier: what audit records and logs show.
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub team: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// `sha256:<64 hex>` of the secret. The secret itself is never stored.
    pub hash: String,
    /// Required: `*`, endpoint scopes (`chat`, `messages`, `models`, ...), `model:<glob>` and
    /// `policy:<glob>`.
    pub scopes: Vec<String>,
    /// RFC 3339 UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub revoked: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<String>,
    /// On a rotated key: the key that replaces it (its `expires_at` ends the overlap).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub successor: Option<String>,
    /// On a rotation's new key: the key it replaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub predecessor: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_policy: Option<String>,
    /// Free metadata (plan, region, ...), passed to policies.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

fn is_true(b: &bool) -> bool {
    *b
}
fn is_false(b: &bool) -> bool {
    !*b
}

/// A configuration error, with the path of the offending field so the operator can find it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.reason)
    }
}

impl std::error::Error for ConfigError {}

fn err(path: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        path: path.into(),
        reason: reason.into(),
    }
}

/// Provider as the filter uses it: the credential header is ready to set.
#[derive(Debug, Clone)]
pub struct Provider {
    pub name: String,
    pub api: Api,
    pub cluster: String,
    /// `(header name, header value)`; `None` for `auth = "none"`.
    pub credential_header: Option<(&'static str, Secret)>,
    pub anthropic_version: String,
}

#[derive(Debug, Clone)]
pub struct Target {
    pub provider: usize,
    pub model: String,
    pub cluster: String,
    pub weight: u32,
}

#[derive(Debug, Clone)]
pub struct Tier {
    pub name: String,
    pub targets: Vec<Target>,
    pub failover: bool,
}

/// The compiled configuration: everything a request needs, indexed, built once per VM.
#[derive(Debug)]
pub struct Gateway {
    pub settings: GatewaySettings,
    pub providers: Vec<Provider>,
    pub tiers: crate::ConfigMap<String, Tier>,
    pub keys: KeyIndex,
    pub jwt: Option<JwtConfig>,
    pub prices: crate::ConfigMap<String, ModelPrice>,
    /// Compiled once per VM; evaluation needs `&mut` (the engine keeps its input).
    pub policies: Option<std::cell::RefCell<crate::policy::PolicySet>>,
    pub limits: Option<crate::limits::LimitsConfig>,
    /// Keys the canary pick (`routing::pick`); derived from the provider credentials.
    pub canary_key: [u8; 32],
}

impl Gateway {
    /// The price of the model the provider reported, else of the model Weir sent; with
    /// the name it was found under.
    pub fn price<'a>(
        &'a self,
        served: Option<&'a str>,
        sent: Option<&'a str>,
    ) -> Option<(&'a str, &'a ModelPrice)> {
        [served, sent]
            .into_iter()
            .flatten()
            .find_map(|name| self.prices.get(name).map(|p| (name, p)))
    }
}

impl Gateway {
    /// `model` as a metric label: itself when the configuration names it (a tier's target or
    /// the price table), else `other`. A client may send any `provider/model`, and every
    /// label value is a new stat Envoy never frees: labels must stay bounded.
    pub fn metric_model<'a>(&self, model: &'a str) -> &'a str {
        let known = self.prices.contains_key(model)
            || self
                .tiers
                .values()
                .any(|t| t.targets.iter().any(|target| target.model == model));
        if known {
            model
        } else {
            "other"
        }
    }
}

/// Names that end up in headers, stats or JSON: keep them plain.
fn check_name(path: &str, name: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/' | b':'));
    if ok {
        Ok(())
    } else {
        Err(err(
            path,
            format!(
                "{name:?} must be 1-128 characters of letters, digits, '-', '_', '.', '/', ':'"
            ),
        ))
    }
}

fn check_header_value(path: &str, value: &str) -> Result<(), ConfigError> {
    if value.is_empty() || value.bytes().any(|b| b < 0x20 || b == 0x7f) {
        return Err(err(
            path,
            "must be non-empty and contain no control characters",
        ));
    }
    Ok(())
}

impl Config {
    /// Parses the JSON plugin configuration the filter receives.
    pub fn from_json(bytes: &[u8]) -> Result<Config, ConfigError> {
        serde_json::from_slice(bytes).map_err(|e| err("configuration", e.to_string()))
    }

    /// Validates and indexes the configuration. Every reference must resolve and every
    /// provider that needs a credential must have one.
    pub fn compile(&self) -> Result<Gateway, ConfigError> {
        self.compile_with(None)
    }

    /// The variables of Envoy's environment that hold provider credentials
    /// (`envoy_credential_env`), each once, in order: what the bundle asks Envoy to hand
    /// the VM.
    pub fn envoy_credential_vars(&self) -> Vec<&str> {
        let mut vars: Vec<&str> = self
            .providers
            .values()
            .filter_map(|p| p.envoy_credential_env.as_deref())
            .collect();
        vars.sort_unstable();
        vars.dedup();
        vars
    }

    /// Fills in each `envoy_credential_env` credential from `lookup` (in the filter, the
    /// VM's environment, which Envoy fills from its own). A variable that is unset or
    /// empty refuses the configuration: a provider without its credential would answer
    /// every request with 401.
    pub fn fill_envoy_credentials(
        &mut self,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<(), ConfigError> {
        for (name, p) in self.providers.iter_mut() {
            let Some(var) = &p.envoy_credential_env else {
                continue;
            };
            let path = format!("providers.{name}.envoy_credential_env");
            if p.credential.is_some() {
                return Err(err(&path, "and a credential: name one source"));
            }
            let value = lookup(var)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
                .ok_or_else(|| err(&path, format!("Envoy's environment has no {var}")))?;
            p.credential = Some(Secret(value));
        }
        Ok(())
    }

    /// `compile` for the filter: the key records move into the key index instead of being
    /// copied (the configuration is not needed afterwards).
    pub fn into_gateway(mut self) -> Result<Gateway, ConfigError> {
        let records = std::mem::take(&mut self.keys);
        self.compile_with(Some(records))
    }

    /// `key_records`: the keys to index when they were taken out of `self` (else `self.keys`).
    fn compile_with(&self, key_records: Option<Vec<KeyConfig>>) -> Result<Gateway, ConfigError> {
        let g = &self.gateway;
        if g.max_body_bytes == 0 {
            return Err(err("gateway.max_body_bytes", "must be greater than 0"));
        }
        check_name("gateway.cluster_header", &g.cluster_header)?;
        if g.cluster_header.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(err("gateway.cluster_header", "must be lower case"));
        }
        check_name("gateway.audit_property", &g.audit_property)?;
        if g.currency.len() != 3 || !g.currency.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(err(
                "gateway.currency",
                "must be a three-letter ISO 4217 code such as USD",
            ));
        }

        let mut providers = Vec::with_capacity(self.providers.len());
        let mut provider_index = HashMap::new();
        for (name, p) in &self.providers {
            let path = format!("providers.{name}");
            check_name(&path, name)?;
            check_name(&format!("{path}.cluster"), &p.cluster)?;
            check_header_value(&format!("{path}.anthropic_version"), &p.anthropic_version)?;
            let header_name = match p.auth {
                AuthStyle::None => None,
                AuthStyle::Bearer => Some("authorization"),
                AuthStyle::XApiKey => Some("x-api-key"),
                AuthStyle::ApiKey => Some("api-key"),
            };
            if let Some(var) = &p.envoy_credential_env {
                let vpath = format!("{path}.envoy_credential_env");
                check_name(&vpath, var)?;
                if header_name.is_none() {
                    return Err(err(vpath, "auth = \"none\" sends no credential"));
                }
            }
            let credential_header = match header_name {
                None => None,
                Some(header) => {
                    let cpath = format!("{path}.credential");
                    let secret = p.credential.as_ref().ok_or_else(|| {
                        err(
                            &cpath,
                            "missing: auth needs a credential (set credential_env, \
                             credential_file or envoy_credential_env and build the bundle \
                             with `weir bundle`)",
                        )
                    })?;
                    check_header_value(&cpath, &secret.0)
                        .map_err(|_| err(&cpath, "is empty or has control characters"))?;
                    let value = match p.auth {
                        AuthStyle::Bearer => format!("Bearer {}", secret.0),
                        _ => secret.0.clone(),
                    };
                    Some((header, Secret(value)))
                }
            };
            provider_index.insert(name.as_str(), providers.len());
            providers.push(Provider {
                name: name.clone(),
                api: p.api,
                cluster: p.cluster.clone(),
                credential_header,
                anthropic_version: p.anthropic_version.clone(),
            });
        }

        if let Some(name) = &g.passthrough_provider {
            if !provider_index.contains_key(name.as_str()) {
                return Err(err(
                    "gateway.passthrough_provider",
                    format!("unknown provider {name:?}"),
                ));
            }
        }
        let mut tiers =
            crate::ConfigMap::with_capacity_and_hasher(self.tiers.len(), Default::default());
        for (name, t) in &self.tiers {
            let path = format!("tiers.{name}");
            check_name(&path, name)?;
            if t.targets.is_empty() {
                return Err(err(
                    format!("{path}.targets"),
                    "must list at least one target",
                ));
            }
            for api in [Api::Openai, Api::Anthropic] {
                let of_api: Vec<&TargetConfig> = t
                    .targets
                    .iter()
                    .filter(|x| {
                        self.providers
                            .get(&x.provider)
                            .is_some_and(|p| p.api == api)
                    })
                    .collect();
                if !of_api.is_empty() && of_api.iter().all(|x| x.weight == 0) {
                    return Err(err(
                        format!("{path}.targets"),
                        format!(
                            "every {} target has weight 0: one must be able to serve first",
                            api.as_str()
                        ),
                    ));
                }
            }
            if t.failover {
                // Each retry moves to the next cluster of the tier's failover cluster, and a
                // client's attempts span every target: each target needs its own cluster.
                let mut seen = std::collections::HashSet::new();
                for x in &t.targets {
                    let Some(p) = self.providers.get(&x.provider) else {
                        continue;
                    };
                    if !seen.insert(x.cluster.clone().unwrap_or_else(|| p.cluster.clone())) {
                        return Err(err(
                            format!("{path}.targets"),
                            "failover needs each target on its own cluster",
                        ));
                    }
                }
            }
            let mut targets = Vec::with_capacity(t.targets.len());
            for (i, target) in t.targets.iter().enumerate() {
                let tpath = format!("{path}.targets[{i}]");
                let provider = *provider_index
                    .get(target.provider.as_str())
                    .ok_or_else(|| {
                        err(
                            format!("{tpath}.provider"),
                            format!("unknown provider {:?}", target.provider),
                        )
                    })?;
                if target.model.is_empty() || target.model.len() > 256 {
                    return Err(err(format!("{tpath}.model"), "must be 1-256 characters"));
                }
                let cluster = match &target.cluster {
                    Some(c) => {
                        check_name(&format!("{tpath}.cluster"), c)?;
                        c.clone()
                    }
                    None => providers[provider].cluster.clone(),
                };
                targets.push(Target {
                    provider,
                    model: target.model.clone(),
                    cluster,
                    weight: target.weight,
                });
            }
            tiers.insert(
                name.clone(),
                Tier {
                    name: name.clone(),
                    targets,
                    failover: t.failover,
                },
            );
        }

        let keys = match key_records {
            Some(records) => compile_key_records(records)?,
            None => compile_keys(&self.keys)?,
        };
        if let Some(l) = &self.limits {
            for (path, slots) in [
                ("limits.user_slots", l.user_slots),
                ("limits.run_slots", l.run_slots),
                ("limits.idempotency_slots", l.idempotency_slots),
            ] {
                if !(1..=crate::limits::MAX_TABLE_SLOTS).contains(&slots) {
                    return Err(err(
                        path,
                        format!("must be from 1 to {}", crate::limits::MAX_TABLE_SLOTS),
                    ));
                }
            }
            for id in l.keys.keys() {
                if !keys.contains_id(id) {
                    return Err(err(format!("limits.keys.{id}"), "no key has this id"));
                }
            }
        }
        if let Some(jwt) = &self.jwt {
            check_name("jwt.payload_header", &jwt.payload_header)?;
            if jwt.payload_header.bytes().any(|b| b.is_ascii_uppercase()) {
                return Err(err("jwt.payload_header", "must be lower case"));
            }
            Scopes::parse(&jwt.default_scopes).map_err(|e| err("jwt.default_scopes", e))?;
        }

        Ok(Gateway {
            settings: g.clone(),
            providers,
            tiers,
            keys,
            jwt: self.jwt.clone(),
            prices: self
                .prices
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            policies: self.compile_policies()?.map(std::cell::RefCell::new),
            limits: self.limits.clone(),
            canary_key: self.canary_key(),
        })
    }

    /// The key of the canary pick, from the providers' credentials, which clients never
    /// see: a client cannot work out which request ids land on which side of a weighted
    /// tier, so it cannot choose its side by choosing its `x-weir-request-id`. The same
    /// providers and credentials give the same key in every VM and every Envoy of a fleet,
    /// so a request id picks the same target everywhere (until a credential changes).
    fn canary_key(&self) -> [u8; 32] {
        let mut bytes = b"weir canary key v1".to_vec();
        // Length-prefixed: no two configurations feed the hash the same bytes.
        let mut field = |field: &[u8]| {
            bytes.extend((field.len() as u64).to_le_bytes());
            bytes.extend(field);
        };
        for (name, provider) in &self.providers {
            field(name.as_bytes());
            field(provider.credential.as_ref().map_or(&[], |c| c.0.as_bytes()));
        }
        let seed = self.gateway.canary_seed.as_ref();
        field(seed.map_or(&[], |s| s.0.as_bytes()));
        crate::keys::sha256(&bytes)
    }

    /// The policies, ready to run (none configured: `None`): the bundled programs when
    /// there are any; otherwise, on the host, compiled from the modules.
    pub fn compile_policies(&self) -> Result<Option<crate::policy::PolicySet>, ConfigError> {
        let Some(p) = &self.policy else {
            return Ok(None);
        };
        if !p.programs.is_empty() {
            return crate::policy::PolicySet::load(&p.programs, &p.data, p.default.as_deref())
                .map(|mut set| {
                    set.set_decision_cache(p.decision_cache);
                    Some(set)
                })
                .map_err(|reason| err("policy", reason));
        }
        if p.modules.is_empty() {
            if let Some(d) = &p.default {
                return Err(err(
                    "policy.default",
                    format!("{d:?}: no policies are bundled"),
                ));
            }
            return Ok(None);
        }
        self.compile_modules(p)
    }

    #[cfg(not(target_arch = "wasm32"))]
    fn compile_modules(
        &self,
        p: &PolicyConfig,
    ) -> Result<Option<crate::policy::PolicySet>, ConfigError> {
        crate::policy::PolicySet::compile(&p.modules, &p.data, p.default.as_deref())
            .map(|mut set| {
                set.set_decision_cache(p.decision_cache);
                Some(set)
            })
            .map_err(|reason| err("policy", reason))
    }

    /// The filter carries no Rego compiler: its policies come compiled by `weir bundle`.
    #[cfg(target_arch = "wasm32")]
    fn compile_modules(
        &self,
        _p: &PolicyConfig,
    ) -> Result<Option<crate::policy::PolicySet>, ConfigError> {
        Err(err(
            "policy.programs",
            "the policies are not compiled; make the filter configuration with `weir bundle`"
                .to_string(),
        ))
    }

    /// Tiers split by weight (for one API, as requests are) whose canary key comes from this
    /// file alone: no provider has a credential and no `canary_seed_env` is set (see
    /// `canary_key`).
    pub fn public_canary_tiers(&self) -> Vec<String> {
        let secret = self.gateway.canary_seed_env.is_some()
            || self.gateway.canary_seed.is_some()
            || self.providers.values().any(|p| p.auth != AuthStyle::None);
        if secret {
            return Vec::new();
        }
        let weighted = |tier: &TierConfig, api: Api| {
            let of_api =
                |t: &&TargetConfig| self.providers.get(&t.provider).map(|p| p.api) == Some(api);
            tier.targets
                .iter()
                .filter(of_api)
                .filter(|t| t.weight > 0)
                .count()
        };
        self.tiers
            .iter()
            .filter(|(_, tier)| {
                [Api::Openai, Api::Anthropic]
                    .iter()
                    .any(|a| weighted(tier, *a) > 1)
            })
            .map(|(name, _)| format!("tiers.{name}"))
            .collect()
    }

    /// Tier targets whose model has no price: their requests are flagged `unpriced`.
    pub fn unpriced_targets(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (name, tier) in &self.tiers {
            for (i, t) in tier.targets.iter().enumerate() {
                if !self.prices.contains_key(&t.model) {
                    out.push(format!(
                        "tiers.{name}.targets[{i}]: no price for model {:?}",
                        t.model
                    ));
                }
            }
        }
        out
    }
}

/// Validates key records and builds the hash index. Used by the CLI, which edits keys
/// without needing provider credentials.
pub fn compile_keys(records: &[KeyConfig]) -> Result<KeyIndex, ConfigError> {
    compile_key_records(records.to_vec())
}

/// What validation derives from one key record, before the record is moved into its entry.
struct CheckedKey {
    hash: KeyHash,
    scopes: std::sync::Arc<Scopes>,
    expires_at: Option<u64>,
}

/// Validates key records and builds the hash index, moving each record's strings into its
/// entry: with 100,000 keys, copies would raise the VM's peak memory (which never shrinks)
/// by tens of MB. Keys with the same scope list share one parsed `Scopes`.
pub fn compile_key_records(records: Vec<KeyConfig>) -> Result<KeyIndex, ConfigError> {
    let checked = check_keys(&records)?;
    let mut keys = KeyIndex::with_capacity(records.len());
    for (i, (k, c)) in records.into_iter().zip(checked).enumerate() {
        let entry = KeyEntry {
            id: k.id,
            team: k.team,
            project: k.project,
            scopes: c.scopes,
            expires_at: c.expires_at.zip(k.expires_at),
            revoked: k.revoked,
            successor: k.successor,
            default_policy: k.default_policy,
            metadata: k.metadata,
        };
        keys.insert(c.hash, entry)
            .map_err(|reason| err(format!("keys[{i}]"), reason))?;
    }
    Ok(keys)
}

fn check_keys(records: &[KeyConfig]) -> Result<Vec<CheckedKey>, ConfigError> {
    let mut ids = std::collections::HashSet::with_capacity(records.len());
    for k in records {
        ids.insert(k.id.as_str());
    }
    let mut seen = std::collections::HashSet::with_capacity(records.len());
    let mut scope_sets: HashMap<&[String], std::sync::Arc<Scopes>> = HashMap::new();
    let mut out = Vec::with_capacity(records.len());
    for (i, k) in records.iter().enumerate() {
        let path = format!("keys[{i}]");
        check_name(&format!("{path}.id"), &k.id)?;
        if !seen.insert(k.id.as_str()) {
            return Err(err(
                format!("{path}.id"),
                format!("duplicate key id {:?}", k.id),
            ));
        }
        check_name(&format!("{path}.team"), &k.team)?;
        if let Some(project) = &k.project {
            check_name(&format!("{path}.project"), project)?;
        }
        let hash: KeyHash =
            parse_key_hash(&k.hash).map_err(|reason| err(format!("{path}.hash"), reason))?;
        let scopes = match scope_sets.get(k.scopes.as_slice()) {
            Some(shared) => shared.clone(),
            None => {
                let parsed = Scopes::parse(&k.scopes)
                    .map_err(|reason| err(format!("{path}.scopes"), reason))?;
                let shared = std::sync::Arc::new(parsed);
                scope_sets.insert(k.scopes.as_slice(), shared.clone());
                shared
            }
        };
        for (field, value) in [("created", &k.created), ("revoked_at", &k.revoked_at)] {
            if let Some(text) = value {
                parse_time(text).map_err(|reason| err(format!("{path}.{field}"), reason))?;
            }
        }
        let expires_at = match &k.expires_at {
            Some(text) => {
                Some(parse_time(text).map_err(|reason| err(format!("{path}.expires_at"), reason))?)
            }
            None => None,
        };
        for (field, other) in [("successor", &k.successor), ("predecessor", &k.predecessor)] {
            if let Some(other) = other {
                if !ids.contains(other.as_str()) {
                    return Err(err(
                        format!("{path}.{field}"),
                        format!("no key has the id {other:?}"),
                    ));
                }
            }
        }
        if k.successor.is_some() && expires_at.is_none() {
            return Err(err(
                format!("{path}.expires_at"),
                "a rotated key (with a successor) needs expires_at: the end of its overlap window",
            ));
        }
        if let Some(policy) = &k.default_policy {
            if !crate::policy::valid_policy_name(policy) {
                return Err(err(
                    format!("{path}.default_policy"),
                    "must be lower-case letters, digits and _",
                ));
            }
        }
        for (name, value) in &k.metadata {
            check_name(&format!("{path}.metadata"), name)?;
            if value.len() > 256 || value.chars().any(char::is_control) {
                return Err(err(
                    format!("{path}.metadata.{name}"),
                    "must be at most 256 characters, no control characters",
                ));
            }
        }
        out.push(CheckedKey {
            hash,
            scopes,
            expires_at,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::hash_secret_hex;

    fn sample() -> Config {
        let json = format!(
            r#"{{
              "providers": {{
                "openai": {{"api": "openai", "cluster": "openai", "auth": "bearer", "credential": "sk-test"}},
                "local": {{"api": "openai", "cluster": "vllm", "auth": "none"}}
              }},
              "tiers": {{
                "balanced": {{"targets": [{{"provider": "openai", "model": "gpt-4o-mini"}}]}},
                "fast": {{"targets": [{{"provider": "local", "model": "llama", "cluster": "vllm-eu"}}]}}
              }},
              "keys": [{{"id": "k1", "team": "t1", "hash": "sha256:{}", "scopes": ["*"]}}]
            }}"#,
            hash_secret_hex("wk_test_1")
        );
        Config::from_json(json.as_bytes()).unwrap()
    }

    #[test]
    fn weighted_tiers_without_any_secret_key_are_named() {
        let config = |gateway: &str, auth: &str| {
            let json = format!(
                r#"{{"gateway": {{{gateway}}},
                     "providers": {{
                       "a": {{"api": "openai", "cluster": "a", "auth": "none"}},
                       "b": {{"api": "openai", "cluster": "b", {auth}}},
                       "c": {{"api": "anthropic", "cluster": "c", "auth": "none"}}}},
                     "tiers": {{
                       "split": {{"targets": [{{"provider": "a", "model": "m"}},
                                             {{"provider": "b", "model": "n", "weight": 3}}]}},
                       "one_per_api": {{"targets": [{{"provider": "a", "model": "m"}},
                                                   {{"provider": "c", "model": "n"}}]}},
                       "fallback": {{"targets": [{{"provider": "a", "model": "m"}},
                                                {{"provider": "b", "model": "n", "weight": 0}}]}}}}}}"#
            );
            Config::from_json(json.as_bytes()).unwrap()
        };
        let none = r#""auth": "none""#;
        // Only `split` picks by weight among one API's targets.
        assert_eq!(config("", none).public_canary_tiers(), ["tiers.split"]);
        // A credential or a seed keys the pick with a secret.
        let keyed = r#""auth": "bearer", "credential": "sk""#;
        assert!(config("", keyed).public_canary_tiers().is_empty());
        let seeded = r#""canary_seed_env": "SEED""#;
        assert!(config(seeded, none).public_canary_tiers().is_empty());
    }

    #[test]
    fn compiles_sample() {
        let g = sample().compile().unwrap();
        assert_eq!(g.providers.len(), 2);
        let openai = &g.providers[g.tiers["balanced"].targets[0].provider];
        let (name, value) = openai.credential_header.as_ref().unwrap();
        assert_eq!(*name, "authorization");
        assert_eq!(value.0, "Bearer sk-test");
        assert_eq!(g.tiers["fast"].targets[0].cluster, "vllm-eu");
        let k = g.keys.get(g.keys.lookup("wk_test_1").unwrap()).unwrap();
        assert_eq!((k.id.as_str(), k.team.as_str()), ("k1", "t1"));
        assert_eq!(g.settings.cluster_header, "x-weir-cluster");
    }

    /// The filter's path (records moved into the index) gives the same keys as `compile`,
    /// and keys with the same scope list share one parsed `Scopes`.
    #[test]
    fn into_gateway_moves_keys_and_shares_scope_sets() {
        let mut c = sample();
        let mut second = c.keys[0].clone();
        second.id = "k2".into();
        second.hash = format!("sha256:{}", hash_secret_hex("wk_test_2"));
        second.expires_at = Some("2030-01-01T00:00:00Z".into());
        let mut third = second.clone();
        third.id = "k3".into();
        third.hash = format!("sha256:{}", hash_secret_hex("wk_test_3"));
        third.scopes = vec!["chat".into()];
        c.keys.extend([second, third]);
        let copied = c.compile().unwrap();
        let moved = c.into_gateway().unwrap();
        let entry =
            |g: &Gateway, secret: &str| g.keys.get(g.keys.lookup(secret).unwrap()).unwrap().clone();
        for secret in ["wk_test_1", "wk_test_2", "wk_test_3"] {
            assert_eq!(entry(&copied, secret), entry(&moved, secret));
        }
        let (k1, k2, k3) = (
            entry(&moved, "wk_test_1"),
            entry(&moved, "wk_test_2"),
            entry(&moved, "wk_test_3"),
        );
        assert!(std::sync::Arc::ptr_eq(&k1.scopes, &k2.scopes));
        assert!(!std::sync::Arc::ptr_eq(&k1.scopes, &k3.scopes));
        assert_eq!(
            k2.expires_at,
            Some((1_893_456_000, "2030-01-01T00:00:00Z".to_string()))
        );
        assert!(moved.keys.contains_id("k3") && !moved.keys.contains_id("k4"));
    }

    #[test]
    fn metric_labels_name_configured_models_only() {
        let mut c = sample();
        c.prices.insert(
            "gpt-4.1".into(),
            toml::from_str("input = \"2\"\noutput = \"8\"").unwrap(),
        );
        let g = c.compile().unwrap();
        assert_eq!(g.metric_model("gpt-4o-mini"), "gpt-4o-mini");
        assert_eq!(g.metric_model("llama"), "llama");
        assert_eq!(g.metric_model("gpt-4.1"), "gpt-4.1");
        assert_eq!(g.metric_model("made-up-123"), "other");
    }

    #[test]
    fn unknown_field_is_refused() {
        let e = Config::from_json(br#"{"tiers": {}, "tierz": {}}"#).unwrap_err();
        assert!(e.reason.contains("tierz"), "{e}");
    }

    #[test]
    fn unknown_provider_names_the_path() {
        let mut c = sample();
        c.tiers.get_mut("balanced").unwrap().targets[0].provider = "nope".into();
        let e = c.compile().unwrap_err();
        assert_eq!(e.path, "tiers.balanced.targets[0].provider");
    }

    #[test]
    fn table_sizes_are_checked() {
        let max = crate::limits::MAX_TABLE_SLOTS;
        for (slots, ok) in [
            (0, false),
            (1, true),
            (65_536, true),
            (max, true),
            (max + 1, false),
        ] {
            for field in ["user_slots", "run_slots", "idempotency_slots"] {
                let mut limits = crate::limits::LimitsConfig::default();
                match field {
                    "user_slots" => limits.user_slots = slots,
                    "run_slots" => limits.run_slots = slots,
                    _ => limits.idempotency_slots = slots,
                }
                let mut c = sample();
                c.limits = Some(limits);
                let result = c.compile();
                assert_eq!(result.is_ok(), ok, "{field} = {slots}");
                if let Err(e) = result {
                    assert_eq!(e.path, format!("limits.{field}"));
                }
            }
        }
    }

    #[test]
    fn missing_credential_is_refused() {
        let mut c = sample();
        c.providers.get_mut("openai").unwrap().credential = None;
        let e = c.compile().unwrap_err();
        assert_eq!(e.path, "providers.openai.credential");
        assert!(!e.to_string().contains("sk-test"));
    }

    /// The sample with its OpenAI credential named as a variable of Envoy's environment.
    fn sample_with_envoy_credential(var: &str) -> Config {
        let mut c = sample();
        let openai = c.providers.get_mut("openai").unwrap();
        openai.credential = None;
        openai.envoy_credential_env = Some(var.to_string());
        c
    }

    #[test]
    fn envoy_credentials_are_filled_from_the_environment() {
        let mut c = sample_with_envoy_credential("OPENAI_KEY");
        assert_eq!(c.envoy_credential_vars(), ["OPENAI_KEY"]);
        // The configuration Envoy receives names the variable and holds no value.
        let json = serde_json::to_string(&c).unwrap();
        assert!(
            json.contains(r#""envoy_credential_env":"OPENAI_KEY""#),
            "{json}"
        );
        assert!(!json.contains(r#""credential":"#), "{json}");
        assert_eq!(c.compile().unwrap_err().path, "providers.openai.credential");

        c.fill_envoy_credentials(|var| (var == "OPENAI_KEY").then(|| " sk-env \n".into()))
            .unwrap();
        let gateway = c.compile().unwrap();
        let (header, value) = gateway.providers[1].credential_header.as_ref().unwrap();
        assert_eq!(
            (*header, value.0.as_str()),
            ("authorization", "Bearer sk-env")
        );
        // The canary key follows the credential's value, as with a bundled one.
        let mut other = sample_with_envoy_credential("OPENAI_KEY");
        other
            .fill_envoy_credentials(|_| Some("sk-other".into()))
            .unwrap();
        assert_ne!(other.compile().unwrap().canary_key, gateway.canary_key);
    }

    #[test]
    fn a_missing_envoy_credential_is_refused_by_name() {
        for value in [None, Some(""), Some("  ")] {
            let mut c = sample_with_envoy_credential("OPENAI_KEY");
            let e = c
                .fill_envoy_credentials(|_| value.map(str::to_string))
                .unwrap_err();
            assert_eq!(e.path, "providers.openai.envoy_credential_env");
            assert!(e.to_string().contains("no OPENAI_KEY"), "{e}");
        }
        // Two sources for one credential: refused rather than one silently winning.
        let mut c = sample_with_envoy_credential("OPENAI_KEY");
        c.providers.get_mut("openai").unwrap().credential = Some(Secret("sk-test".into()));
        let e = c
            .fill_envoy_credentials(|_| Some("sk-env".into()))
            .unwrap_err();
        assert_eq!(e.path, "providers.openai.envoy_credential_env");
        assert!(!e.to_string().contains("sk-"), "{e}");
    }

    #[test]
    fn envoy_credential_names_are_checked() {
        for bad in ["", "KEY=x", "KÉY", "A B"] {
            let mut c = sample_with_envoy_credential(bad);
            c.providers.get_mut("openai").unwrap().credential = Some(Secret("sk".into()));
            assert_eq!(
                c.compile().unwrap_err().path,
                "providers.openai.envoy_credential_env",
                "{bad:?}"
            );
        }
        // A provider without auth sends no credential: naming one is a mistake.
        let mut c = sample();
        c.providers.get_mut("local").unwrap().envoy_credential_env = Some("VLLM_KEY".into());
        assert_eq!(
            c.compile().unwrap_err().path,
            "providers.local.envoy_credential_env"
        );
    }

    #[test]
    fn bad_hash_and_duplicate_keys_are_refused() {
        let mut c = sample();
        c.keys[0].hash = "sha256:abc".into();
        assert_eq!(c.compile().unwrap_err().path, "keys[0].hash");
        let mut c = sample();
        let dup = c.keys[0].clone();
        c.keys.push(dup);
        assert_eq!(c.compile().unwrap_err().path, "keys[1].id");
        let mut c = sample();
        let mut other = c.keys[0].clone();
        other.id = "k2".into();
        c.keys.push(other);
        assert_eq!(c.compile().unwrap_err().path, "keys[1]");
    }

    #[test]
    fn secret_debug_is_redacted() {
        let c = sample();
        let dbg = format!("{:?}", c.compile().unwrap().providers);
        assert!(!dbg.contains("sk-test"), "{dbg}");
    }

    #[test]
    fn key_fields_are_validated() {
        let mut c = sample();
        c.keys[0].scopes = vec!["chat".into(), "chatt".into()];
        assert_eq!(c.compile().unwrap_err().path, "keys[0].scopes");
        let mut c = sample();
        c.keys[0].expires_at = Some("next week".into());
        assert_eq!(c.compile().unwrap_err().path, "keys[0].expires_at");
        let mut c = sample();
        c.keys[0].successor = Some("k9".into());
        assert_eq!(c.compile().unwrap_err().path, "keys[0].successor");
        let mut c = sample();
        c.keys[0].successor = Some("k1".into());
        assert_eq!(c.compile().unwrap_err().path, "keys[0].expires_at");
        let mut c = sample();
        c.keys[0].expires_at = Some("2030-01-01T00:00:00Z".into());
        c.keys[0].metadata.insert("plan".into(), "pro".into());
        let g = c.compile().unwrap();
        let k = g.keys.get(0).unwrap();
        assert_eq!(k.expires_at.as_ref().unwrap().1, "2030-01-01T00:00:00Z");
        assert_eq!(k.metadata["plan"], "pro");
    }

    #[test]
    fn scopes_are_required() {
        let json = br#"{"keys": [{"id": "a", "team": "t", "hash": "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"}]}"#;
        assert!(Config::from_json(json)
            .unwrap_err()
            .reason
            .contains("scopes"));
    }

    #[test]
    fn empty_tier_is_refused() {
        let mut c = sample();
        c.tiers.get_mut("fast").unwrap().targets.clear();
        assert_eq!(c.compile().unwrap_err().path, "tiers.fast.targets");
    }
}
