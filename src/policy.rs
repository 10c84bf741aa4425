//! Policy as code: Rego evaluated in-process with regorus, compiled once per VM.
//!
//! A policy is a Rego package `weir.policy.<name>` with any of these rules:
//! `deny` (a set of reasons, or of `{"reason", "status", "retry_after"}` objects),
//! `tier` (force a tier), `max_tokens` (cap), `tags` (a set to add), and
//! `needs_messages := true` when it reads message text (`input.messages`).
//! For each policy Weir adds a small wrapper package that folds those rules into one
//! `result` object, so a request costs one rule evaluation.
//!
//! Each policy's `result` is compiled to regorus's bytecode VM (`rvm`), several times
//! faster than its tree-walking interpreter, which evaluates every rule of an imported
//! package. `weir bundle` compiles on the host and ships the bytecode, so the filter
//! carries only the VM (no Rego parser, interpreter or compiler: a smaller module and a
//! faster start). The interpreter stays as the reference on the host: a policy the VM
//! cannot compile, or whose VM decision differs from the interpreter's on the probe
//! inputs, is refused by `weir bundle` (the CLI's `policy eval` still runs it).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use base64::Engine as _;
use regorus::rvm::program::{DeserializationResult, Program};
use regorus::rvm::vm::RegoVM;
use regorus::Value;
#[cfg(not(target_arch = "wasm32"))]
use regorus::{languages::rego::compiler::Compiler, Engine, Rc};
use serde::{Deserialize, Serialize};
#[cfg(not(target_arch = "wasm32"))]
use serde_json::json;

/// The version of the input document; bumped on any incompatible change.
pub const INPUT_VERSION: u32 = 1;

#[cfg(not(target_arch = "wasm32"))]
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

/// A Rego value as JSON, leaving out what is undefined (the VM can leave an undefined
/// value where the interpreter leaves nothing).
fn to_json(v: &Value) -> Option<serde_json::Value> {
    Some(match v {
        Value::Undefined => return None,
        Value::Array(items) => items.iter().filter_map(to_json).collect(),
        Value::Set(items) => items.iter().filter_map(to_json).collect(),
        Value::Object(fields) => fields
            .iter()
            .filter_map(|(k, v)| {
                let key = match k {
                    Value::String(s) => s.to_string(),
                    other => other.to_json_str().ok()?,
                };
                Some((key, to_json(v)?))
            })
            .collect::<serde_json::Map<_, _>>()
            .into(),
        leaf => serde_json::to_value(leaf).ok()?,
    })
}

/// The wrapper's `result` read straight from the VM's value (no JSON in between, as this
/// runs on every request). Undefined values count as absent; numbers are read as their JSON
/// form reads (`429.0` is 429, `2.5` is no integer).
fn decision_of(value: &Value) -> Result<Decision, String> {
    let field = |name: &str| -> Result<Vec<&Value>, String> {
        let items = match value {
            Value::Object(fields) => match fields.get(&Value::from(name)) {
                Some(Value::Array(items)) => items.iter().collect::<Vec<_>>(),
                Some(Value::Set(items)) => items.iter().collect(),
                Some(Value::Undefined) | None => {
                    return Err(format!("unexpected policy result: missing field `{name}`"))
                }
                Some(other) => {
                    return Err(format!(
                        "unexpected policy result: `{name}` is {}, not a list",
                        shown(other)
                    ))
                }
            },
            other => return Err(format!("unexpected policy result: {}", shown(other))),
        };
        Ok(items
            .into_iter()
            .filter(|v| !matches!(v, Value::Undefined))
            .collect())
    };
    let mut deny = Vec::new();
    for d in field("deny")? {
        deny.push(match d {
            Value::String(reason) => Denial {
                reason: reason.to_string(),
                status: 403,
                retry_after: None,
            },
            Value::Object(o) => {
                let get = |k: &str| o.get(&Value::from(k));
                let reason = match get("reason") {
                    Some(Value::String(r)) => r.to_string(),
                    _ => "denied by policy".to_string(),
                };
                let status = match get("status").and_then(as_u64) {
                    None => 403,
                    Some(s @ (402 | 403 | 429)) => s as u32,
                    Some(s) => {
                        return Err(format!(
                            "deny status {s} is not allowed (use 402, 403 or 429)"
                        ))
                    }
                };
                Denial {
                    reason,
                    status,
                    retry_after: get("retry_after").and_then(as_u64),
                }
            }
            other => {
                return Err(format!(
                    "deny must hold strings or objects, not {}",
                    shown(other)
                ))
            }
        });
    }
    deny.sort_by(|a, b| a.reason.cmp(&b.reason));
    let (tier, max_tokens) = (field("tier")?, field("max_tokens")?);
    if tier.len() > 1 || max_tokens.len() > 1 {
        return Err("tier and max_tokens must each have one value".into());
    }
    let tier = match tier.first() {
        None | Some(Value::Null) => None,
        Some(Value::String(t)) => Some(t.to_string()),
        Some(other) => return Err(format!("tier must be a string, not {}", shown(other))),
    };
    let max_tokens =
        match max_tokens.first() {
            None | Some(Value::Null) => None,
            Some(v) => Some(as_u64(v).filter(|n| *n > 0).ok_or_else(|| {
                format!("max_tokens must be a positive integer, not {}", shown(v))
            })?),
        };
    let tags = field("tags")?
        .into_iter()
        .map(|t| match t {
            Value::String(s) => Ok(s.to_string()),
            other => Err(format!("tags must be strings, not {}", shown(other))),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Decision {
        deny,
        tier,
        max_tokens,
        tags,
    })
}

/// A number as JSON reads it: a non-negative integer, else `None`.
fn as_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Number(_) => serde_json::to_value(v).ok()?.as_u64(),
        _ => None,
    }
}

/// A value in an error message.
fn shown(v: &Value) -> String {
    to_json(v).map_or_else(|| "undefined".to_string(), |j| j.to_string())
}

/// A policy as `weir bundle` compiles it and the filter receives it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundledPolicy {
    pub needs_messages: bool,
    /// The top-level input fields the policies read (`None`: all, or not known).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_fields: Option<Vec<String>>,
    /// The VM program (regorus's binary serialisation), base64.
    pub program: String,
}

/// One policy, ready to run.
struct Prepared {
    needs_messages: bool,
    input_fields: Option<Vec<String>>,
    /// `data.weir.eval.<name>.result` on the VM; `None`: only the interpreter runs it.
    vm: Option<RegoVM>,
    /// What `weir bundle` ships (host only).
    #[cfg(not(target_arch = "wasm32"))]
    program: Option<Arc<Program>>,
    /// Why the VM is not used.
    interpreted_because: Option<String>,
    /// Its decision depends only on input that repeats from request to request (see
    /// [`decisions_repeat`]).
    repeats: bool,
    /// It reads only [`REPEATING_FIELDS`]: an API key's kept decisions are found by key
    /// and model, before any input is built.
    keyed: bool,
    /// Decisions already made: `Some` when `repeats` and the cache is on.
    decisions: Option<KeptDecisions>,
}

/// The compiled policies of one configuration.
pub struct PolicySet {
    /// The interpreter (host only): the reference, and the fallback for what the VM
    /// cannot run. `None` for a set loaded from bundled programs.
    #[cfg(not(target_arch = "wasm32"))]
    engine: Option<Engine>,
    policies: crate::ConfigMap<String, Prepared>,
    pub default: Option<String>,
    /// Input parts that repeat from request to request; they live as long as the set,
    /// that is, until the configuration (keys included) is replaced.
    repeated: RepeatedInput,
}

/// Parts of the input built once and shared (a reference count, not a copy) by the
/// requests that need them again: the caller object of each key, and the current second.
#[derive(Default)]
struct RepeatedInput {
    callers: crate::ConfigMap<String, Value>,
    time: Option<(u64, Value)>,
}

/// At most this many keys' caller objects are kept (then the cache starts over), so
/// memory stays bounded whatever the number of keys.
const CACHED_CALLERS: usize = 1024;

/// At most this many decisions are kept per policy and VM (then the cache starts over):
/// the bound for a policy that does not read `time`, or for many keys and models in one
/// second.
const CACHED_DECISIONS: usize = 512;

/// The decisions a policy already made, all of one second: a decision of a past second
/// is never asked for again, so a new second starts over.
#[derive(Default)]
struct KeptDecisions {
    second: u64,
    /// An API key's requests, by key id and requested model. The input of a policy that
    /// reads only [`REPEATING_FIELDS`] is a function of these and of the second (the
    /// caller object depends on the key alone, `is_tier` on the model), so a kept decision
    /// is found before any input is built.
    by_key: HashMap<String, HashMap<String, Decision>>,
    /// Other callers' (a token's caller object carries its claims), by input.
    by_input: BTreeMap<KeptInput, Decision>,
    len: usize,
}

impl KeptDecisions {
    /// Forgets the kept decisions unless they are of second `now_unix`.
    fn enter_second(&mut self, now_unix: u64) {
        if self.second != now_unix {
            self.clear();
            self.second = now_unix;
        }
    }

    fn clear(&mut self) {
        self.by_key.clear();
        self.by_input.clear();
        self.len = 0;
    }

    fn for_key(&self, key_id: &str, model: &str) -> Option<&Decision> {
        self.by_key.get(key_id)?.get(model)
    }

    /// Keeps `decision`, by key and model when `key_id` is set, else by `input`.
    fn insert(&mut self, key_id: Option<&str>, model: &str, input: KeptInput, decision: Decision) {
        if self.len >= CACHED_DECISIONS {
            self.clear();
        }
        self.len += 1;
        match key_id {
            Some(id) => {
                let models = self.by_key.entry(id.to_string()).or_default();
                models.insert(model.to_string(), decision);
            }
            None => {
                self.by_input.insert(input, decision);
            }
        }
    }
}

/// The input of a kept decision. Ordered exactly as regorus orders values, except that
/// parts two inputs share (the current second's time object is one reference-counted
/// value for all the requests that need it, and so is a key's caller object) compare by
/// address instead of by content: walking whole objects on every comparison of a lookup
/// once took a third of the filter's time per request.
struct KeptInput(Value);

impl Ord for KeptInput {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        Sharing(&self.0).cmp(&Sharing(&other.0))
    }
}

impl PartialOrd for KeptInput {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for KeptInput {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}

impl Eq for KeptInput {}

/// A value in regorus's order (`Value`'s derived `Ord`; an object's is the order of its
/// entries, sorted), with shared parts equal by address.
struct Sharing<'a>(&'a Value);

impl<'a> Ord for Sharing<'a> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        use std::cmp::Ordering::Equal;
        match (self.0, other.0) {
            (Value::Object(a), Value::Object(b)) => {
                if Arc::ptr_eq(a, b) {
                    return Equal;
                }
                let entries =
                    |o: &'a regorus::value::Object| o.iter().map(|(k, v)| (Sharing(k), Sharing(v)));
                entries(a).cmp(entries(b))
            }
            (Value::Array(a), Value::Array(b)) if Arc::ptr_eq(a, b) => Equal,
            (Value::String(a), Value::String(b)) if Arc::ptr_eq(a, b) => Equal,
            (a, b) => a.cmp(b),
        }
    }
}

impl PartialOrd for Sharing<'_> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Sharing<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}

impl Eq for Sharing<'_> {}

/// Top-level input fields that stay the same across many requests: one key (`caller`)
/// asking for one model in one second (`time`). A policy reading only these decides the
/// same for all of them. The others change with every request: `request` holds the
/// request id, `directives` the run id (the request id when none is named), `params` and
/// `messages` the body, `usage` the counters.
const REPEATING_FIELDS: [&str; 4] = ["version", "caller", "model", "time"];

/// Members of `request` and `directives` that repeat across a client's requests: read
/// without `request.id`, `request.headers` (trace and retry headers change every time)
/// or `directives.run_id`, they leave a decision that the next request can use again.
/// Headers read by name (`request.headers.user-agent`) count as repeating: the policy's
/// author chose them.
const REPEATING_MEMBERS: [&str; 10] = [
    "request.method",
    "request.path",
    "request.endpoint",
    "request.api",
    "directives.user",
    "directives.tags",
    "directives.policy",
    "directives.locale",
    "directives.plan",
    "directives.region",
];

/// Whether a policy that reads `input_fields` reads [`REPEATING_FIELDS`] only: then its
/// input is a function of the caller, the model and the second.
fn reads_only_keyed_fields(input_fields: Option<&[String]>) -> bool {
    input_fields.is_some_and(|fields| {
        fields
            .iter()
            .all(|f| REPEATING_FIELDS.contains(&f.as_str()))
    })
}

/// Whether a policy's decision is a function of input that repeats (and of `data`, fixed
/// with the configuration): it reads only [`REPEATING_FIELDS`] and [`REPEATING_MEMBERS`]
/// (as far as `referenced_input_fields` can tell; unknown means no) and calls no builtin
/// whose answer depends on more than its arguments (the clock, randomness, the network).
fn decisions_repeat(input_fields: Option<&[String]>, program: &Program) -> bool {
    let reads_repeating = input_fields.is_some_and(|fields| {
        fields.iter().all(|f| {
            REPEATING_FIELDS.contains(&f.as_str())
                || REPEATING_MEMBERS.contains(&f.as_str())
                || f.starts_with(NAMED_HEADER)
        })
    });
    let deterministic = !program.has_host_await
        && program.builtin_info_table.iter().all(|b| {
            let name = b.name.as_str();
            !matches!(name, "time.now_ns" | "uuid.rfc4122" | "opa.runtime")
                && !name.starts_with("rand.")
                && !name.starts_with("http.")
                && !name.starts_with("net.lookup")
        });
    reads_repeating && deterministic
}

/// A runaway guard, far above what a policy over a full request needs.
const VM_MAX_INSTRUCTIONS: usize = 5_000_000;

#[cfg(not(target_arch = "wasm32"))]
fn result_rule(name: &str) -> String {
    format!("data.weir.eval.{name}.result")
}

fn new_vm(program: Arc<Program>, data: &Value) -> Result<RegoVM, String> {
    let mut vm = RegoVM::new();
    vm.load_program(program);
    vm.set_max_instructions(VM_MAX_INSTRUCTIONS);
    vm.set_data(data.clone()).map_err(|e| e.to_string())?;
    Ok(vm)
}

#[cfg(not(target_arch = "wasm32"))]
fn compile_program(engine: &mut Engine, name: &str) -> Result<Arc<Program>, String> {
    let rule = result_rule(name);
    let entry: Rc<str> = rule.as_str().into();
    let compiled = engine
        .compile_with_entrypoint(&entry)
        .map_err(|e| e.to_string())?;
    Compiler::compile_from_policy(&compiled, &[rule.as_str()]).map_err(|e| e.to_string())
}

fn data_value(data: &serde_json::Value) -> Value {
    if data.is_null() {
        Value::new_object()
    } else {
        Value::from(data.clone())
    }
}

#[cfg(not(target_arch = "wasm32"))]
fn wrapper(name: &str) -> String {
    let p = format!("data.weir.policy.{name}");
    // `tier` and `max_tokens` as lists of zero or one value: `else := null` is not
    // compiled faithfully by regorus's VM, and an undefined rule must read as "none".
    // One rule with the comprehensions inline: each rule call costs the VM a copy of the
    // rule's metadata (four fewer calls: ~20% of `standard`'s time natively).
    format!(
        r#"package weir.eval.{name}

needs_messages := n if {{
	n := {p}.needs_messages == true
}} else := false

result := {{
	"deny": [d | some d in {p}.deny],
	"tier": [t | t := {p}.tier],
	"max_tokens": [m | m := {p}.max_tokens],
	"tags": [t | some t in {p}.tags],
}}
"#
    )
}

impl std::fmt::Debug for PolicySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicySet")
            .field("policies", &self.names())
            .field("default", &self.default)
            .finish()
    }
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
    #[cfg(not(target_arch = "wasm32"))]
    pub fn compile(
        modules: &[PolicyModule],
        data: &serde_json::Value,
        default: Option<&str>,
    ) -> Result<PolicySet, String> {
        let data = data_value(data);
        // The interpreter runs the source as written: it is the reference.
        let (mut engine, names) = new_engine(
            modules.iter().map(|m| (m.path.as_str(), m.text.as_str())),
            &data,
        )?;
        // The VM gets the same source with imports spelled out (see `rego_text`), and
        // the source as written if that does not compile or decide the same.
        let inlined: Vec<String> = modules
            .iter()
            .map(|m| crate::rego_text::inline_imports(&m.text))
            .collect();
        let mut fast_engine = if inlined.iter().zip(modules).any(|(t, m)| *t != m.text) {
            let texts = modules.iter().zip(&inlined);
            Some(new_engine(texts.map(|(m, t)| (m.path.as_str(), t.as_str())), &data)?.0)
        } else {
            None
        };
        if let Some(d) = default {
            if !names.iter().any(|n| n == d) {
                return Err(format!(
                    "the default policy {d:?} is not defined (known: {})",
                    names.join(", ")
                ));
            }
        }
        let texts: Vec<&str> = modules.iter().map(|m| m.text.as_str()).collect();
        let mut policies = crate::ConfigMap::default();
        for name in &names {
            // The fields read by the modules the policy may use (all modules, if the
            // scanner cannot tell which).
            let package = format!("{POLICY_PREFIX}{name}");
            let mut input_fields = match crate::rego_text::modules_used_by(&texts, &package) {
                Some(used) => {
                    crate::rego_text::referenced_input_fields(used.iter().map(|&i| texts[i]))
                }
                None => crate::rego_text::referenced_input_fields(texts.iter().copied()),
            };
            engine.set_input(Value::from(json!({})));
            let needs = engine
                .eval_rule(format!("data.weir.eval.{name}.needs_messages"))
                .map_err(|e| format!("policy {name}: {e}"))?;
            // The interpreter's decisions on the probe inputs, which the VM must match
            // (running the VM on them also warms it before the first request).
            let mut references = Vec::new();
            for input in probe_inputs(None) {
                let decision = interpret_on(&mut engine, name, input.clone())
                    .map_err(|e| format!("policy {name}: {e}"))?;
                references.push((input, decision));
            }
            if !decides_alike_on_built_input(
                &mut engine,
                name,
                input_fields.as_deref(),
                &references,
            ) {
                input_fields = None;
            }
            let mut chosen = Err(String::new());
            for e in fast_engine.iter_mut().chain([&mut engine]) {
                chosen = vm_deciding_as(e, name, &data, &references);
                if chosen.is_ok() {
                    break;
                }
            }
            let (vm, program, interpreted_because) = match chosen {
                Ok((vm, program)) => (Some(vm), Some(program), None),
                Err(why) => (None, None, Some(why)),
            };
            // Only VM decisions are kept: the interpreter is the host's reference.
            let repeats = program
                .as_deref()
                .is_some_and(|p| decisions_repeat(input_fields.as_deref(), p));
            let keyed = reads_only_keyed_fields(input_fields.as_deref());
            policies.insert(
                name.clone(),
                Prepared {
                    needs_messages: needs == Value::from(true),
                    input_fields,
                    vm,
                    program,
                    interpreted_because,
                    repeats,
                    keyed,
                    decisions: repeats.then(KeptDecisions::default),
                },
            );
        }
        Ok(PolicySet {
            engine: Some(engine),
            policies,
            default: default.map(str::to_string),
            repeated: RepeatedInput::default(),
        })
    }

    /// The set the filter runs: programs compiled by `weir bundle`, no interpreter.
    pub fn load(
        bundled: &BTreeMap<String, BundledPolicy>,
        data: &serde_json::Value,
        default: Option<&str>,
    ) -> Result<PolicySet, String> {
        let data = data_value(data);
        let mut policies = crate::ConfigMap::default();
        for (name, b) in bundled {
            if !valid_policy_name(name) {
                return Err(format!(
                    "policy name {name:?}: use lower-case letters, digits and _"
                ));
            }
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(&b.program)
                .map_err(|e| format!("policy {name}: program: {e}"))?;
            let program = match Program::deserialize_binary(&bytes) {
                Ok(DeserializationResult::Complete(p)) => Arc::new(p),
                Ok(DeserializationResult::Partial(_)) => {
                    return Err(format!(
                        "policy {name}: the program was compiled by another regorus version; bundle it again"
                    ))
                }
                Err(e) => return Err(format!("policy {name}: program: {e}")),
            };
            let repeats = decisions_repeat(b.input_fields.as_deref(), &program);
            let keyed = reads_only_keyed_fields(b.input_fields.as_deref());
            let vm = new_vm(program, &data).map_err(|e| format!("policy {name}: {e}"))?;
            policies.insert(
                name.clone(),
                Prepared {
                    needs_messages: b.needs_messages,
                    input_fields: b.input_fields.clone(),
                    vm: Some(vm),
                    #[cfg(not(target_arch = "wasm32"))]
                    program: None,
                    interpreted_because: None,
                    repeats,
                    keyed,
                    decisions: repeats.then(KeptDecisions::default),
                },
            );
        }
        let mut set = PolicySet {
            #[cfg(not(target_arch = "wasm32"))]
            engine: None,
            policies,
            default: default.map(str::to_string),
            repeated: RepeatedInput::default(),
        };
        if let Some(d) = default {
            if !set.contains(d) {
                return Err(format!(
                    "the default policy {d:?} is not defined (known: {})",
                    set.names().join(", ")
                ));
            }
        }
        // Run each once now: the first request does not pay for the VM's first run, and
        // a policy that fails on an ordinary input is refused with the configuration.
        let names: Vec<String> = set.policies.keys().cloned().collect();
        for name in names {
            for probe in probe_inputs(None) {
                set.evaluate(&name, probe)
                    .map_err(|e| format!("policy {name}: {e}"))?;
            }
        }
        Ok(set)
    }

    /// What `weir bundle` ships: every policy as a VM program. A policy that only the
    /// interpreter runs is an error here, with the reason.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn bundled(&self) -> Result<BTreeMap<String, BundledPolicy>, String> {
        let mut out = BTreeMap::new();
        for (name, p) in &self.policies {
            let Some(program) = &p.program else {
                return Err(format!(
                    "policy {name}: {}; the filter runs policies on regorus's VM (see the README's \"Policies\")",
                    p.interpreted_because.as_deref().unwrap_or("not compiled")
                ));
            };
            let bytes = program
                .serialize_binary()
                .map_err(|e| format!("policy {name}: {e}"))?;
            out.insert(
                name.clone(),
                BundledPolicy {
                    needs_messages: p.needs_messages,
                    input_fields: p.input_fields.clone(),
                    program: base64::engine::general_purpose::STANDARD.encode(bytes),
                },
            );
        }
        Ok(out)
    }

    /// Policies the interpreter runs, and why (the VM runs the others).
    pub fn interpreted(&self) -> Vec<(&str, &str)> {
        let mut v: Vec<(&str, &str)> = self
            .policies
            .iter()
            .filter_map(|(n, p)| Some((n.as_str(), p.interpreted_because.as_deref()?)))
            .collect();
        v.sort_unstable();
        v
    }

    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.policies.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    pub fn contains(&self, name: &str) -> bool {
        self.policies.contains_key(name)
    }

    pub fn needs_messages(&self, name: &str) -> bool {
        self.policies.get(name).is_some_and(|p| p.needs_messages)
    }

    /// The input fields policy `name` may read (`None`: all of them): top-level fields,
    /// and members of `request` and `directives` read by themselves (`directives.user`;
    /// see [`reads`]). The input for it is built with only these: the rest is never read,
    /// so never built.
    pub fn input_fields(&self, name: &str) -> Option<&[String]> {
        self.policies.get(name)?.input_fields.as_deref()
    }

    /// The input document for policy `name` (only the fields it reads), reusing the
    /// parts earlier requests built.
    pub fn input(&mut self, name: &str, parts: &InputParts<'_>) -> Value {
        let fields = self
            .policies
            .get(name)
            .and_then(|p| p.input_fields.as_deref());
        input_value_reusing(parts, fields, Some(&mut self.repeated))
    }

    /// Keep (`true`, the default) or never keep decisions of policies that decide the
    /// same for repeating input (see [`decisions_repeat`]). Off, every request runs its
    /// policy.
    pub fn set_decision_cache(&mut self, on: bool) {
        for p in self.policies.values_mut() {
            p.decisions = (on && p.repeats).then(KeptDecisions::default);
        }
    }

    /// Whether policy `name`'s decisions are kept for repeating input.
    pub fn caches_decisions(&self, name: &str) -> bool {
        self.policies
            .get(name)
            .is_some_and(|p| p.decisions.is_some())
    }

    /// What the filter calls: the decision policy `name` already made for the input of
    /// `parts`, if it keeps them (then `true`), else [`Self::evaluate`]'s on that input,
    /// kept when it may be.
    pub fn decide(
        &mut self,
        name: &str,
        parts: &InputParts<'_>,
    ) -> Result<(Decision, bool), String> {
        let keyed = self.policies.get(name).is_some_and(|p| p.keyed);
        let key_id = parts
            .caller
            .key_id
            .filter(|_| parts.caller.kind == "api_key" && keyed);
        if let Some(decision) =
            key_id.and_then(|id| self.kept_for_key(name, id, parts.model, parts.now_unix))
        {
            return Ok((decision, true));
        }
        let keeps = match self.kept(name) {
            Some(kept) => {
                kept.enter_second(parts.now_unix);
                true
            }
            None => false,
        };
        let input = self.input(name, parts);
        let key = KeptInput(input.clone());
        if keeps && key_id.is_none() {
            if let Some(decision) = self.kept(name).and_then(|k| k.by_input.get(&key)) {
                return Ok((decision.clone(), true));
            }
        }
        let decision = self.evaluate(name, input)?;
        if let Some(kept) = self.kept(name) {
            kept.insert(key_id, parts.model, key, decision.clone());
        }
        Ok((decision, false))
    }

    /// The decision policy `name` made for API key `key_id` and `model` in second
    /// `now_unix`, if it keeps one by key (it reads nothing else that repeats): found
    /// before any input is built (see `KeptDecisions`).
    pub fn kept_for_key(
        &mut self,
        name: &str,
        key_id: &str,
        model: &str,
        now_unix: u64,
    ) -> Option<Decision> {
        let p = self.policies.get_mut(name).filter(|p| p.keyed)?;
        let kept = p.decisions.as_mut()?;
        kept.enter_second(now_unix);
        kept.for_key(key_id, model).cloned()
    }

    /// Policy `name`'s kept decisions, if it keeps them.
    fn kept(&mut self, name: &str) -> Option<&mut KeptDecisions> {
        self.policies.get_mut(name)?.decisions.as_mut()
    }

    /// Evaluates policy `name` on `input`: on the VM, or (on the host) the interpreter
    /// if the VM cannot. Never from the decision cache.
    pub fn evaluate(&mut self, name: &str, input: Value) -> Result<Decision, String> {
        let p = self
            .policies
            .get_mut(name)
            .ok_or_else(|| format!("unknown policy {name:?}"))?;
        let on_vm = p.vm.as_mut().map(|vm| run_vm(vm, input.clone()));
        match on_vm {
            Some(Ok(decision)) => Ok(decision),
            vm_failed => self.fallback(name, input, vm_failed),
        }
    }

    #[cfg(not(target_arch = "wasm32"))]
    fn fallback(
        &mut self,
        name: &str,
        input: Value,
        vm_failed: Option<Result<Decision, String>>,
    ) -> Result<Decision, String> {
        match (&self.engine, vm_failed) {
            (Some(_), _) => self.interpret(name, input),
            (None, Some(e)) => e,
            (None, None) => Err(format!("policy {name:?} has no program")),
        }
    }

    #[cfg(target_arch = "wasm32")]
    fn fallback(
        &mut self,
        name: &str,
        _input: Value,
        vm_failed: Option<Result<Decision, String>>,
    ) -> Result<Decision, String> {
        vm_failed.unwrap_or_else(|| Err(format!("policy {name:?} has no program")))
    }

    /// Evaluates policy `name` with the interpreter.
    #[cfg(not(target_arch = "wasm32"))]
    fn interpret(&mut self, name: &str, input: Value) -> Result<Decision, String> {
        let engine = self
            .engine
            .as_mut()
            .ok_or_else(|| format!("policy {name:?}: no interpreter"))?;
        interpret_on(engine, name, input)
    }
}

/// Whether policy `name` decides on the probe inputs built with only `fields` (those the
/// scanner found it reads) as it did on the whole ones (`references`). A spelling the
/// scanner misreads would build an input without a field the policy reads: then the
/// policy gets every field instead.
#[cfg(not(target_arch = "wasm32"))]
fn decides_alike_on_built_input(
    engine: &mut Engine,
    name: &str,
    fields: Option<&[String]>,
    references: &[(Value, Decision)],
) -> bool {
    fields.is_none()
        || probe_inputs(fields)
            .into_iter()
            .zip(references)
            .all(|(input, (_, whole))| interpret_on(engine, name, input).is_ok_and(|d| d == *whole))
}

#[cfg(not(target_arch = "wasm32"))]
fn interpret_on(engine: &mut Engine, name: &str, input: Value) -> Result<Decision, String> {
    engine.set_input(input);
    let value = engine
        .eval_rule(result_rule(name))
        .map_err(|e| e.to_string())?;
    decision_of(&value)
}

/// An engine with `modules` (path, text), the wrapper of each policy among them and
/// `data`; and the names of those policies.
#[cfg(not(target_arch = "wasm32"))]
fn new_engine<'a>(
    modules: impl Iterator<Item = (&'a str, &'a str)>,
    data: &Value,
) -> Result<(Engine, Vec<String>), String> {
    let mut engine = Engine::new();
    let mut names = Vec::new();
    for (path, text) in modules {
        let package = engine
            .add_policy(path.to_string(), text.to_string())
            .map_err(|e| e.to_string())?;
        if let Some(name) = package.strip_prefix(POLICY_PREFIX) {
            if !valid_policy_name(name) {
                return Err(format!(
                    "{path}: policy package {package}: the name must be lower-case letters, digits and _"
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
    engine
        .add_data(data.clone())
        .map_err(|e| format!("policy data: {e}"))?;
    Ok((engine, names))
}

/// Policy `name` compiled for the VM from `engine`'s source, if it compiles and decides
/// the `references` (input, the interpreter's decision) as the interpreter did.
#[cfg(not(target_arch = "wasm32"))]
fn vm_deciding_as(
    engine: &mut Engine,
    name: &str,
    data: &Value,
    references: &[(Value, Decision)],
) -> Result<(RegoVM, Arc<Program>), String> {
    let program = compile_program(engine, name)
        .map_err(|e| format!("regorus's VM cannot compile it: {e}"))?;
    let mut vm = new_vm(program.clone(), data)?;
    for (input, want) in references {
        let got = run_vm(&mut vm, input.clone());
        if got.as_ref() != Ok(want) {
            return Err(format!(
                "regorus's VM decided {got:?} where its interpreter decided {want:?}"
            ));
        }
    }
    Ok((vm, program))
}

fn run_vm(vm: &mut RegoVM, input: Value) -> Result<Decision, String> {
    vm.set_input(input);
    let value = vm.execute().map_err(|e| e.to_string())?;
    decision_of(&value)
}

/// Runs every `test_*` rule of every package (like `opa test`): (name, passed, error).
#[cfg(not(target_arch = "wasm32"))]
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

/// The caller, as policies see it (borrowed from the key or token).
#[derive(Debug, Clone, Copy)]
pub struct CallerInput<'a> {
    pub kind: &'static str,
    pub key_id: Option<&'a str>,
    pub team: Option<&'a str>,
    pub project: Option<&'a str>,
    pub scopes: &'a [String],
    pub metadata: &'a BTreeMap<String, String>,
    /// JWT claims, for callers identified by a token.
    pub claims: Option<&'a serde_json::Value>,
}

static NO_METADATA: BTreeMap<String, String> = BTreeMap::new();

impl Default for CallerInput<'_> {
    fn default() -> Self {
        CallerInput {
            kind: "",
            key_id: None,
            team: None,
            project: None,
            scopes: &[],
            metadata: &NO_METADATA,
            claims: None,
        }
    }
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
    pub caller: CallerInput<'a>,
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

/// The input document, as JSON (for people and tests; policies get `input_value`).
pub fn build_input(p: &InputParts<'_>) -> serde_json::Value {
    to_json(&input_value(p, None)).unwrap_or_default()
}

/// The input document with only `fields` (`None`: all of them; see [`reads`]), built
/// straight as Rego values: no JSON in between, which costs as much again per request.
pub fn input_value(p: &InputParts<'_>, fields: Option<&[String]>) -> Value {
    input_value_reusing(p, fields, None)
}

/// Whether a policy that reads `fields` reads `member` of top-level `field`, whole or in
/// part (no allocation: this runs for every member of an input built per request).
fn reads_member(fields: Option<&[String]>, field: &str, member: &str) -> bool {
    fields.is_none_or(|fields| {
        fields.iter().any(|f| match f.strip_prefix(field) {
            Some("") => true,
            Some(rest) => rest
                .strip_prefix('.')
                .and_then(|r| r.strip_prefix(member))
                .is_some_and(|r| r.is_empty() || r.starts_with('.')),
            None => false,
        })
    })
}

/// How a field names one request header it reads (`request.headers.user-agent`).
const NAMED_HEADER: &str = "request.headers.";

/// Whether a policy that reads `fields` reads request header `name`: by its name, or
/// all headers (all its fields, `request` or `request.headers` whole).
pub fn reads_header(fields: Option<&[String]>, name: &str) -> bool {
    fields.is_none_or(|fields| {
        fields.iter().any(|f| {
            f == "request" || f == "request.headers" || f.strip_prefix(NAMED_HEADER) == Some(name)
        })
    })
}

/// Whether a policy that reads `fields` (as [`PolicySet::input_fields`] gives them;
/// `None`: everything) reads `path`, a top-level field (`"directives"`) or a member
/// (`"directives.user"`): named itself, inside a field read whole, or, for a field, through
/// any of its members.
pub fn reads(fields: Option<&[String]>, path: &str) -> bool {
    let below = |inner: &str, outer: &str| {
        inner
            .strip_prefix(outer)
            .is_some_and(|rest| rest.starts_with('.'))
    };
    fields.is_none_or(|fields| {
        fields
            .iter()
            .any(|f| f == path || below(path, f) || below(f, path))
    })
}

fn input_value_reusing(
    p: &InputParts<'_>,
    fields: Option<&[String]>,
    mut repeated: Option<&mut RepeatedInput>,
) -> Value {
    let wants = |f: &str| reads(fields, f);
    // `request` and `directives` with only the members read (see `REPEATING_MEMBERS`).
    // (Members not read are built and dropped: small values, and the filter gathers the
    // headers only for a policy that reads them.)
    let members = |field: &str, all: Vec<(&'static str, Value)>| {
        let read = all
            .into_iter()
            .filter(|(m, _)| reads_member(fields, field, m))
            .collect();
        object(read)
    };
    let mut input = vec![("version", Value::from(INPUT_VERSION))];
    if wants("request") {
        let headers = p
            .headers
            .iter()
            .filter(|(k, _)| reads_header(fields, k))
            .map(|(k, v)| (Value::from(k.as_str()), Value::from(v.as_str())));
        input.push((
            "request",
            members(
                "request",
                vec![
                    ("id", Value::from(p.request_id)),
                    ("method", Value::from(p.method)),
                    ("path", Value::from(p.path)),
                    ("endpoint", Value::from(p.endpoint)),
                    ("api", Value::from(p.api)),
                    ("headers", map(headers.collect())),
                ],
            ),
        ));
    }
    if wants("caller") {
        let caller = match (repeated.as_deref_mut(), p.caller.key_id) {
            // A key's caller object depends on the key alone (a token's carries its claims).
            (Some(r), Some(id)) if p.caller.kind == "api_key" => match r.callers.get(id) {
                Some(v) => v.clone(),
                None => {
                    if r.callers.len() >= CACHED_CALLERS {
                        r.callers.clear();
                    }
                    let v = caller_value(&p.caller);
                    r.callers.insert(id.to_string(), v.clone());
                    v
                }
            },
            _ => caller_value(&p.caller),
        };
        input.push(("caller", caller));
    }
    if wants("directives") {
        let meta = |k: &str| optional(p.caller.metadata.get(k).map(String::as_str));
        input.push((
            "directives",
            members(
                "directives",
                vec![
                    ("user", optional(p.user)),
                    ("run_id", Value::from(p.run_id)),
                    ("tags", strings(p.tags)),
                    ("policy", Value::from(p.policy)),
                    ("locale", optional(p.locale)),
                    ("plan", meta("plan")),
                    ("region", meta("region")),
                ],
            ),
        ));
    }
    if wants("model") {
        input.push((
            "model",
            object(vec![
                ("requested", Value::from(p.model)),
                ("is_tier", Value::from(p.is_tier)),
            ]),
        ));
    }
    if wants("params") {
        let q = &p.params;
        input.push((
            "params",
            object(vec![
                ("stream", Value::from(q.stream)),
                ("max_tokens", q.max_tokens.map_or(Value::Null, Value::from)),
                (
                    "temperature",
                    q.temperature.map_or(Value::Null, Value::from),
                ),
                ("messages", Value::from(q.messages)),
                ("input_chars", Value::from(q.input_chars)),
                ("tools", strings(&q.tools)),
            ]),
        ));
    }
    if wants("time") {
        let time = match repeated {
            Some(r) => match &r.time {
                Some((unix, v)) if *unix == p.now_unix => v.clone(),
                _ => r
                    .time
                    .insert((p.now_unix, time_value(p.now_unix)))
                    .1
                    .clone(),
            },
            None => time_value(p.now_unix),
        };
        input.push(("time", time));
    }
    if let Some(usage) = p.usage.as_ref().filter(|_| wants("usage")) {
        input.push(("usage", Value::from(usage.clone())));
    }
    if let Some(messages) = p.messages.as_ref().filter(|_| wants("messages")) {
        let messages = messages.iter().map(|(role, text)| {
            object(vec![
                ("role", Value::from(role.as_str())),
                ("text", Value::from(text.as_str())),
            ])
        });
        input.push(("messages", Value::from(messages.collect::<Vec<_>>())));
    }
    object(input)
}

/// The caller object of the input.
fn caller_value(c: &CallerInput<'_>) -> Value {
    let metadata = c
        .metadata
        .iter()
        .map(|(k, v)| (Value::from(k.as_str()), Value::from(v.as_str())));
    object(vec![
        ("kind", Value::from(c.kind)),
        ("key_id", optional(c.key_id)),
        ("team", optional(c.team)),
        ("project", optional(c.project)),
        ("scopes", strings(c.scopes)),
        ("metadata", map(metadata.collect())),
        (
            "claims",
            c.claims.map_or(Value::Null, |j| Value::from(j.clone())),
        ),
    ])
}

// Plain functions over Vecs, not generics, keep the module small (one copy each).
fn object(fields: Vec<(&str, Value)>) -> Value {
    map(fields
        .into_iter()
        .map(|(k, v)| (Value::from(k), v))
        .collect())
}

fn map(pairs: Vec<(Value, Value)>) -> Value {
    Value::from(pairs.into_iter().collect::<BTreeMap<_, _>>())
}

fn optional(s: Option<&str>) -> Value {
    s.map_or(Value::Null, Value::from)
}

fn strings(items: &[String]) -> Value {
    Value::from(
        items
            .iter()
            .map(|s| Value::from(s.as_str()))
            .collect::<Vec<_>>(),
    )
}

/// The time, broken down in UTC, as JSON.
pub fn time_parts(unix: u64) -> serde_json::Value {
    to_json(&time_value(unix)).unwrap_or_default()
}

/// The time, broken down in UTC (Rego in wasm has no clock builtins).
fn time_value(unix: u64) -> Value {
    let days = unix / 86_400;
    let secs = unix % 86_400;
    // 1970-01-01 was a Thursday; ISO weekday: Monday = 1 ... Sunday = 7.
    let weekday = (days + 3) % 7 + 1;
    let rfc3339 = humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix),
    )
    .to_string();
    object(vec![
        ("unix", Value::from(unix)),
        ("date", optional(rfc3339.get(..10))),
        ("rfc3339", Value::from(rfc3339)),
        ("weekday", Value::from(weekday)),
        ("hour", Value::from(secs / 3600)),
        ("minute", Value::from(secs % 3600 / 60)),
    ])
}

/// Inputs every policy is evaluated on when it is compiled: one with nothing set, and one
/// with every field a request can carry.
/// Two inputs to run each policy on before any request: an empty request, and one with
/// every field set; each built with only `fields` (`None`: all of them).
fn probe_inputs(fields: Option<&[String]>) -> [Value; 2] {
    let empty = input_value(
        &InputParts {
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
        },
        fields,
    );
    let tags = ["probe".to_string()];
    let scopes = ["chat".to_string(), "model:*".to_string()];
    let metadata = BTreeMap::from([("plan".to_string(), "probe".to_string())]);
    let full = input_value(
        &InputParts {
            request_id: "prepare",
            method: "POST",
            path: "/v1/messages",
            endpoint: "messages",
            api: "anthropic",
            headers: vec![("user-agent".into(), "probe".into())],
            caller: CallerInput {
                kind: "api_key",
                key_id: Some("probe"),
                team: Some("probe"),
                project: Some("probe"),
                scopes: &scopes,
                metadata: &metadata,
                claims: None,
            },
            user: Some("probe"),
            run_id: "probe",
            tags: &tags,
            locale: Some("en"),
            policy: "probe",
            model: "balanced",
            is_tier: true,
            params: ParamsInput {
                stream: true,
                max_tokens: Some(1000),
                temperature: Some(0.5),
                messages: 2,
                input_chars: 30,
                tools: vec!["probe".into()],
            },
            messages: Some(vec![
                ("system".into(), "You are a probe.".into()),
                ("user".into(), "Hello, probe 4111 1111 1111 1111".into()),
            ]),
            now_unix: 1_795_336_805,
            usage: None,
        },
        fields,
    );
    [empty, full]
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
        let metadata = plan
            .map(|p| BTreeMap::from([("plan".to_string(), p.to_string())]))
            .unwrap_or_default();
        build_input(&InputParts {
            caller: CallerInput {
                kind: "api_key",
                team: Some(team),
                metadata: &metadata,
                ..Default::default()
            },
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
        let d = s
            .evaluate("demo", Value::from(input("interns", "best", None)))
            .unwrap();
        assert_eq!(
            d.denial().unwrap(),
            Denial {
                reason: "no best for interns".into(),
                status: 403,
                retry_after: None
            }
        );
        assert_eq!(d.tags, vec!["reviewed"]);
        let d = s
            .evaluate("demo", Value::from(input("noisy", "fast", None)))
            .unwrap();
        assert_eq!(d.denial().unwrap().status, 429);
        assert_eq!(d.denial().unwrap().retry_after, Some(30));
        let d = s
            .evaluate("demo", Value::from(input("support", "best", Some("free"))))
            .unwrap();
        assert!(d.denial().is_none());
        assert_eq!((d.tier.as_deref(), d.max_tokens), (Some("fast"), Some(256)));
        let d = s
            .evaluate("demo", Value::from(input("other", "best", None)))
            .unwrap();
        assert_eq!((d.tier, d.max_tokens), (None, None));
        assert!(s
            .evaluate("nope", Value::from(input("x", "y", None)))
            .is_err());
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
            s.evaluate("dlp", Value::from(i))
                .unwrap()
                .denial()
                .unwrap()
                .reason,
            "card"
        );
    }

    #[test]
    fn decisions_are_read_from_the_vm_value() {
        let of = |j: serde_json::Value| decision_of(&Value::from(j));
        let d = of(json!({
            "deny": ["b reason", {"reason": "a reason", "status": 429, "retry_after": 30},
                     {"status": 429.0}, {"reason": 5}],
            "tier": ["fast"], "max_tokens": [256], "tags": ["x", "y"],
        }))
        .unwrap();
        let got: Vec<(&str, u32, Option<u64>)> = d
            .deny
            .iter()
            .map(|d| (d.reason.as_str(), d.status, d.retry_after))
            .collect();
        // Sorted by reason; Rego numbers are numbers (`429.0` is 429).
        assert_eq!(
            got,
            [
                ("a reason", 429, Some(30)),
                ("b reason", 403, None),
                ("denied by policy", 429, None),
                ("denied by policy", 403, None),
            ]
        );
        assert_eq!((d.tier.as_deref(), d.max_tokens), (Some("fast"), Some(256)));
        assert_eq!(d.tags, ["x", "y"]);
        let allow = of(json!({"deny": [], "tier": [null], "max_tokens": [], "tags": []})).unwrap();
        assert_eq!(allow, Decision::default());
        // An undefined entry counts as absent.
        let mut with_undefined =
            Value::from(json!({"deny": [], "tier": [], "max_tokens": [], "tags": []}));
        if let Value::Object(o) = &mut with_undefined {
            Rc::make_mut(o).insert(Value::from("tier"), Value::from(vec![Value::Undefined]));
        }
        assert_eq!(decision_of(&with_undefined).unwrap(), Decision::default());
        for (bad, says) in [
            (
                json!({"deny": [{"status": 500}], "tier": [], "max_tokens": [], "tags": []}),
                "500",
            ),
            (
                json!({"deny": [1], "tier": [], "max_tokens": [], "tags": []}),
                "strings or objects",
            ),
            (
                json!({"deny": [], "tier": [1], "max_tokens": [], "tags": []}),
                "tier must be a string",
            ),
            (
                json!({"deny": [], "tier": ["a", "b"], "max_tokens": [], "tags": []}),
                "one value",
            ),
            (
                json!({"deny": [], "tier": [], "max_tokens": [0], "tags": []}),
                "positive integer",
            ),
            (
                json!({"deny": [], "tier": [], "max_tokens": [2.5], "tags": []}),
                "positive integer",
            ),
            (
                json!({"deny": [], "tier": [], "max_tokens": [], "tags": [true]}),
                "tags must be strings",
            ),
            (
                json!({"deny": [], "tier": [], "max_tokens": []}),
                "missing field `tags`",
            ),
            (
                json!({"deny": "x", "tier": [], "max_tokens": [], "tags": []}),
                "not a list",
            ),
            (json!(["not", "an", "object"]), "unexpected policy result"),
        ] {
            let e = of(bad.clone()).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn bad_results_are_errors() {
        let bad = "package weir.policy.bad\n\ndeny contains {\"reason\": \"x\", \"status\": 500}\n";
        let mut s = PolicySet::compile(&[module("b.rego", bad)], &json!(null), None);
        // The bad status is found when the policy is prepared.
        assert!(s.as_mut().err().is_some_and(|e| e.contains("500")));
    }

    /// The sample policies and data shipped in `policies/`.
    fn samples() -> (Vec<PolicyModule>, serde_json::Value) {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
        let modules = ["lib/baseline.rego", "standard.rego", "dlp.rego"]
            .iter()
            .map(|f| module(f, &std::fs::read_to_string(dir.join(f)).unwrap()))
            .collect();
        let data =
            serde_json::from_str(&std::fs::read_to_string(dir.join("data.json")).unwrap()).unwrap();
        (modules, data)
    }

    /// The samples as `weir bundle` ships them.
    fn bundled_samples() -> (BTreeMap<String, BundledPolicy>, serde_json::Value) {
        let (modules, data) = samples();
        let set = PolicySet::compile(&modules, &data, None).unwrap();
        (set.bundled().unwrap(), data)
    }

    #[test]
    fn imported_rules_are_called_directly() {
        // The samples read `baseline.deny` through `import data.weir.lib.baseline`. Compiled
        // as written, the VM builds the whole baseline package per request to index it
        // (a virtual-document lookup); spelled out, it calls the rules.
        let (modules, data) = samples();
        let lookups = |set: &PolicySet, name: &str| {
            let program = set.policies[name].program.as_ref().unwrap();
            program
                .instruction_data
                .virtual_data_document_lookup_params
                .len()
        };
        let set = PolicySet::compile(&modules, &data, None).unwrap();
        for name in ["standard", "dlp"] {
            assert_eq!(lookups(&set, name), 0, "{name}");
        }
        let (mut engine, _) = new_engine(
            modules.iter().map(|m| (m.path.as_str(), m.text.as_str())),
            &data_value(&data),
        )
        .unwrap();
        let as_written = compile_program(&mut engine, "standard").unwrap();
        assert!(!as_written
            .instruction_data
            .virtual_data_document_lookup_params
            .is_empty());
    }

    #[test]
    fn bundled_programs_decide_as_the_interpreter_does() {
        let (modules, data) = samples();
        let mut reference = PolicySet::compile(&modules, &data, Some("standard")).unwrap();
        assert!(
            reference.interpreted().is_empty(),
            "{:?}",
            reference.interpreted()
        );
        let bundled = reference.bundled().unwrap();
        assert_eq!(bundled.keys().collect::<Vec<_>>(), ["dlp", "standard"]);
        assert!(bundled["dlp"].needs_messages && !bundled["standard"].needs_messages);
        // What the filter runs: the programs alone, through JSON as in the bundle.
        let shipped = serde_json::from_str(&serde_json::to_string(&bundled).unwrap()).unwrap();
        let mut filter = PolicySet::load(&shipped, &data, Some("standard")).unwrap();
        assert_eq!(filter.names(), ["dlp", "standard"]);
        let (mut denied, mut downgraded, mut capped, mut total) = (0, 0, 0, 0);
        for plan in ["demo", "free", "pro", "enterprise", "unknown"] {
            for team in ["demo", "support", "contractors"] {
                for model in ["fast", "balanced", "best", "local", "gpt-4o"] {
                    // A Monday at 03:00 and at 12:00 UTC (business hours are 8-18).
                    for unix in [1_795_402_800_u64, 1_795_435_200] {
                        for text in [
                            "hello",
                            "my card is 4111 1111 1111 1111",
                            "key sk-proj-abcdefghijklmnopqrstuvwx",
                        ] {
                            let mut i = input(team, model, Some(plan));
                            i["time"] = time_parts(unix);
                            i["messages"] = json!([{"role": "user", "text": text}]);
                            for policy in ["standard", "dlp"] {
                                let want = reference.interpret(policy, Value::from(i.clone()));
                                // The filter builds only the fields the policies read.
                                let mut pruned = i.clone();
                                let fields = filter.input_fields(policy).unwrap().to_vec();
                                pruned
                                    .as_object_mut()
                                    .unwrap()
                                    .retain(|k, _| k == "version" || fields.contains(k));
                                assert!(pruned.as_object().unwrap().len() < 9);
                                let got = filter.evaluate(policy, Value::from(pruned));
                                assert_eq!(
                                    got, want,
                                    "{policy} {plan} {team} {model} {unix} {text}"
                                );
                                let d = got.unwrap();
                                total += 1;
                                denied += usize::from(d.denial().is_some());
                                downgraded += usize::from(d.tier.is_some());
                                capped += usize::from(d.max_tokens.is_some());
                            }
                        }
                    }
                }
            }
        }
        // The grid reaches every kind of decision.
        assert!(
            denied > 0 && downgraded > 0 && capped > 0 && denied < total,
            "{denied} {downgraded} {capped} {total}"
        );
    }

    #[test]
    fn a_policy_the_vm_cannot_compile_is_refused_for_the_filter() {
        // `with` is not compiled by regorus's VM.
        let with = "package weir.policy.with\n\ndeny contains \"x\" if {\n\tinput.caller.team == \"t\"\n\tnot data.allowed with data.allowed as false\n}\n";
        let mut s = PolicySet::compile(&[module("w.rego", with)], &json!({}), None).unwrap();
        let interpreted = s.interpreted();
        assert_eq!(interpreted.len(), 1);
        assert!(
            interpreted[0].1.contains("cannot compile"),
            "{interpreted:?}"
        );
        let e = s.bundled().unwrap_err();
        assert!(e.contains("policy with") && e.contains("VM"), "{e}");
        // On the host (weir policy eval) the interpreter still runs it.
        let d = s
            .evaluate("with", Value::from(input("t", "fast", None)))
            .unwrap();
        assert_eq!(d.denial().unwrap().reason, "x");
    }

    #[test]
    fn bad_bundled_programs_are_refused() {
        let (good, data) = bundled_samples();
        let mut bad = good.clone();
        bad.get_mut("dlp").unwrap().program = "bm90IGEgcHJvZ3JhbQ==".into();
        assert!(PolicySet::load(&bad, &data, None)
            .unwrap_err()
            .contains("policy dlp"));
        let mut bad = good.clone();
        bad.get_mut("dlp").unwrap().program = "%%%".into();
        assert!(PolicySet::load(&bad, &data, None).is_err());
        let e = PolicySet::load(&good, &data, Some("missing")).unwrap_err();
        assert!(e.contains("\"missing\" is not defined"), "{e}");
        let mut bad = good;
        let program = bad.remove("dlp").unwrap();
        bad.insert("Not-A-Name".into(), program);
        assert!(PolicySet::load(&bad, &data, None).is_err());
    }

    #[test]
    fn the_input_fields_a_policy_reads_are_found() {
        let (modules, _) = samples();
        let fields =
            crate::rego_text::referenced_input_fields(modules.iter().map(|m| m.text.as_str()));
        assert_eq!(
            fields.as_deref(),
            Some(&["caller", "messages", "model", "time"].map(String::from)[..])
        );
        // Each policy gets the list of the modules it uses (`standard` does not read the
        // messages `dlp` does); the set carries it to the filter, and the input is built
        // with those fields only.
        let (bundled, data) = bundled_samples();
        let loaded = PolicySet::load(&bundled, &data, None).unwrap();
        assert_eq!(
            loaded.input_fields("dlp"),
            Some(&["caller", "messages", "model", "time"].map(String::from)[..])
        );
        let fields = loaded.input_fields("standard").unwrap();
        let mut i = InputParts {
            headers: vec![("user-agent".into(), "x".into())],
            usage: Some(json!({"key": {}})),
            messages: Some(vec![("user".into(), "hi".into())]),
            ..Default::default()
        };
        i.caller.kind = "api_key";
        let built = to_json(&input_value(&i, Some(fields))).unwrap();
        let mut keys: Vec<&str> = built
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(keys, ["caller", "model", "time", "version"]);
        assert_eq!(built["caller"], build_input(&i)["caller"]);
        let all = build_input(&i);
        assert_eq!(all.as_object().unwrap().len(), 9);
    }

    #[test]
    fn decisions_for_repeating_input_are_kept() {
        // Keys' requests are kept by key and model; others' (no key id) by input.
        for by_key in [true, false] {
            kept_decisions(by_key);
        }
    }

    fn kept_decisions(by_key: bool) {
        let (bundled, data) = bundled_samples();
        let mut set = PolicySet::load(&bundled, &data, None).unwrap();
        // `standard` reads the caller, the model and the time; `dlp` the messages too.
        assert!(set.caches_decisions("standard"));
        assert!(!set.caches_decisions("dlp"));
        let parts = |team: &'static str, model: &'static str, now_unix: u64| {
            let mut p = InputParts {
                model,
                now_unix,
                policy: "standard",
                ..Default::default()
            };
            p.caller.kind = "api_key";
            p.caller.team = Some(team);
            // One key per team.
            p.caller.key_id = by_key.then_some(team);
            p
        };
        fn decide(set: &mut PolicySet, parts: &InputParts<'_>) -> (Decision, bool) {
            set.decide("standard", parts).unwrap()
        }
        // Support's cap, then the same input again: the same decision, from the cache.
        let monday_10h = 1_795_428_000;
        let support = parts("support", "balanced", monday_10h);
        let first = decide(&mut set, &support);
        assert!(!first.1);
        assert_eq!(first.0.max_tokens, Some(256));
        let again = decide(&mut set, &support);
        assert_eq!(again, (first.0.clone(), true));
        // The filter looks a key's decision up before building any input: found for the same
        // key, model and second only (the next second forgets it).
        let by_key_lookup = |set: &mut PolicySet, model: &str, second: u64| {
            set.kept_for_key("standard", "support", model, second)
        };
        assert_eq!(
            by_key_lookup(&mut set, "balanced", monday_10h),
            by_key.then(|| first.0.clone())
        );
        assert_eq!(by_key_lookup(&mut set, "best", monday_10h), None);
        // Another team, another second, another model: each decided afresh, and right.
        let other = decide(&mut set, &parts("research", "balanced", monday_10h));
        assert_eq!((other.0.max_tokens, other.1), (None, false));
        assert_eq!(by_key_lookup(&mut set, "balanced", monday_10h + 1), None);
        let later = parts("support", "balanced", monday_10h + 1);
        assert!(!decide(&mut set, &later).1);
        let night = parts("contractors", "best", monday_10h + 12 * 3600);
        let refused = decide(&mut set, &night);
        assert!(!refused.1 && refused.0.denial().is_some());
        assert_eq!(decide(&mut set, &night), (refused.0, true));
        let best = parts("contractors", "balanced", monday_10h + 12 * 3600);
        assert_eq!(decide(&mut set, &best).0.denial(), None);
        // A new second forgets the last one's decisions; in one second, every key's and
        // model's decision is kept, each its own.
        assert!(!decide(&mut set, &support).1);
        let research = parts("research", "balanced", monday_10h);
        assert!(!decide(&mut set, &research).1);
        assert_eq!(decide(&mut set, &support), (first.0.clone(), true));
        assert_eq!(decide(&mut set, &research), (other.0.clone(), true));
        let kept = |set: &PolicySet| set.policies["standard"].decisions.as_ref().unwrap().len;
        assert_eq!(kept(&set), 2);
        // Never more than the bound, whatever the traffic.
        let models: Vec<String> = (0..CACHED_DECISIONS + 10)
            .map(|i| format!("m{i}"))
            .collect();
        for model in &models {
            let mut p: InputParts<'_> = parts("support", "fast", monday_10h);
            p.model = model;
            set.decide("standard", &p).unwrap();
        }
        assert!(kept(&set) <= CACHED_DECISIONS);
        // Off, nothing is kept.
        set.set_decision_cache(false);
        assert!(!set.caches_decisions("standard"));
        assert!(!decide(&mut set, &support).1);
        assert!(!decide(&mut set, &support).1);
    }

    /// Values of every kind, some sharing parts (one allocation) and some equal by content
    /// only, for the order of kept inputs.
    fn values_sharing_parts() -> Vec<Value> {
        let json = |t: &str| Value::from_json_str(t).unwrap();
        let caller = json(r#"{"key_id": "a", "team": "t", "scopes": ["x", "y"], "n": 1}"#);
        let caller_copy = json(r#"{"key_id": "a", "team": "t", "scopes": ["x", "y"], "n": 1}"#);
        let other_caller = json(r#"{"key_id": "a", "team": "t", "scopes": ["x", "z"], "n": 1}"#);
        let input = |caller: &Value, model: &str, second: u64| {
            object(vec![
                ("version", Value::from(INPUT_VERSION)),
                ("caller", caller.clone()),
                ("model", object(vec![("requested", Value::from(model))])),
                ("time", object(vec![("unix", Value::from(second))])),
            ])
        };
        let mut values = vec![
            Value::Null,
            Value::Undefined,
            Value::from(true),
            Value::from(2u64),
            Value::from("s"),
            json("[1, 2]"),
            json("[1, {\"a\": 2}]"),
            json("{}"),
            json(r#"{"a": 1}"#),
            json(r#"{"a": 1, "b": 2}"#),
            json(r#"{"b": 1}"#),
            caller.clone(),
            caller_copy.clone(),
            other_caller.clone(),
        ];
        for c in [&caller, &caller_copy, &other_caller] {
            for model in ["balanced", "best"] {
                for second in [1, 2] {
                    values.push(input(c, model, second));
                }
            }
        }
        // The very same value again (every part shared).
        values.push(values[values.len() - 1].clone());
        values
    }

    #[test]
    fn kept_inputs_are_ordered_as_values() {
        let values = values_sharing_parts();
        for a in &values {
            for b in &values {
                let kept = KeptInput(a.clone()).cmp(&KeptInput(b.clone()));
                assert_eq!(kept, a.cmp(b), "{a} vs {b}");
            }
        }
    }

    proptest::proptest! {
        /// Whatever the values, kept inputs are ordered as regorus orders them (parts shared
        /// or not), so a kept decision is found for exactly the inputs equal to its own.
        #[test]
        fn kept_inputs_order_matches_values(
            a in arbitrary_json(), b in arbitrary_json(), share in proptest::bool::ANY
        ) {
            let a = Value::from(a);
            let b = Value::from(b);
            // Inputs that share their first part, or hold equal copies of it.
            let wrap = |v: &Value, part: &Value| object(vec![("caller", part.clone()), ("model", v.clone())]);
            let part = Value::from_json_str(r#"{"key_id": "k", "scopes": ["*"]}"#).unwrap();
            let part_b = if share { part.clone() } else { Value::from_json_str(r#"{"key_id": "k", "scopes": ["*"]}"#).unwrap() };
            let (x, y) = (wrap(&a, &part), wrap(&b, &part_b));
            proptest::prop_assert_eq!(KeptInput(x.clone()).cmp(&KeptInput(y.clone())), x.cmp(&y));
            proptest::prop_assert_eq!(KeptInput(a.clone()).cmp(&KeptInput(b.clone())), a.cmp(&b));
        }
    }

    /// Ways a policy may read the parts of `request` and `directives` that are built by
    /// member, each spelled as a Rego expression (with the statements it needs first).
    const MEMBER_READS: [(&str, &str); 12] = [
        ("", "input.directives.user"),
        ("", "input.directives[\"user\"]"),
        ("", "input.directives.run_id"),
        ("d := input.directives\n", "d.tags"),
        ("", "object.keys(input.directives)"),
        ("", "input.request.headers[\"user-agent\"]"),
        ("", "input.request.headers.x_team"),
        ("", "count(input.request.headers)"),
        ("some k\n", "input.request.headers[k]"),
        ("", "input.request.endpoint"),
        ("", "input.request.id"),
        ("r := input.request\n", "r.headers"),
    ];

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]
        /// Whatever a policy reads of `request` and `directives`, and however it spells it,
        /// it decides on the input built for it (only the members it reads) exactly as on
        /// the whole input document.
        #[test]
        fn policies_decide_alike_on_the_input_built_for_them(
            reads in proptest::collection::btree_set(0..MEMBER_READS.len(), 1..4),
            user in proptest::option::of("[a-c]"),
            agent in proptest::option::of("[a-c]"),
            team in proptest::option::of("[a-c]"),
            id in "[0-9]{1,2}",
        ) {
            let mut text = String::from("package weir.policy.p\n");
            for (i, &r) in reads.iter().enumerate() {
                let (before, expr) = MEMBER_READS[r];
                text += &format!("\ntags contains t if {{\n{before}t := sprintf(\"{i}:%v\", [{expr}])\n}}\n");
            }
            let mut set = PolicySet::compile(&[module("p.rego", &text)], &json!(null), None).unwrap();
            let mut headers = vec![("x-request-id".to_string(), id.clone())];
            headers.extend(agent.map(|a| ("user-agent".to_string(), a)));
            headers.extend(team.map(|t| ("x_team".to_string(), t)));
            let tags = ["t1".to_string()];
            let parts = InputParts {
                request_id: &id,
                run_id: &id,
                endpoint: "chat_completions",
                headers,
                user: user.as_deref(),
                tags: &tags,
                policy: "p",
                model: "fast",
                ..Default::default()
            };
            let built = set.input("p", &parts);
            let whole = input_value(&parts, None);
            let on_built = set.evaluate("p", built).unwrap();
            let on_whole = set.evaluate("p", whole).unwrap();
            proptest::prop_assert_eq!(on_built, on_whole, "{}", text);
        }
    }

    fn arbitrary_json() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            (-3i64..3).prop_map(serde_json::Value::from),
            "[ab]{0,2}".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
                proptest::collection::btree_map("[ab]{1,2}", inner, 0..4)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    #[test]
    fn decisions_that_depend_on_more_than_the_input_are_never_kept() {
        let compiled = |text: &str| {
            let set = PolicySet::compile(&[module("p.rego", text)], &json!(null), None).unwrap();
            PolicySet::load(&set.bundled().unwrap(), &json!(null), None).unwrap()
        };
        let repeating = "package weir.policy.p\n\ntier := \"fast\" if input.caller.team == \"a\"\n";
        assert!(compiled(repeating).caches_decisions("p"));
        // The clock, randomness and the network (not in this build of regorus, but a
        // program that calls them is never cached).
        let fields = Some(&["caller".to_string()][..]);
        for builtin in ["time.now_ns", "rand.intn", "uuid.rfc4122", "http.send"] {
            let mut program = Program::new();
            program
                .builtin_info_table
                .push(regorus::rvm::program::BuiltinInfo {
                    name: builtin.to_string(),
                    num_args: 0,
                });
            assert!(!decisions_repeat(fields, &program), "{builtin}");
        }
        let mut program = Program::new();
        program
            .builtin_info_table
            .push(regorus::rvm::program::BuiltinInfo {
                name: "sprintf".to_string(),
                num_args: 2,
            });
        assert!(decisions_repeat(fields, &program));
        assert!(!decisions_repeat(None, &program));
        for text in [
            // Input that changes with every request, or that the scanner cannot follow.
            "package weir.policy.p\n\ntags contains input.request.id\n",
            "package weir.policy.p\n\ntags contains input.directives.run_id\n",
            "package weir.policy.p\n\ntags contains \"big\" if input.params.input_chars > 10\n",
            "package weir.policy.p\n\ntags contains \"x\" if input.usage.key\n",
            "package weir.policy.p\n\ntags contains \"x\" if input[\"caller\"]\n",
            // Headers hold trace and retry ids; a field read whole holds its changing member.
            "package weir.policy.p\n\ntags contains k if some k, v in input.request.headers\n",
            "package weir.policy.p\n\ntags contains \"x\" if input.directives[\"user\"]\n",
            "package weir.policy.p\n\nd := input.directives\ntags contains \"x\" if d.user\n",
            "package weir.policy.p\n\ntags contains \"x\" if input.directives.unknown\n",
        ] {
            assert!(!compiled(text).caches_decisions("p"), "{text}");
        }
    }

    #[test]
    fn decisions_on_repeating_members_are_kept_by_input() {
        // A policy that reads the end user and the endpoint, besides the caller.
        let text = "package weir.policy.p\n\n\
                    deny contains \"mallory is blocked\" if input.directives.user == \"mallory\"\n\
                    tags contains sprintf(\"ep:%s\", [input.request.endpoint])\n\
                    max_tokens := 100 if input.caller.team == \"t\"\n";
        let set = PolicySet::compile(&[module("p.rego", text)], &json!(null), None).unwrap();
        let mut set = PolicySet::load(&set.bundled().unwrap(), &json!(null), None).unwrap();
        assert_eq!(
            set.input_fields("p").unwrap(),
            ["caller", "directives.user", "request.endpoint"]
        );
        assert!(set.caches_decisions("p"));
        let parts = |user: Option<&'static str>, id: &'static str, endpoint: &'static str| {
            let mut p = InputParts {
                request_id: id,
                run_id: id,
                endpoint,
                user,
                model: "fast",
                now_unix: 1_795_428_000,
                policy: "p",
                ..Default::default()
            };
            p.caller.kind = "api_key";
            p.caller.key_id = Some("k");
            p.caller.team = Some("t");
            p
        };
        // Only the members read are built: not the request id, not the run id.
        let built = set.input("p", &parts(Some("alice"), "r1", "chat_completions"));
        assert_eq!(
            to_json(&built).unwrap()["directives"],
            json!({"user": "alice"})
        );
        assert_eq!(
            to_json(&built).unwrap()["request"],
            json!({"endpoint": "chat_completions"})
        );
        let mut decide = |user, id, endpoint| set.decide("p", &parts(user, id, endpoint)).unwrap();
        let alice = decide(Some("alice"), "r1", "chat_completions");
        assert_eq!(
            (alice.0.denial(), alice.0.max_tokens, alice.1),
            (None, Some(100), false)
        );
        assert_eq!(alice.0.tags, ["ep:chat_completions"]);
        // Another request (id and run) of the same user: the kept decision.
        assert_eq!(
            decide(Some("alice"), "r2", "chat_completions"),
            (alice.0.clone(), true)
        );
        // Another user, another endpoint, no user: each decided afresh, and right.
        let mallory = decide(Some("mallory"), "r3", "chat_completions");
        assert!(!mallory.1);
        assert_eq!(mallory.0.denial().unwrap().reason, "mallory is blocked");
        let kept = decide(Some("mallory"), "r4", "chat_completions");
        assert!(kept.1 && kept.0.denial().is_some());
        let messages = decide(Some("alice"), "r5", "messages");
        assert_eq!(
            (messages.0.tags.clone(), messages.1),
            (vec!["ep:messages".to_string()], false)
        );
        assert!(!decide(None, "r6", "chat_completions").1);
        assert_eq!(
            decide(Some("alice"), "r7", "chat_completions"),
            (alice.0.clone(), true)
        );
        // Its decisions depend on more than the key and model: never found by key alone.
        assert_eq!(set.kept_for_key("p", "k", "fast", 1_795_428_000), None);
    }

    #[test]
    fn an_input_without_a_field_the_policy_reads_is_caught_at_compile_time() {
        // The probe with every field set names the user "probe", whom this policy refuses.
        let text =
            "package weir.policy.p\n\ndeny contains \"no\" if input.directives.user == \"probe\"\n";
        let mut set = PolicySet::compile(&[module("p.rego", text)], &json!(null), None).unwrap();
        assert_eq!(set.input_fields("p").unwrap(), ["directives.user"]);
        let engine = set.engine.as_mut().unwrap();
        let references: Vec<(Value, Decision)> = probe_inputs(None)
            .into_iter()
            .map(|input| (input.clone(), interpret_on(engine, "p", input).unwrap()))
            .collect();
        assert!(references[1].1.denial().is_some());
        let found = ["directives.user".to_string()];
        assert!(decides_alike_on_built_input(
            engine,
            "p",
            Some(&found),
            &references
        ));
        // Fields a scanner that misread a spelling would give: the user is not built, the
        // decisions differ, and `compile` would build every field instead.
        let missed = ["caller".to_string(), "directives.run_id".to_string()];
        assert!(!decides_alike_on_built_input(
            engine,
            "p",
            Some(&missed),
            &references
        ));
        assert!(decides_alike_on_built_input(engine, "p", None, &references));
    }

    #[test]
    fn decisions_on_headers_read_by_name_are_kept() {
        let text = "package weir.policy.p\n\n\
                    deny contains \"no curl\" if startswith(input.request.headers[\"user-agent\"], \"curl\")\n";
        let set = PolicySet::compile(&[module("p.rego", text)], &json!(null), None).unwrap();
        let mut set = PolicySet::load(&set.bundled().unwrap(), &json!(null), None).unwrap();
        assert_eq!(
            set.input_fields("p").unwrap(),
            ["request.headers.user-agent"]
        );
        assert!(set.caches_decisions("p"));
        let parts = |agent: &str, id: &str| InputParts {
            headers: vec![
                ("user-agent".to_string(), agent.to_string()),
                ("x-request-id".to_string(), id.to_string()),
            ],
            model: "fast",
            now_unix: 1_795_428_000,
            ..Default::default()
        };
        // Only the header read is built: not Envoy's request id, new on every request.
        let built = to_json(&set.input("p", &parts("curl/8", "r1"))).unwrap();
        assert_eq!(
            built["request"],
            json!({"headers": {"user-agent": "curl/8"}})
        );
        let curl = set.decide("p", &parts("curl/8", "r1")).unwrap();
        assert!(!curl.1 && curl.0.denial().is_some());
        assert_eq!(
            set.decide("p", &parts("curl/8", "r2")).unwrap(),
            (curl.0, true)
        );
        let sdk = set.decide("p", &parts("OpenAI/Python", "r3")).unwrap();
        assert!(!sdk.1 && sdk.0.denial().is_none());
        assert_eq!(
            set.decide("p", &parts("OpenAI/Python", "r4")).unwrap(),
            (sdk.0, true)
        );
        // Read whole, every header is built.
        let fields = ["request.headers".to_string()];
        let all = to_json(&input_value(&parts("a", "r5"), Some(&fields))).unwrap();
        assert_eq!(all["request"]["headers"]["x-request-id"], "r5");
        assert!(reads_header(Some(&fields), "x-request-id") && reads_header(None, "a"));
        let named = ["request.headers.user-agent".to_string()];
        assert!(reads_header(Some(&named), "user-agent") && !reads_header(Some(&named), "user"));
    }

    #[test]
    fn reused_input_parts_are_the_parts_built_afresh() {
        let (modules, data) = samples();
        let mut set = PolicySet::compile(&modules, &data, None).unwrap();
        fn parts<'a>(id: &'a str, meta: &'a BTreeMap<String, String>, now: u64) -> InputParts<'a> {
            InputParts {
                caller: CallerInput {
                    kind: "api_key",
                    key_id: Some(id),
                    team: Some("t"),
                    metadata: meta,
                    ..Default::default()
                },
                model: "best",
                now_unix: now,
                ..Default::default()
            }
        }
        let metadata = |plan: &str| BTreeMap::from([("plan".to_string(), plan.to_string())]);
        let (gold, free) = (&metadata("gold"), &metadata("free"));
        for (id, meta, now) in [
            ("a", gold, 100),
            ("b", free, 100),
            ("a", gold, 100),
            ("a", gold, 101),
            ("b", free, 160),
        ] {
            let p = parts(id, meta, now);
            let fields = set.input_fields("standard").map(<[String]>::to_vec);
            assert_eq!(
                set.input("standard", &p),
                input_value(&p, fields.as_deref()),
                "{id} {now}"
            );
            // A token's caller carries its claims: never reused.
            let claims = json!({"sub": id});
            let mut jwt = p.clone();
            jwt.caller.kind = "jwt";
            jwt.caller.claims = Some(&claims);
            assert_eq!(
                set.input("standard", &jwt),
                input_value(&jwt, fields.as_deref())
            );
        }
        assert_eq!(set.repeated.callers.len(), 2);
        // Bounded, whatever the number of keys.
        let ids: Vec<String> = (0..CACHED_CALLERS + 10).map(|i| format!("k{i}")).collect();
        for id in &ids {
            let mut p = parts("x", gold, 100);
            p.caller.key_id = Some(id);
            set.input("standard", &p);
        }
        assert!(set.repeated.callers.len() <= CACHED_CALLERS);
    }

    #[test]
    fn the_input_document_keeps_its_documented_shape() {
        // Field names and types are Weir's stable interface (README "Policies").
        let tags = ["a".to_string()];
        let scopes = ["chat".to_string()];
        let metadata = BTreeMap::from([("region".to_string(), "eu".to_string())]);
        let claims = json!({"sub": "u1", "groups": ["x"]});
        let built = build_input(&InputParts {
            request_id: "r1",
            method: "POST",
            path: "/v1/messages",
            endpoint: "messages",
            api: "anthropic",
            headers: vec![("user-agent".into(), "sdk".into())],
            caller: CallerInput {
                kind: "jwt",
                key_id: Some("u1"),
                team: Some("t"),
                project: None,
                scopes: &scopes,
                metadata: &metadata,
                claims: Some(&claims),
            },
            user: Some("alice"),
            run_id: "run",
            tags: &tags,
            locale: Some("de"),
            policy: "standard",
            model: "best",
            is_tier: true,
            params: ParamsInput {
                stream: true,
                max_tokens: Some(10),
                temperature: Some(0.5),
                messages: 1,
                input_chars: 2,
                tools: vec!["f".into()],
            },
            messages: Some(vec![("user".into(), "hi".into())]),
            now_unix: 1_795_336_805,
            usage: Some(json!({"key": {"requests_per_minute": {"used": 1}}})),
        });
        assert_eq!(
            built,
            json!({
                "version": 1,
                "request": {"id": "r1", "method": "POST", "path": "/v1/messages", "endpoint": "messages",
                            "api": "anthropic", "headers": {"user-agent": "sdk"}},
                "caller": {"kind": "jwt", "key_id": "u1", "team": "t", "project": null, "scopes": ["chat"],
                           "metadata": {"region": "eu"}, "claims": {"sub": "u1", "groups": ["x"]}},
                "directives": {"user": "alice", "run_id": "run", "tags": ["a"], "policy": "standard",
                               "locale": "de", "plan": null, "region": "eu"},
                "model": {"requested": "best", "is_tier": true},
                "params": {"stream": true, "max_tokens": 10, "temperature": 0.5, "messages": 1,
                           "input_chars": 2, "tools": ["f"]},
                "time": {"unix": 1_795_336_805_u64, "rfc3339": "2026-11-22T08:40:05Z", "date": "2026-11-22",
                         "weekday": 7, "hour": 8, "minute": 40},
                "usage": {"key": {"requests_per_minute": {"used": 1}}},
                "messages": [{"role": "user", "text": "hi"}],
            })
        );
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
