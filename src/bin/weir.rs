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
    },
    /// Key tools.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
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
        /// Comma-separated: `*`, endpoint scopes (chat, messages, models, ...), `model:<glob>`.
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
            for warning in resolve(&config)?.unpriced_targets() {
                eprintln!(
                    "warning: {}: {warning}; its cost will be flagged unpriced",
                    config.display()
                );
            }
            let (config, gateway) = load(&config)?;
            println!(
                "{}: ok ({} providers, {} tiers, {} keys)",
                config.display(),
                gateway.providers.len(),
                gateway.tiers.len(),
                gateway.keys.len()
            );
            Ok(())
        }
        Command::Bundle {
            config,
            wasm,
            out,
            name,
        } => {
            let resolved = resolve(&config)?;
            resolved
                .compile()
                .map_err(|e| format!("{}: {e}", config.display()))?;
            let plugin_json = serde_json::to_string(&resolved).map_err(|e| e.to_string())?;
            let wasm = fs::canonicalize(&wasm).map_err(|e| format!("{}: {e}", wasm.display()))?;
            let resource = ecds_resource(&name, &wasm, &plugin_json);
            write_atomically(&out, resource.as_bytes())?;
            println!("{}: bundle written to {}", config.display(), out.display());
            Ok(())
        }
        Command::Keys { command } => keys(command),
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

/// Reads, resolves and compiles a configuration file.
fn load(path: &Path) -> Result<(PathBuf, weir::config::Gateway), String> {
    let config = resolve(path)?;
    let gateway = config
        .compile()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((path.to_path_buf(), gateway))
}

/// Parses the TOML and fills in each provider's credential from its env var or file.
fn resolve(path: &Path) -> Result<Config, String> {
    let text = fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut config: Config =
        toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    for (name, provider) in config.providers.iter_mut() {
        if provider.auth == AuthStyle::None {
            continue;
        }
        let here = format!("{}: providers.{name}", path.display());
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
fn ecds_resource(name: &str, wasm: &Path, plugin_json: &str) -> String {
    let value = json!({
        "resources": [{
            "@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
            "name": name,
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                "config": {
                    "name": "weir",
                    "root_id": "weir",
                    "vm_config": {
                        "vm_id": "weir",
                        "runtime": "envoy.wasm.runtime.v8",
                        "code": {"local": {"filename": wasm.to_string_lossy()}}
                    },
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
