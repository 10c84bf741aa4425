//! The `weir` CLI: checks the operator's configuration and bundles it into the filter's
//! plugin configuration (an ECDS resource Envoy loads and reloads from a file).

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use serde_json::json;

use weir::config::{AuthStyle, Config, Secret};
use weir::keys::hash_secret_hex;

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
    /// Print the `sha256:` hash of a secret read from standard input (for `[[keys]] hash`).
    Hash,
}

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
            let (_, _) = load(&config)?;
            let resolved = resolve(&config)?;
            let plugin_json = serde_json::to_string(&resolved).map_err(|e| e.to_string())?;
            let wasm = fs::canonicalize(&wasm).map_err(|e| format!("{}: {e}", wasm.display()))?;
            let resource = ecds_resource(&name, &wasm, &plugin_json);
            write_atomically(&out, resource.as_bytes())?;
            println!("{}: bundle written to {}", config.display(), out.display());
            Ok(())
        }
        Command::Keys {
            command: KeysCommand::Hash,
        } => {
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
