//! The `weir` CLI: checks the operator's configuration and bundles it into the filter's
//! plugin configuration (an ECDS resource Envoy loads and reloads from a file).

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use serde_json::json;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use weir::config::{compile_keys, AuthStyle, Config, Secret};
use weir::keys::{hash_secret_hex, SECRET_PREFIX};

#[derive(Parser)]
#[command(
    name = "weir",
    version,
    about = "Weir AI gateway: configuration and key tools"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check a configuration file (provider credentials are resolved from the environment).
    Check {
        /// The Weir configuration (TOML).
        config: PathBuf,
    },
    /// Write the filter configuration Envoy loads: an ECDS resource file.
    Bundle {
        /// The Weir configuration (TOML).
        config: PathBuf,
        /// Path of weir.wasm, as Envoy will see it.
        #[arg(long)]
        wasm: PathBuf,
        /// Output file; replaced atomically, so Envoy never reads half of it.
        #[arg(long)]
        out: PathBuf,
        /// Name of the filter resource (the HTTP filter's `config_discovery` name).
        #[arg(long, default_value = "weir")]
        name: String,
        /// Also write the per-attempt upstream filter's resource (`weir-upstream`), for
        /// failover tiers.
        #[arg(long)]
        upstream_out: Option<PathBuf>,
    },
    /// Key tools.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Policy tools: the same Rego engine and input builder as the filter.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Run every `test_*` rule in the policy directory (like `opa test`).
    Test {
        /// The policy directory (default: `policy.dir` of the configuration).
        #[arg(long)]
        dir: Option<PathBuf>,
        #[arg(long, short, default_value = DEFAULT_CONFIG, env = "WEIR_CONFIG")]
        config: PathBuf,
    },
    /// Print the decision a policy makes for a request body (JSON file).
    Eval {
        #[arg(long)]
        policy: String,
        /// The request body as the client would send it.
        #[arg(long)]
        input: PathBuf,
        /// Evaluate as this key (its team, project, scopes and metadata).
        #[arg(long)]
        key: Option<String>,
        /// `openai` (chat completions) or `anthropic` (messages).
        #[arg(long, default_value = "openai")]
        api: String,
        /// The time to evaluate at (RFC 3339; default: now).
        #[arg(long)]
        time: Option<String>,
        #[arg(long, short, default_value = DEFAULT_CONFIG, env = "WEIR_CONFIG")]
        config: PathBuf,
        /// Print the input document too.
        #[arg(long)]
        show_input: bool,
        /// Evaluate this many times and print the mean time per evaluation (stderr):
        /// what the policy costs per request, natively (the filter runs it under V8).
        #[arg(long, default_value_t = 1)]
        repeat: u32,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Issue a key: prints the secret once (stdout) and writes only its hash to the config.
    New {
        #[arg(long, short, default_value = DEFAULT_CONFIG, env = "WEIR_CONFIG")]
        config: PathBuf,
        /// A human name ("checkout service").
        #[arg(long)]
        name: String,
        #[arg(long)]
        team: String,
        #[arg(long)]
        project: Option<String>,
        /// Comma-separated: `*`, endpoint scopes (chat, messages, models, ...), `model:<glob>`,
        /// `policy:<glob>`.
        #[arg(long, value_delimiter = ',', required = true)]
        scopes: Vec<String>,
        /// When the key stops working: a duration from now (`30d`, `12h`) or an RFC 3339 time.
        #[arg(long)]
        expires: Option<String>,
        /// The key id (default: generated).
        #[arg(long)]
        id: Option<String>,
        /// Free metadata, `KEY=VALUE`, repeatable (plan, region, ...).
        #[arg(long = "meta")]
        metadata: Vec<String>,
        #[arg(long)]
        default_policy: Option<String>,
    },
    /// Issue a successor; the old key keeps working for the overlap window, then stops.
    Rotate {
        id: String,
        #[arg(long, short, default_value = DEFAULT_CONFIG, env = "WEIR_CONFIG")]
        config: PathBuf,
        /// How long the old key keeps working (`24h`, `15m`, `0s`).
        #[arg(long, default_value = "24h")]
        overlap: String,
    },
    /// Revoke a key: it stops working as soon as the new bundle reaches Envoy.
    Revoke {
        id: String,
        #[arg(long, short, default_value = DEFAULT_CONFIG, env = "WEIR_CONFIG")]
        config: PathBuf,
    },
    /// List keys and their state (never secrets).
    List {
        #[arg(long, short, default_value = DEFAULT_CONFIG, env = "WEIR_CONFIG")]
        config: PathBuf,
        /// One JSON object per key.
        #[arg(long)]
        json: bool,
    },
    /// Print the `sha256:` hash of a secret read from standard input (for `[[keys]] hash`).
    Hash,
}

const DEFAULT_CONFIG: &str = "envoy/weir.toml";

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("weir: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<(), String> {
    match cli.command {
        Command::Check { config } => {
            let resolved = resolve(&config)?;
            print_warnings(&config, &resolved);
            let gateway = compile(&resolved).map_err(|e| format!("{}: {e}", config.display()))?;
            println!(
                "{}: ok ({} providers, {} tiers, {} keys)",
                config.display(),
                gateway.providers.len(),
                gateway.tiers.len(),
                gateway.keys.len()
            );
            let env_vars = resolved.envoy_credential_vars();
            if !env_vars.is_empty() {
                println!(
                    "Envoy's environment must hold: {} (the filter reads them when it loads)",
                    env_vars.join(", ")
                );
            }
            if let Some(policies) = &gateway.policies {
                let policies = policies.borrow();
                let interpreted = policies.interpreted();
                println!(
                    "policies: {} compiled to regorus's VM{}",
                    policies.names().len() - interpreted.len(),
                    if interpreted.is_empty() {
                        ""
                    } else {
                        "; not compiled, so `weir bundle` refuses them:"
                    }
                );
                for (name, why) in &interpreted {
                    println!("  {name}: {why}");
                }
                // Each with the input its kept decisions are found by.
                let kept: Vec<String> = policies
                    .names()
                    .into_iter()
                    .filter(|n| policies.caches_decisions(n))
                    .map(|n| {
                        let fields = policies.input_fields(n).unwrap_or_default();
                        let read: Vec<&str> = fields
                            .iter()
                            .map(String::as_str)
                            .filter(|f| *f != "version")
                            .collect();
                        format!("{n} ({})", read.join(", "))
                    })
                    .collect();
                if !kept.is_empty() {
                    println!("decisions kept for repeating input: {}", kept.join(", "));
                }
                if !interpreted.is_empty() {
                    return Err(format!(
                        "{}: {} policies cannot be bundled",
                        config.display(),
                        interpreted.len()
                    ));
                }
            }
            Ok(())
        }
        Command::Bundle {
            config,
            wasm,
            out,
            name,
            upstream_out,
        } => {
            let mut resolved = resolve(&config)?;
            print_warnings(&config, &resolved);
            let gateway = compile(&resolved).map_err(|e| format!("{}: {e}", config.display()))?;
            // The filter runs policies as compiled VM programs (it has no Rego compiler);
            // the programs carry their sources, so the module texts are not shipped twice.
            if let (Some(p), Some(set)) = (resolved.policy.as_mut(), &gateway.policies) {
                p.programs = set
                    .borrow()
                    .bundled()
                    .map_err(|e| format!("{}: {e}", config.display()))?;
                p.modules.clear();
            }
            let plugin_json = serde_json::to_string(&resolved).map_err(|e| e.to_string())?;
            let wasm = fs::canonicalize(&wasm).map_err(|e| format!("{}: {e}", wasm.display()))?;
            let env_vars = resolved.envoy_credential_vars();
            let resource = ecds_resource(&name, "weir", &wasm, &plugin_json, &env_vars);
            write_atomically(&out, resource.as_bytes())?;
            if let Some(upstream_out) = &upstream_out {
                let resource = ecds_resource(
                    "weir-upstream",
                    "weir-upstream",
                    &wasm,
                    &plugin_json,
                    &env_vars,
                );
                write_atomically(upstream_out, resource.as_bytes())?;
            }
            println!("{}: bundle written to {}", config.display(), out.display());
            Ok(())
        }
        Command::Keys { command } => keys(command),
        Command::Policy { command } => policy(command),
    }
}

fn keys(command: KeysCommand) -> Result<(), String> {
    match command {
        KeysCommand::New {
            config,
            name,
            team,
            project,
            scopes,
            expires,
            id,
            metadata,
            default_policy,
        } => {
            let now = SystemTime::now();
            let expires_at = expires
                .as_deref()
                .map(|e| parse_expiry(e, now))
                .transpose()?;
            let metadata = metadata
                .iter()
                .map(|kv| {
                    kv.split_once('=')
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .ok_or_else(|| format!("--meta {kv:?}: expected KEY=VALUE"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let mut doc = KeyFile::open(&config)?;
            let id = match id {
                Some(id) => id,
                None => doc.fresh_id("key"),
            };
            let secret = new_secret();
            let mut table = toml_edit::Table::new();
            table["id"] = toml_edit::value(&id);
            table["name"] = toml_edit::value(&name);
            table["team"] = toml_edit::value(&team);
            if let Some(project) = &project {
                table["project"] = toml_edit::value(project);
            }
            table["hash"] = toml_edit::value(format!("sha256:{}", hash_secret_hex(&secret)));
            table["scopes"] = toml_edit::value(string_array(&scopes));
            table["created"] = toml_edit::value(rfc3339(now));
            if let Some(at) = expires_at {
                table["expires_at"] = toml_edit::value(rfc3339(at));
            }
            if let Some(policy) = &default_policy {
                table["default_policy"] = toml_edit::value(policy);
            }
            if !metadata.is_empty() {
                let mut meta = toml_edit::InlineTable::new();
                for (k, v) in &metadata {
                    meta.insert(k, v.as_str().into());
                }
                table["metadata"] = toml_edit::value(meta);
            }
            doc.keys_mut()?.push(table);
            doc.save()?;
            eprintln!(
                "Created key {id} (team {team}) in {}. The secret is shown once, below; store it now.",
                config.display()
            );
            eprintln!("Run `weir bundle` to deploy the change.");
            println!("{secret}");
            Ok(())
        }
        KeysCommand::Rotate {
            id,
            config,
            overlap,
        } => {
            let overlap = humantime::parse_duration(&overlap)
                .map_err(|e| format!("--overlap {overlap:?}: {e}"))?;
            let now = SystemTime::now();
            let mut doc = KeyFile::open(&config)?;
            let base = id.split("-r").next().unwrap_or(&id).to_string();
            let new_id = doc.fresh_id(&format!("{base}-r"));
            let secret = new_secret();
            let keys = doc.keys_mut()?;
            let old = find_key(keys, &id)?;
            if old.get("revoked").and_then(|v| v.as_bool()) == Some(true) {
                return Err(format!("key {id} is revoked; issue a new key instead"));
            }
            if let Some(successor) = old.get("successor").and_then(|v| v.as_str()) {
                return Err(format!(
                    "key {id} was already rotated (successor {successor})"
                ));
            }
            let mut new = old.clone();
            new.remove("successor");
            new.remove("revoked_at");
            new["id"] = toml_edit::value(&new_id);
            new["hash"] = toml_edit::value(format!("sha256:{}", hash_secret_hex(&secret)));
            new["created"] = toml_edit::value(rfc3339(now));
            new["predecessor"] = toml_edit::value(&id);
            // The overlap ends the old key, unless it was due to expire even sooner.
            let mut end = now + overlap;
            if let Some(at) = old.get("expires_at").and_then(|v| v.as_str()) {
                if let Ok(secs) = weir::keys::parse_time(at) {
                    end = end.min(UNIX_EPOCH + Duration::from_secs(secs));
                }
            }
            old["expires_at"] = toml_edit::value(rfc3339(end));
            old["successor"] = toml_edit::value(&new_id);
            keys.push(new);
            doc.save()?;
            eprintln!(
                "Rotated {id} -> {new_id}. {id} keeps working until {}. The new secret is shown once, below.",
                rfc3339(end)
            );
            eprintln!("Run `weir bundle` to deploy the change.");
            println!("{secret}");
            Ok(())
        }
        KeysCommand::Revoke { id, config } => {
            let mut doc = KeyFile::open(&config)?;
            let key = find_key(doc.keys_mut()?, &id)?;
            if key.get("revoked").and_then(|v| v.as_bool()) == Some(true) {
                eprintln!("Key {id} was already revoked.");
                return Ok(());
            }
            key["revoked"] = toml_edit::value(true);
            key["revoked_at"] = toml_edit::value(rfc3339(SystemTime::now()));
            doc.save()?;
            eprintln!("Revoked {id}. Run `weir bundle` to deploy the change.");
            Ok(())
        }
        KeysCommand::List { config, json } => {
            let text =
                fs::read_to_string(&config).map_err(|e| format!("{}: {e}", config.display()))?;
            let parsed: Config =
                toml::from_str(&text).map_err(|e| format!("{}: {e}", config.display()))?;
            let index =
                compile_keys(&parsed.keys).map_err(|e| format!("{}: {e}", config.display()))?;
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            if !json {
                println!(
                    "{:<24} {:<12} {:<12} {:<10} {:<22} SCOPES",
                    "ID", "TEAM", "PROJECT", "STATE", "EXPIRES"
                );
            }
            for (i, k) in parsed.keys.iter().enumerate() {
                let state = match index.get(i).map(|e| e.check(now)) {
                    Some(Ok(())) if k.successor.is_some() => "rotating".to_string(),
                    Some(Ok(())) => "active".to_string(),
                    Some(Err(problem)) => problem.code().trim_start_matches("key_").to_string(),
                    None => "unknown".to_string(),
                };
                if json {
                    println!(
                        "{}",
                        json!({
                            "id": k.id, "name": k.name, "team": k.team, "project": k.project, "state": state,
                            "scopes": k.scopes, "created": k.created, "expires_at": k.expires_at,
                            "successor": k.successor, "predecessor": k.predecessor, "metadata": k.metadata,
                        })
                    );
                } else {
                    println!(
                        "{:<24} {:<12} {:<12} {:<10} {:<22} {}",
                        k.id,
                        k.team,
                        k.project.as_deref().unwrap_or("-"),
                        state,
                        k.expires_at.as_deref().unwrap_or("never"),
                        k.scopes.join(",")
                    );
                }
            }
            Ok(())
        }
        KeysCommand::Hash => {
            let mut secret = String::new();
            io::stdin()
                .read_to_string(&mut secret)
                .map_err(|e| e.to_string())?;
            let secret = secret.trim();
            if secret.is_empty() {
                return Err("no secret on standard input".into());
            }
            println!("sha256:{}", hash_secret_hex(secret));
            Ok(())
        }
    }
}

fn policy(command: PolicyCommand) -> Result<(), String> {
    match command {
        PolicyCommand::Test { dir, config } => {
            let dir = match dir {
                Some(dir) => dir,
                None => policy_dir(&config)?
                    .ok_or_else(|| format!("{}: no [policy] dir; pass --dir", config.display()))?,
            };
            let (modules, data) = read_policy_dir(&dir, true)?;
            let results = weir::policy::run_tests(&modules, &data)?;
            let failed = results.iter().filter(|(_, ok, _)| !ok).count();
            for (name, ok, error) in &results {
                let name = name.trim_start_matches("data.");
                match (ok, error) {
                    (true, _) => println!("PASS {name}"),
                    (false, Some(e)) => println!("ERROR {name}: {e}"),
                    (false, None) => println!("FAIL {name}"),
                }
            }
            println!("{} passed, {failed} failed", results.len() - failed);
            if results.is_empty() {
                return Err(format!("{}: no test_* rules found", dir.display()));
            }
            if failed > 0 {
                return Err(format!("{failed} policy test(s) failed"));
            }
            Ok(())
        }
        PolicyCommand::Eval {
            policy,
            input,
            key,
            api,
            time,
            config,
            show_input,
            repeat,
        } => {
            let mut parsed = read_config(&config)?;
            fill_policies(&mut parsed, &config)?;
            let mut set = parsed
                .compile_policies()
                .map_err(|e| format!("{}: {e}", config.display()))?
                .ok_or_else(|| format!("{}: no policies configured", config.display()))?;
            let body = fs::read(&input).map_err(|e| format!("{}: {e}", input.display()))?;
            let request = weir::body::parse_llm_request(&body)
                .map_err(|e| format!("{}: {}", input.display(), e.message))?;
            let essentials = request.essentials(set.needs_messages(&policy));
            let caller = match &key {
                Some(id) => {
                    let k = parsed
                        .keys
                        .iter()
                        .find(|k| &k.id == id)
                        .ok_or_else(|| format!("no key has the id {id:?}"))?;
                    weir::policy::CallerInput {
                        kind: "api_key",
                        key_id: Some(&k.id),
                        team: Some(&k.team),
                        project: k.project.as_deref(),
                        scopes: &k.scopes,
                        metadata: &k.metadata,
                        claims: None,
                    }
                }
                None => weir::policy::CallerInput {
                    kind: "api_key",
                    ..Default::default()
                },
            };
            let now = match &time {
                Some(t) => weir::keys::parse_time(t)?,
                None => SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0),
            };
            let (endpoint, path) = match api.as_str() {
                "openai" => ("chat_completions", "/v1/chat/completions"),
                "anthropic" => ("messages", "/v1/messages"),
                other => return Err(format!("--api {other:?}: use openai or anthropic")),
            };
            let parts = weir::policy::InputParts {
                request_id: "cli",
                method: "POST",
                path,
                endpoint,
                api: &api,
                caller,
                run_id: "cli",
                policy: &policy,
                model: &request.model,
                is_tier: parsed.tiers.contains_key(&request.model),
                params: weir::policy::ParamsInput::new(request.stream, &essentials),
                messages: essentials.messages,
                now_unix: now,
                ..Default::default()
            };
            if show_input {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&weir::policy::build_input(&parts))
                        .unwrap_or_default()
                );
            }
            // Timed as the filter runs it: the input built from its parts, then evaluated.
            let started = std::time::Instant::now();
            let mut decision = Err(String::new());
            for _ in 0..repeat.max(1) {
                let input = set.input(&policy, &parts);
                decision = set.evaluate(&policy, input);
            }
            let decision = decision?;
            let caches = set.caches_decisions(&policy);
            if repeat > 1 {
                eprintln!(
                    "{repeat} evaluations, {:.1} µs each",
                    started.elapsed().as_secs_f64() * 1e6 / f64::from(repeat)
                );
                if caches {
                    // The filter's path for a repeated input: find the decision.
                    let started = std::time::Instant::now();
                    for _ in 0..repeat {
                        set.decide(&policy, &parts)?;
                    }
                    eprintln!(
                        "{repeat} decisions from the decision cache, {:.1} µs each",
                        started.elapsed().as_secs_f64() * 1e6 / f64::from(repeat)
                    );
                }
            }
            let denial = decision.denial();
            println!(
                "{}",
                serde_json::to_string_pretty(&json!({
                    "policy": policy,
                    "decision": if denial.is_some() { "deny" } else { "allow" },
                    "status": denial.as_ref().map(|d| d.status),
                    "reason": denial.as_ref().map(|d| d.reason.clone()),
                    "retry_after": denial.as_ref().and_then(|d| d.retry_after),
                    "tier": decision.tier,
                    "max_tokens": decision.max_tokens,
                    "tags": decision.tags,
                    "decision_cache": caches,
                }))
                .unwrap_or_default()
            );
            Ok(())
        }
    }
}

fn read_config(path: &Path) -> Result<Config, String> {
    let text = fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// `policy.dir` of a configuration, resolved against the configuration's directory.
fn policy_dir(config_path: &Path) -> Result<Option<PathBuf>, String> {
    let config = read_config(config_path)?;
    Ok(config
        .policy
        .and_then(|p| p.dir)
        .map(|dir| config_path.parent().unwrap_or(Path::new(".")).join(dir)))
}

/// Reads `policy.dir` into the bundled form: the modules and the merged data files.
fn fill_policies(config: &mut Config, config_path: &Path) -> Result<(), String> {
    let Some(p) = config.policy.as_mut() else {
        return Ok(());
    };
    let Some(dir) = p.dir.take() else {
        return Ok(());
    };
    let dir = config_path.parent().unwrap_or(Path::new(".")).join(dir);
    let (modules, data) = read_policy_dir(&dir, false)?;
    p.modules = modules;
    p.data = data;
    Ok(())
}

/// Every `*.rego` under `dir` (tests only when asked) and every `*.json`, merged at the
/// top level of `data` (two files may not define the same top-level key).
fn read_policy_dir(
    dir: &Path,
    with_tests: bool,
) -> Result<(Vec<weir::policy::PolicyModule>, serde_json::Value), String> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = fs::read_dir(&d).map_err(|e| format!("{}: {e}", d.display()))?;
        for entry in entries {
            let path = entry.map_err(|e| e.to_string())?.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files.sort();
    let mut modules = Vec::new();
    let mut data = serde_json::Map::new();
    for path in files {
        let name = path.to_string_lossy().into_owned();
        if name.ends_with(".rego") {
            if name.ends_with("_test.rego") && !with_tests {
                continue;
            }
            let text = fs::read_to_string(&path).map_err(|e| format!("{name}: {e}"))?;
            modules.push(weir::policy::PolicyModule { path: name, text });
        } else if name.ends_with(".json") {
            let text = fs::read_to_string(&path).map_err(|e| format!("{name}: {e}"))?;
            let value: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| format!("{name}: {e}"))?;
            let serde_json::Value::Object(object) = value else {
                return Err(format!(
                    "{name}: a policy data file must hold a JSON object"
                ));
            };
            for (k, v) in object {
                if data.insert(k.clone(), v).is_some() {
                    return Err(format!(
                        "{name}: the data key {k:?} is also defined in another file"
                    ));
                }
            }
        }
    }
    if modules.is_empty() {
        return Err(format!("{}: no .rego files", dir.display()));
    }
    Ok((modules, serde_json::Value::Object(data)))
}

/// What a configuration allows but an operator most likely did not mean (on stderr).
fn print_warnings(path: &Path, config: &Config) {
    for warning in config.unpriced_targets() {
        eprintln!(
            "warning: {}: {warning}; its cost will be flagged unpriced",
            path.display()
        );
    }
    for tier in config.public_canary_tiers() {
        eprintln!(
            "warning: {}: {tier} splits by weight and no provider has a credential: a client \
             who knows this file can choose its side by its request id; set \
             gateway.canary_seed_env",
            path.display()
        );
    }
}

/// Compiles a resolved configuration as the filter will. Credentials that Envoy's
/// environment holds (`envoy_credential_env`) are Envoy's to know: a stand-in takes their
/// place here, and the configuration itself keeps only their names.
fn compile(config: &Config) -> Result<weir::config::Gateway, weir::config::ConfigError> {
    if config.envoy_credential_vars().is_empty() {
        return config.compile();
    }
    let mut filled = config.clone();
    filled.fill_envoy_credentials(|_| Some("from-envoys-environment".to_string()))?;
    filled.compile()
}

/// Parses the TOML and fills in each provider's credential from its env var or file.
fn resolve(path: &Path) -> Result<Config, String> {
    let text = fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut config: Config =
        toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    fill_policies(&mut config, path)?;
    let gateway = &mut config.gateway;
    if gateway.canary_seed.is_some() {
        return Err(format!(
            "{}: gateway.canary_seed: a secret does not belong in the configuration file; \
             use canary_seed_env",
            path.display()
        ));
    }
    if let Some(var) = gateway.canary_seed_env.take() {
        let seed = std::env::var(&var)
            .ok()
            .filter(|v| !v.trim().is_empty())
            .ok_or_else(|| {
                format!(
                    "{}: gateway.canary_seed_env: environment variable {var} is not set",
                    path.display()
                )
            })?;
        gateway.canary_seed = Some(Secret(seed.trim().to_string()));
    }
    for (name, provider) in config.providers.iter_mut() {
        if provider.auth == AuthStyle::None {
            continue;
        }
        let here = format!("{}: providers.{name}", path.display());
        if provider.envoy_credential_env.is_some() {
            // Envoy's environment holds it: the filter reads it there, the bundle names it.
            if provider.credential_env.is_some() || provider.credential_file.is_some() {
                return Err(format!(
                    "{here}: envoy_credential_env and credential_env/credential_file: name one \
                     source"
                ));
            }
            if provider.credential.is_some() {
                return Err(format!(
                    "{here}.credential: credentials do not belong in the configuration file"
                ));
            }
            continue;
        }
        let secret = match (
            &provider.credential_env,
            &provider.credential_file,
            &provider.credential,
        ) {
            (Some(var), _, _) => std::env::var(var)
                .ok()
                .filter(|v| !v.trim().is_empty())
                .ok_or_else(|| {
                    format!("{here}.credential_env: environment variable {var} is not set")
                })?,
            (None, Some(file), _) => fs::read_to_string(file)
                .map_err(|e| format!("{here}.credential_file: {file}: {e}"))?,
            (None, None, Some(_)) => {
                return Err(format!(
                    "{here}.credential: credentials do not belong in the configuration file; \
                     use credential_env or credential_file"
                ))
            }
            (None, None, None) => {
                return Err(format!(
                    "{here}: auth = {:?} needs credential_env or credential_file",
                    provider.auth
                ))
            }
        };
        provider.credential = Some(Secret(secret.trim().to_string()));
        // The filter needs the value only; where it came from stays out of the bundle.
        provider.credential_env = None;
        provider.credential_file = None;
    }
    Ok(config)
}

/// The ECDS resource: the Wasm HTTP filter with Weir's configuration as its plugin config.
/// `root_id` `weir` is the main filter; `weir-upstream` the per-attempt upstream filter.
/// `env_vars`: variables of Envoy's environment the VM may read (provider credentials):
/// Envoy copies their values into the VM; the resource holds only the names.
fn ecds_resource(
    name: &str,
    root_id: &str,
    wasm: &Path,
    plugin_json: &str,
    env_vars: &[&str],
) -> String {
    let mut vm_config = json!({
        "vm_id": root_id,
        "runtime": "envoy.wasm.runtime.v8",
        "code": {"local": {"filename": wasm.to_string_lossy()}}
    });
    if !env_vars.is_empty() {
        vm_config["environment_variables"] = json!({ "host_env_keys": env_vars });
    }
    let value = json!({
        "resources": [{
            "@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
            "name": name,
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                "config": {
                    "name": root_id,
                    "root_id": root_id,
                    "vm_config": vm_config,
                    "configuration": {
                        "@type": "type.googleapis.com/google.protobuf.StringValue",
                        "value": plugin_json
                    },
                    // A gateway never forwards what it did not check.
                    "failure_policy": "FAIL_CLOSED",
                    // Weir pauses in the headers phase until it has read the body.
                    "allow_on_headers_stop_iteration": true
                }
            }
        }]
    });
    serde_json::to_string_pretty(&value).unwrap_or_default()
}

/// Writes to a temporary file beside `path` (mode 0600: the bundle holds provider
/// credentials), then renames it over `path`.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{file_name}.tmp{}", std::process::id()));
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(&tmp)
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    file.write_all(bytes)
        .and_then(|_| file.sync_all())
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
}

/// The configuration file as an editable document: comments and layout survive edits.
struct KeyFile {
    path: PathBuf,
    doc: toml_edit::DocumentMut,
}

impl KeyFile {
    fn open(path: &Path) -> Result<KeyFile, String> {
        let text = fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let doc = text
            .parse::<toml_edit::DocumentMut>()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(KeyFile {
            path: path.to_path_buf(),
            doc,
        })
    }

    fn keys_mut(&mut self) -> Result<&mut toml_edit::ArrayOfTables, String> {
        let path = self.path.display().to_string();
        let item = self
            .doc
            .entry("keys")
            .or_insert(toml_edit::Item::ArrayOfTables(
                toml_edit::ArrayOfTables::new(),
            ));
        item.as_array_of_tables_mut()
            .ok_or_else(|| format!("{path}: `keys` must be written as [[keys]] tables"))
    }

    fn ids(&self) -> Vec<String> {
        self.doc
            .get("keys")
            .and_then(|k| k.as_array_of_tables())
            .map(|t| {
                t.iter()
                    .filter_map(|k| k.get("id")?.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// `PREFIX<n>` (or `PREFIX_<random>` for "key") not used by any key yet.
    fn fresh_id(&self, prefix: &str) -> String {
        let ids = self.ids();
        if prefix == "key" {
            loop {
                let id = format!("key_{}", random_chars(8).to_lowercase());
                if !ids.contains(&id) {
                    return id;
                }
            }
        }
        (1..)
            .map(|n| format!("{prefix}{n}"))
            .find(|id| !ids.contains(id))
            .unwrap_or_default()
    }

    /// Checks the edited configuration the way the filter will, then replaces the file.
    fn save(&self) -> Result<(), String> {
        let text = self.doc.to_string();
        let config: Config =
            toml::from_str(&text).map_err(|e| format!("refusing the change: {e}"))?;
        compile_keys(&config.keys).map_err(|e| format!("refusing the change: {e}"))?;
        write_atomically(&self.path, text.as_bytes())
    }
}

fn find_key<'a>(
    keys: &'a mut toml_edit::ArrayOfTables,
    id: &str,
) -> Result<&'a mut toml_edit::Table, String> {
    keys.iter_mut()
        .find(|k| k.get("id").and_then(|v| v.as_str()) == Some(id))
        .ok_or_else(|| format!("no key has the id {id:?} (see `weir keys list`)"))
}

fn string_array(items: &[String]) -> toml_edit::Array {
    items.iter().map(|s| s.trim()).collect()
}

fn random_chars(n: usize) -> String {
    use rand::distributions::Alphanumeric;
    use rand::Rng;
    rand::rngs::OsRng
        .sample_iter(&Alphanumeric)
        .take(n)
        .map(char::from)
        .collect()
}

/// `wk_live_` and 32 random letters and digits (~190 bits) from the OS generator.
fn new_secret() -> String {
    format!("{SECRET_PREFIX}{}", random_chars(32))
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// `30d`, `12h` (from `now`) or an RFC 3339 time; must be in the future.
fn parse_expiry(text: &str, now: SystemTime) -> Result<SystemTime, String> {
    let at = match humantime::parse_duration(text) {
        Ok(d) => now + d,
        Err(_) => weir::keys::parse_time(text)
            .map(|secs| UNIX_EPOCH + Duration::from_secs(secs))
            .map_err(|e| format!("--expires: {e}, or a duration such as 30d"))?,
    };
    if at <= now {
        return Err(format!("--expires {text:?} is not in the future"));
    }
    Ok(at)
}
