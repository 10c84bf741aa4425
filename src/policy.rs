//! Policy as code: Rego evaluated in-process with regorus, compiled once per VM.
//!
//! A policy is a Rego package `weir.policy.<name>` with any of these rules:
//! `deny` (a set of reasons, or of `{"reason", "status", "retry_after"}` objects),
//! `tier` (force a tier), `max_tokens` (cap), `tags` (a set to add), and
//! `needs_messages := true` when it reads message text (`input.messages`).
//! For each policy Weir adds a small wrapper package that folds those rules into one
//! `result` object, so a request costs one rule evaluation.

use std::collections::{BTreeMap, HashMap};

use regorus::{Engine, Value};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// The version of the input document; bumped on any incompatible change.
pub const INPUT_VERSION: u32 = 1;

const POLICY_PREFIX: &str = "data.weir.policy.";

/// A Rego module as bundled: its path (for error messages) and text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyModule {
    pub path: String,
    pub text: String,
}

/// One way a policy can refuse a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    pub reason: String,
    /// 403 by default; 402 and 429 (with `retry_after`) are allowed.
    pub status: u32,
    pub retry_after: Option<u64>,
}

/// What a policy decided.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decision {
    pub deny: Vec<Denial>,
    pub tier: Option<String>,
    pub max_tokens: Option<u64>,
    pub tags: Vec<String>,
}

impl Decision {
    /// The denial the client sees: the first one's status, every reason.
    pub fn denial(&self) -> Option<Denial> {
        let first = self.deny.first()?;
        let mut reasons: Vec<&str> = self.deny.iter().map(|d| d.reason.as_str()).collect();
        reasons.dedup();
        Some(Denial {
            reason: reasons.join("; "),
            status: first.status,
            retry_after: first.retry_after,
        })
    }
}

#[derive(Deserialize)]
struct RawResult {
    deny: Vec<serde_json::Value>,
    tier: Option<serde_json::Value>,
    max_tokens: Option<serde_json::Value>,
    tags: Vec<serde_json::Value>,
}

fn parse_decision(raw: RawResult) -> Result<Decision, String> {
    let mut deny = Vec::new();
    for d in raw.deny {
        deny.push(match d {
            serde_json::Value::String(reason) => Denial {
                reason,
                status: 403,
                retry_after: None,
            },
            serde_json::Value::Object(o) => {
                let reason = o
                    .get("reason")
                    .and_then(|r| r.as_str())
                    .unwrap_or("denied by policy")
                    .to_string();
                let status = match o.get("status").and_then(|s| s.as_u64()) {
                    None => 403,
                    Some(s @ (402 | 403 | 429)) => s as u32,
                    Some(s) => {
                        return Err(format!(
                            "deny status {s} is not allowed (use 402, 403 or 429)"
                        ))
                    }
                };
                let retry_after = o.get("retry_after").and_then(|r| r.as_u64());
                Denial {
                    reason,
                    status,
                    retry_after,
                }
            }
            other => return Err(format!("deny must hold strings or objects, not {other}")),
        });
    }
    deny.sort_by(|a, b| a.reason.cmp(&b.reason));
    let tier = match raw.tier {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(t)) => Some(t),
        Some(other) => return Err(format!("tier must be a string, not {other}")),
    };
    let max_tokens = match raw.max_tokens {
        None | Some(serde_json::Value::Null) => None,
        Some(v) => Some(
            v.as_u64()
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("max_tokens must be a positive integer, not {v}"))?,
        ),
    };
    let tags = raw
        .tags
        .into_iter()
        .map(|t| {
            t.as_str()
                .map(str::to_string)
                .ok_or_else(|| format!("tags must be strings, not {t}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Decision {
        deny,
        tier,
        max_tokens,
        tags,
    })
}

/// The compiled policies of one configuration.
pub struct PolicySet {
    engine: Engine,
    needs_messages: HashMap<String, bool>,
    pub default: Option<String>,
}

impl std::fmt::Debug for PolicySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicySet")
            .field("policies", &self.names())
            .field("default", &self.default)
            .finish()
    }
}

fn wrapper(name: &str) -> String {
    let p = format!("data.weir.policy.{name}");
    format!(
        r#"package weir.eval.{name}

deny := [d | some d in {p}.deny]

tier := t if {{
	t := {p}.tier
}} else := null

max_tokens := m if {{
	m := {p}.max_tokens
}} else := null

tags := [t | some t in {p}.tags]

needs_messages := n if {{
	n := {p}.needs_messages == true
}} else := false

result := {{"deny": deny, "tier": tier, "max_tokens": max_tokens, "tags": tags}}
"#
    )
}

/// A name usable as a Rego package segment and a header value.
pub fn valid_policy_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

impl PolicySet {
    /// Parses and prepares every module; errors name the file and line.
    pub fn compile(
        modules: &[PolicyModule],
        data: &serde_json::Value,
        default: Option<&str>,
    ) -> Result<PolicySet, String> {
        let mut engine = Engine::new();
        let mut names = Vec::new();
        for m in modules {
            let package = engine
                .add_policy(m.path.clone(), m.text.clone())
                .map_err(|e| e.to_string())?;
            if let Some(name) = package.strip_prefix(POLICY_PREFIX) {
                if !valid_policy_name(name) {
                    return Err(format!(
                        "{}: policy package {package}: the name must be lower-case letters, digits and _",
                        m.path
                    ));
                }
                if !names.iter().any(|n| n == name) {
                    names.push(name.to_string());
                }
            }
        }
        for name in &names {
            engine
                .add_policy(format!("weir-generated/{name}.rego"), wrapper(name))
                .map_err(|e| format!("policy {name}: {e}"))?;
        }
        if !data.is_null() {
            engine
                .add_data(Value::from(data.clone()))
                .map_err(|e| format!("policy data: {e}"))?;
        }
        let mut set = PolicySet {
            engine,
            needs_messages: HashMap::new(),
            default: default.map(str::to_string),
        };
        for name in &names {
            set.engine.set_input(Value::from(json!({})));
            let needs = set
                .engine
                .eval_rule(format!("data.weir.eval.{name}.needs_messages"))
                .map_err(|e| format!("policy {name}: {e}"))?;
            set.needs_messages
                .insert(name.clone(), needs == Value::from(true));
        }
        if let Some(d) = default {
            if !set.needs_messages.contains_key(d) {
                return Err(format!(
                    "the default policy {d:?} is not defined (known: {})",
                    set.names().join(", ")
                ));
            }
        }
        // Prepare once now, so the first request does not pay for it.
        for name in &names {
            set.evaluate(name, &sample_input())
                .map_err(|e| format!("policy {name}: {e}"))?;
        }
        Ok(set)
    }

    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.needs_messages.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    pub fn contains(&self, name: &str) -> bool {
        self.needs_messages.contains_key(name)
    }

    pub fn needs_messages(&self, name: &str) -> bool {
        self.needs_messages.get(name).copied().unwrap_or(false)
    }

    /// Evaluates policy `name` on `input`.
    pub fn evaluate(&mut self, name: &str, input: &serde_json::Value) -> Result<Decision, String> {
        if !self.contains(name) {
            return Err(format!("unknown policy {name:?}"));
        }
        self.engine.set_input(Value::from(input.clone()));
        let value = self
            .engine
            .eval_rule(format!("data.weir.eval.{name}.result"))
            .map_err(|e| e.to_string())?;
        let json = value.to_json_str().map_err(|e| e.to_string())?;
        let raw: RawResult =
            serde_json::from_str(&json).map_err(|e| format!("unexpected policy result: {e}"))?;
        parse_decision(raw)
    }
}

/// Runs every `test_*` rule of every package (like `opa test`): (name, passed, error).
pub fn run_tests(
    modules: &[PolicyModule],
    data: &serde_json::Value,
) -> Result<Vec<(String, bool, Option<String>)>, String> {
    let mut engine = Engine::new();
    let mut tests = Vec::new();
    for m in modules {
        let package = engine
            .add_policy(m.path.clone(), m.text.clone())
            .map_err(|e| e.to_string())?;
        let mut seen = std::collections::BTreeSet::new();
        for line in m.text.lines() {
            let name: String = line
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if name.starts_with("test_") && seen.insert(name.clone()) {
                tests.push(format!("{package}.{name}"));
            }
        }
    }
    if !data.is_null() {
        engine
            .add_data(Value::from(data.clone()))
            .map_err(|e| format!("policy data: {e}"))?;
    }
    let mut results = Vec::new();
    for test in tests {
        engine.set_input(Value::from(json!({})));
        match engine.eval_rule(test.clone()) {
            Ok(v) => results.push((test, v == Value::from(true), None)),
            Err(e) => results.push((test, false, Some(e.to_string()))),
        }
    }
    Ok(results)
}

/// The caller, as policies see it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CallerInput {
    pub kind: &'static str,
    pub key_id: Option<String>,
    pub team: Option<String>,
    pub project: Option<String>,
    pub scopes: Vec<String>,
    pub metadata: BTreeMap<String, String>,
    /// JWT claims, for callers identified by a token.
    pub claims: Option<serde_json::Value>,
}

/// What the request asks for, as policies see it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ParamsInput {
    pub stream: bool,
    pub max_tokens: Option<u64>,
    pub temperature: Option<f64>,
    pub messages: usize,
    pub input_chars: usize,
    pub tools: Vec<String>,
}

impl ParamsInput {
    /// The request's parameters as policies see them.
    pub fn new(stream: bool, essentials: &crate::body::Essentials) -> Self {
        ParamsInput {
            stream,
            max_tokens: essentials.max_tokens,
            temperature: essentials.temperature,
            messages: essentials.message_count,
            input_chars: essentials.input_chars,
            tools: essentials.tools.clone(),
        }
    }
}

/// Everything a policy may look at. Field names are part of Weir's stable interface
/// (`version` says which); the README documents them.
#[derive(Debug, Clone, Default)]
pub struct InputParts<'a> {
    pub request_id: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub endpoint: &'a str,
    pub api: &'a str,
    /// Lower-case names; credentials already removed.
    pub headers: Vec<(String, String)>,
    pub caller: CallerInput,
    pub user: Option<&'a str>,
    pub run_id: &'a str,
    pub tags: &'a [String],
    pub locale: Option<&'a str>,
    pub policy: &'a str,
    pub model: &'a str,
    pub is_tier: bool,
    pub params: ParamsInput,
    /// Only for policies with `needs_messages`.
    pub messages: Option<Vec<(String, String)>>,
    pub now_unix: u64,
    /// Current usage against the configured limits (see `limits::usage_snapshot`).
    pub usage: Option<serde_json::Value>,
}

/// Builds the input document.
pub fn build_input(p: &InputParts<'_>) -> serde_json::Value {
    let headers: serde_json::Map<String, serde_json::Value> = p
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    let mut input = json!({
        "version": INPUT_VERSION,
        "request": {"id": p.request_id, "method": p.method, "path": p.path, "endpoint": p.endpoint, "api": p.api, "headers": headers},
        "caller": p.caller,
        "directives": {
            "user": p.user, "run_id": p.run_id, "tags": p.tags, "policy": p.policy, "locale": p.locale,
            "plan": p.caller.metadata.get("plan"), "region": p.caller.metadata.get("region"),
        },
        "model": {"requested": p.model, "is_tier": p.is_tier},
        "params": p.params,
        "time": time_parts(p.now_unix),
    });
    if let Some(usage) = &p.usage {
        input["usage"] = usage.clone();
    }
    if let Some(messages) = &p.messages {
        input["messages"] = messages
            .iter()
            .map(|(role, text)| json!({"role": role, "text": text}))
            .collect();
    }
    input
}

/// The time, broken down in UTC (Rego in wasm has no clock builtins).
pub fn time_parts(unix: u64) -> serde_json::Value {
    let days = unix / 86_400;
    let secs = unix % 86_400;
    // 1970-01-01 was a Thursday; ISO weekday: Monday = 1 ... Sunday = 7.
    let weekday = (days + 3) % 7 + 1;
    let rfc3339 = humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix),
    )
    .to_string();
    json!({
        "unix": unix,
        "rfc3339": rfc3339,
        "date": rfc3339.get(..10),
        "weekday": weekday,
        "hour": secs / 3600,
        "minute": secs % 3600 / 60,
    })
}

fn sample_input() -> serde_json::Value {
    build_input(&InputParts {
        request_id: "prepare",
        method: "POST",
        path: "/v1/chat/completions",
        endpoint: "chat_completions",
        api: "openai",
        caller: CallerInput {
            kind: "api_key",
            ..Default::default()
        },
        run_id: "prepare",
        policy: "",
        model: "prepare",
        messages: Some(Vec::new()),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn module(path: &str, text: &str) -> PolicyModule {
        PolicyModule {
            path: path.into(),
            text: text.into(),
        }
    }

    const POLICY: &str = r#"package weir.policy.demo

deny contains "no best for interns" if {
	input.caller.team == "interns"
	input.model.requested == "best"
}

deny contains {"reason": "slow down", "status": 429, "retry_after": 30} if input.caller.team == "noisy"

tier := "fast" if input.caller.metadata.plan == "free"

max_tokens := data.caps[input.caller.team]

tags contains "reviewed"
"#;

    fn set() -> PolicySet {
        PolicySet::compile(
            &[module("demo.rego", POLICY)],
            &json!({"caps": {"support": 256}}),
            Some("demo"),
        )
        .unwrap()
    }

    fn input(team: &str, model: &str, plan: Option<&str>) -> serde_json::Value {
        let mut caller = CallerInput {
            kind: "api_key",
            team: Some(team.into()),
            ..Default::default()
        };
        if let Some(plan) = plan {
            caller.metadata.insert("plan".into(), plan.into());
        }
        build_input(&InputParts {
            caller,
            model,
            run_id: "r",
            policy: "demo",
            now_unix: 0,
            ..Default::default()
        })
    }

    #[test]
    fn decisions() {
        let mut s = set();
        assert_eq!(s.names(), vec!["demo"]);
        let d = s.evaluate("demo", &input("interns", "best", None)).unwrap();
        assert_eq!(
            d.denial().unwrap(),
            Denial {
                reason: "no best for interns".into(),
                status: 403,
                retry_after: None
            }
        );
        assert_eq!(d.tags, vec!["reviewed"]);
        let d = s.evaluate("demo", &input("noisy", "fast", None)).unwrap();
        assert_eq!(d.denial().unwrap().status, 429);
        assert_eq!(d.denial().unwrap().retry_after, Some(30));
        let d = s
            .evaluate("demo", &input("support", "best", Some("free")))
            .unwrap();
        assert!(d.denial().is_none());
        assert_eq!((d.tier.as_deref(), d.max_tokens), (Some("fast"), Some(256)));
        let d = s.evaluate("demo", &input("other", "best", None)).unwrap();
        assert_eq!((d.tier, d.max_tokens), (None, None));
        assert!(s.evaluate("nope", &input("x", "y", None)).is_err());
    }

    #[test]
    fn compile_errors_name_the_file_and_line() {
        let e = PolicySet::compile(
            &[module(
                "policies/bad.rego",
                "package weir.policy.bad\n\ndeny contains x if {\n",
            )],
            &json!(null),
            None,
        )
        .unwrap_err();
        assert!(e.contains("policies/bad.rego:"), "{e}");
        let e = PolicySet::compile(&[module("a.rego", POLICY)], &json!(null), Some("missing"))
            .unwrap_err();
        assert!(e.contains("\"missing\" is not defined"), "{e}");
    }

    #[test]
    fn needs_messages_is_declared() {
        let dlp = "package weir.policy.dlp\n\nneeds_messages := true\n\ndeny contains \"card\" if { some m in input.messages; regex.match(`\\d{16}`, m.text) }\n";
        let mut s = PolicySet::compile(
            &[module("a.rego", POLICY), module("d.rego", dlp)],
            &json!({}),
            None,
        )
        .unwrap();
        assert!(s.needs_messages("dlp") && !s.needs_messages("demo"));
        let mut i = input("t", "fast", None);
        i["messages"] = json!([{"role": "user", "text": "my card 4111111111111111"}]);
        assert_eq!(
            s.evaluate("dlp", &i).unwrap().denial().unwrap().reason,
            "card"
        );
    }

    #[test]
    fn bad_results_are_errors() {
        let bad = "package weir.policy.bad\n\ndeny contains {\"reason\": \"x\", \"status\": 500}\n";
        let mut s = PolicySet::compile(&[module("b.rego", bad)], &json!(null), None);
        // The bad status is found when the policy is prepared.
        assert!(s.as_mut().err().is_some_and(|e| e.contains("500")));
    }

    #[test]
    fn time_is_broken_down() {
        // 2026-11-22T08:40:05Z is a Sunday.
        let t = time_parts(1_795_336_805);
        assert_eq!(t["date"], "2026-11-22");
        assert_eq!(
            (
                t["hour"].as_u64(),
                t["minute"].as_u64(),
                t["weekday"].as_u64()
            ),
            (Some(8), Some(40), Some(7))
        );
    }

    #[test]
    fn rego_tests_run() {
        let test = "package weir.policy.demo_test\n\ntest_interns if {\n\tdata.weir.policy.demo.deny[\"no best for interns\"] with input as {\"caller\": {\"team\": \"interns\"}, \"model\": {\"requested\": \"best\"}}\n}\n\ntest_fails if {\n\t1 == 2\n}\n";
        let results = run_tests(
            &[module("demo.rego", POLICY), module("demo_test.rego", test)],
            &json!({"caps": {}}),
        )
        .unwrap();
        assert_eq!(results.len(), 2);
        assert!(results
            .iter()
            .any(|(n, ok, _)| n.ends_with("test_interns") && *ok));
        assert!(results
            .iter()
            .any(|(n, ok, _)| n.ends_with("test_fails") && !*ok));
    }
}
