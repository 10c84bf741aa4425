//! Host tests of the `weir` CLI's key commands: they edit a real config file.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use weir::config::Config;
use weir::keys::hash_secret_hex;

const BASE: &str = r#"# Operator comment that must survive edits.
[providers.local]
api = "openai"
cluster = "local"
auth = "none"

[tiers.fast]
targets = [{ provider = "local", model = "m" }]
"#;

fn weir(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(args)
        .output()
        .unwrap()
}

/// One test's directory (its configuration, bundles, secrets), removed when the test ends,
/// passed or failed.
struct TestDir(PathBuf);

impl TestDir {
    fn new(name: &str) -> TestDir {
        let dir = std::env::temp_dir().join(format!("weir-cli-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TestDir(dir)
    }

    fn join(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A test directory with the base configuration in it, and that file's path.
fn temp_config(name: &str) -> (TestDir, PathBuf) {
    let dir = TestDir::new(name);
    let path = dir.join("weir.toml");
    std::fs::write(&path, BASE).unwrap();
    (dir, path)
}

fn load(path: &Path) -> Config {
    toml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `weir bundle CONFIG --wasm WASM --out OUT`, to run (with more env if needed).
fn bundle_command(config: &Path, wasm: &Path, out: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_weir"));
    command.args([
        "bundle",
        config.to_str().unwrap(),
        "--wasm",
        wasm.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    command
}

/// The filter's configuration (the plugin JSON) inside a bundle file.
fn plugin_of(bundle: &Path) -> String {
    let resource: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(bundle).unwrap()).unwrap();
    resource["resources"][0]["typed_config"]["config"]["configuration"]["value"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn new_prints_the_secret_once_and_stores_only_its_hash() {
    let (_dir, path) = temp_config("new");
    let p = path.to_str().unwrap();
    let out = weir(&[
        "keys",
        "new",
        "-c",
        p,
        "--name",
        "checkout",
        "--team",
        "shop",
        "--project",
        "web",
        "--scopes",
        "chat,models,model:fast",
        "--expires",
        "30d",
        "--meta",
        "plan=pro",
        "--id",
        "checkout-1",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let secret = stdout(&out).trim().to_string();
    assert!(
        secret.starts_with("wk_live_") && secret.len() == 40,
        "{secret}"
    );
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(!text.contains(&secret), "the secret must never be written");
    assert!(text.contains(&hash_secret_hex(&secret)));
    assert!(text.starts_with("# Operator comment that must survive edits."));
    let config = load(&path);
    let key = &config.keys[0];
    assert_eq!(
        (key.id.as_str(), key.team.as_str(), key.project.as_deref()),
        ("checkout-1", "shop", Some("web"))
    );
    assert_eq!(key.scopes, ["chat", "models", "model:fast"]);
    assert_eq!(key.metadata["plan"], "pro");
    assert!(key.expires_at.is_some() && key.created.is_some());

    // A second key gets its own id and secret.
    let out = weir(&[
        "keys", "new", "-c", p, "--name", "n", "--team", "shop", "--scopes", "*",
    ]);
    assert!(out.status.success());
    assert_ne!(stdout(&out).trim(), secret);
    assert_eq!(load(&path).keys.len(), 2);
}

#[test]
fn invalid_input_is_refused_and_the_file_is_untouched() {
    let (_dir, path) = temp_config("invalid");
    let p = path.to_str().unwrap();
    for (args, message) in [
        (vec!["--scopes", "chat,chatt"], "unknown scope \"chatt\""),
        (
            vec!["--scopes", "chat", "--expires", "yesterday"],
            "--expires",
        ),
        (
            vec!["--scopes", "chat", "--expires", "2001-01-01T00:00:00Z"],
            "not in the future",
        ),
        (
            vec!["--scopes", "chat", "--meta", "plan"],
            "expected KEY=VALUE",
        ),
        (vec!["--scopes", "chat", "--id", "has space"], "keys[0].id"),
    ] {
        let mut all = vec!["keys", "new", "-c", p, "--name", "x", "--team", "t"];
        all.extend(args);
        let out = weir(&all);
        assert!(!out.status.success());
        assert!(
            stderr(&out).contains(message),
            "{message}: {}",
            stderr(&out)
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), BASE);
    }
    let out = weir(&[
        "keys", "new", "-c", p, "--name", "a", "--team", "t", "--scopes", "*", "--id", "dup",
    ]);
    assert!(out.status.success());
    let out = weir(&[
        "keys", "new", "-c", p, "--name", "b", "--team", "t", "--scopes", "*", "--id", "dup",
    ]);
    assert!(
        stderr(&out).contains("duplicate key id"),
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&weir(&["keys", "revoke", "nope", "-c", p])).contains("no key has the id \"nope\"")
    );
}

#[test]
fn rotate_links_the_keys_and_bounds_the_overlap() {
    let (_dir, path) = temp_config("rotate");
    let p = path.to_str().unwrap();
    let first = weir(&[
        "keys", "new", "-c", p, "--name", "svc", "--team", "t", "--scopes", "chat", "--id", "svc",
    ]);
    let old_secret = stdout(&first).trim().to_string();
    let out = weir(&["keys", "rotate", "svc", "-c", p, "--overlap", "2h"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let new_secret = stdout(&out).trim().to_string();
    assert_ne!(old_secret, new_secret);
    let config = load(&path);
    let (old, new) = (&config.keys[0], &config.keys[1]);
    assert_eq!(new.id, "svc-r1");
    assert_eq!(old.successor.as_deref(), Some("svc-r1"));
    assert_eq!(new.predecessor.as_deref(), Some("svc"));
    assert_eq!(new.scopes, old.scopes);
    assert_eq!(new.hash, format!("sha256:{}", hash_secret_hex(&new_secret)));
    let end = weir::keys::parse_time(old.expires_at.as_deref().unwrap()).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!((now + 7200 - 5..=now + 7200 + 5).contains(&end));
    assert!(new.expires_at.is_none());

    assert!(stderr(&weir(&["keys", "rotate", "svc", "-c", p])).contains("already rotated"));
    // The successor can itself be rotated.
    assert!(
        weir(&["keys", "rotate", "svc-r1", "-c", p, "--overlap", "0s"])
            .status
            .success()
    );
    assert_eq!(load(&path).keys[2].id, "svc-r2");

    let list = stdout(&weir(&["keys", "list", "-c", p]));
    assert!(list.contains("svc ") && list.contains("rotating"), "{list}");
    assert!(
        list.contains("rotated"),
        "svc-r1's overlap of 0s has ended: {list}"
    );
    assert!(!list.contains(&old_secret) && !list.contains(&new_secret));
}

#[test]
fn revoke_and_list_json() {
    let (_dir, path) = temp_config("revoke");
    let p = path.to_str().unwrap();
    weir(&[
        "keys", "new", "-c", p, "--name", "a", "--team", "t", "--scopes", "*", "--id", "a",
    ]);
    let out = weir(&["keys", "revoke", "a", "-c", p]);
    assert!(out.status.success());
    let key = &load(&path).keys[0];
    assert!(key.revoked && key.revoked_at.is_some());
    assert!(stderr(&weir(&["keys", "revoke", "a", "-c", p])).contains("already revoked"));
    assert!(stderr(&weir(&["keys", "rotate", "a", "-c", p])).contains("is revoked"));
    let line = stdout(&weir(&["keys", "list", "-c", p, "--json"]));
    let v: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
    assert_eq!(v["state"], "revoked");
    assert!(v.get("hash").is_none());
}

#[test]
fn bundle_reads_credentials_from_env_or_file_in_each_providers_style() {
    let dir = TestDir::new("creds");
    let secret_file = dir.join("azure.key");
    std::fs::write(&secret_file, "azure-secret-from-file\n").unwrap();
    let config = dir.join("weir.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[providers.azure]
api = "openai"
cluster = "azure"
auth = "api-key"
credential_file = "{}"

[providers.anthropic]
api = "anthropic"
cluster = "anthropic"
auth = "x-api-key"
credential_env = "WEIR_TEST_ANTHROPIC_KEY"

[providers.vllm]
api = "openai"
cluster = "vllm"
auth = "none"

[tiers.t]
targets = [{{ provider = "azure", model = "gpt-4o" }}, {{ provider = "anthropic", model = "claude" }}, {{ provider = "vllm", model = "llama" }}]
"#,
            secret_file.display()
        ),
    )
    .unwrap();
    let wasm = dir.join("weir.wasm");
    std::fs::write(&wasm, b"\0asm").unwrap();
    let out = dir.join("bundle.json");
    let run = bundle_command(&config, &wasm, &out)
        .env("WEIR_TEST_ANTHROPIC_KEY", "anthropic-secret-from-env")
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", stderr(&run));
    let plugin = plugin_of(&out);
    let gateway = Config::from_json(plugin.as_bytes())
        .unwrap()
        .compile()
        .unwrap();
    let header = |name: &str| {
        let p = gateway.providers.iter().find(|p| p.name == name).unwrap();
        p.credential_header
            .as_ref()
            .map(|(h, v)| (h.to_string(), v.0.clone()))
    };
    assert_eq!(
        header("azure"),
        Some(("api-key".into(), "azure-secret-from-file".into()))
    );
    assert_eq!(
        header("anthropic"),
        Some(("x-api-key".into(), "anthropic-secret-from-env".into()))
    );
    assert_eq!(header("vllm"), None);
    // The secrets are in the bundle (Envoy needs them), which only its owner may read.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&out).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    // A missing file is a clear error.
    std::fs::remove_file(&secret_file).unwrap();
    let run = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["check", config.to_str().unwrap()])
        .env("WEIR_TEST_ANTHROPIC_KEY", "x")
        .output()
        .unwrap();
    assert!(
        stderr(&run).contains("providers.azure.credential_file"),
        "{}",
        stderr(&run)
    );
}

/// `envoy_credential_env`: the credential stays in Envoy's environment. The bundle needs
/// no value (the variable is not set for it), carries none, and asks Envoy to hand the
/// variable to both filters' VMs; `weir check` says which variables Envoy must have.
#[test]
fn bundle_names_credentials_that_envoys_environment_holds() {
    let dir = TestDir::new("envoy-creds");
    let config = dir.join("weir.toml");
    let providers = r#"
[providers.openai]
api = "openai"
cluster = "openai"
auth = "bearer"
envoy_credential_env = "WEIR_TEST_ENVOY_OPENAI_KEY"

[providers.anthropic]
api = "anthropic"
cluster = "anthropic"
auth = "x-api-key"
credential_env = "WEIR_TEST_ANTHROPIC_KEY"

[tiers.t]
targets = [{ provider = "openai", model = "gpt-4o" }, { provider = "anthropic", model = "claude" }]
"#;
    std::fs::write(&config, providers).unwrap();
    let wasm = dir.join("weir.wasm");
    std::fs::write(&wasm, b"\0asm").unwrap();
    let (out, upstream_out) = (dir.join("bundle.json"), dir.join("upstream.json"));
    let run = bundle_command(&config, &wasm, &out)
        .args(["--upstream-out", upstream_out.to_str().unwrap()])
        .env("WEIR_TEST_ANTHROPIC_KEY", "anthropic-secret-from-env")
        .env_remove("WEIR_TEST_ENVOY_OPENAI_KEY")
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", stderr(&run));
    for bundle in [&out, &upstream_out] {
        let resource: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(bundle).unwrap()).unwrap();
        let vm_config = &resource["resources"][0]["typed_config"]["config"]["vm_config"];
        assert_eq!(
            vm_config["environment_variables"],
            serde_json::json!({"host_env_keys": ["WEIR_TEST_ENVOY_OPENAI_KEY"]})
        );
        let plugin: serde_json::Value = serde_json::from_str(&plugin_of(bundle)).unwrap();
        let openai = &plugin["providers"]["openai"];
        assert_eq!(openai["envoy_credential_env"], "WEIR_TEST_ENVOY_OPENAI_KEY");
        assert!(openai.get("credential").is_none(), "{openai}");
        // The bundle-time credential is resolved as before.
        assert_eq!(
            plugin["providers"]["anthropic"]["credential"],
            "anthropic-secret-from-env"
        );
    }
    // The filter fills the credential in from the variable; without it, it refuses.
    let mut filled = Config::from_json(plugin_of(&out).as_bytes()).unwrap();
    assert!(filled.clone().compile().is_err());
    filled
        .fill_envoy_credentials(|_| Some("sk-envoy".into()))
        .unwrap();
    let gateway = filled.compile().unwrap();
    let openai = gateway
        .providers
        .iter()
        .find(|p| p.name == "openai")
        .unwrap();
    assert_eq!(
        openai.credential_header.as_ref().unwrap().1 .0,
        "Bearer sk-envoy"
    );

    let run = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["check", config.to_str().unwrap()])
        .env("WEIR_TEST_ANTHROPIC_KEY", "x")
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", stderr(&run));
    assert!(
        stdout(&run).contains("Envoy's environment must hold: WEIR_TEST_ENVOY_OPENAI_KEY"),
        "{}",
        stdout(&run)
    );

    // One source per credential; and a value in the file is refused as before.
    for (extra, message) in [
        (
            "credential_env = \"WEIR_TEST_ANTHROPIC_KEY\"\n",
            "providers.openai: envoy_credential_env and credential_env/credential_file",
        ),
        (
            "credential = \"sk-in-file\"\n",
            "providers.openai.credential: credentials do not belong",
        ),
    ] {
        let text = providers.replace(
            "envoy_credential_env = \"WEIR_TEST_ENVOY_OPENAI_KEY\"\n",
            &format!("envoy_credential_env = \"WEIR_TEST_ENVOY_OPENAI_KEY\"\n{extra}"),
        );
        std::fs::write(&config, text).unwrap();
        let run = bundle_command(&config, &wasm, &out)
            .env("WEIR_TEST_ANTHROPIC_KEY", "x")
            .output()
            .unwrap();
        assert!(!run.status.success());
        assert!(stderr(&run).contains(message), "{}", stderr(&run));
        assert!(!stderr(&run).contains("sk-in-file"), "{}", stderr(&run));
    }
}

/// With only self-hosted providers (no credentials), a canary's key comes from the file:
/// `weir bundle` warns, and `gateway.canary_seed_env` puts a secret seed in the bundle only.
#[test]
fn bundle_takes_the_canary_seed_from_env_and_warns_without_one() {
    let dir = TestDir::new("canary-seed");
    let config = dir.join("weir.toml");
    let tiers = r#"
[providers.vllm]
api = "openai"
cluster = "vllm"
auth = "none"

[tiers.canary]
targets = [{ provider = "vllm", model = "stable", weight = 9 }, { provider = "vllm", model = "new", weight = 1 }]
"#;
    let wasm = dir.join("weir.wasm");
    std::fs::write(&wasm, b"\0asm").unwrap();
    let out = dir.join("bundle.json");

    std::fs::write(&config, tiers).unwrap();
    let run = bundle_command(&config, &wasm, &out).output().unwrap();
    assert!(run.status.success(), "{}", stderr(&run));
    assert!(
        stderr(&run).contains("tiers.canary splits by weight and no provider has a credential"),
        "{}",
        stderr(&run)
    );

    let seeded = format!("[gateway]\ncanary_seed_env = \"WEIR_TEST_CANARY_SEED\"\n{tiers}");
    std::fs::write(&config, &seeded).unwrap();
    let run = bundle_command(&config, &wasm, &out)
        .env("WEIR_TEST_CANARY_SEED", "seed-from-env")
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", stderr(&run));
    assert!(
        !stderr(&run).contains("splits by weight"),
        "{}",
        stderr(&run)
    );
    let plugin: serde_json::Value = serde_json::from_str(&plugin_of(&out)).unwrap();
    assert_eq!(plugin["gateway"]["canary_seed"], "seed-from-env");
    assert!(plugin["gateway"].get("canary_seed_env").is_none());

    // Named but not set: a clear error, no bundle.
    let run = bundle_command(&config, &wasm, &dir.join("none.json"))
        .env_remove("WEIR_TEST_CANARY_SEED")
        .output()
        .unwrap();
    assert!(!run.status.success());
    assert!(
        stderr(&run).contains(
            "gateway.canary_seed_env: environment variable WEIR_TEST_CANARY_SEED is not set"
        ),
        "{}",
        stderr(&run)
    );
    // The value itself in the file is refused, as credentials are.
    std::fs::write(&config, format!("[gateway]\ncanary_seed = \"s\"\n{tiers}")).unwrap();
    let run = bundle_command(&config, &wasm, &dir.join("none.json"))
        .output()
        .unwrap();
    assert!(!run.status.success());
    assert!(
        stderr(&run).contains("use canary_seed_env"),
        "{}",
        stderr(&run)
    );
}

/// `weir bundle` ships each policy compiled for regorus's VM, not its Rego text; a policy
/// the VM cannot compile is refused with its name and the reason.
#[test]
fn bundle_ships_compiled_policies_and_refuses_what_the_vm_cannot_run() {
    let (dir, config) = temp_config("policies");
    let policies = dir.join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    std::fs::write(
        policies.join("p.rego"),
        "package weir.policy.p\n\ndeny contains \"no best\" if input.model.requested == \"best\"\n\nmax_tokens := data.caps[input.caller.team]\n",
    )
    .unwrap();
    std::fs::write(policies.join("data.json"), r#"{"caps": {"t": 64}}"#).unwrap();
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("\n[policy]\ndir = \"policies\"\ndefault = \"p\"\n");
    std::fs::write(&config, text).unwrap();
    let wasm = dir.join("weir.wasm");
    std::fs::write(&wasm, b"\0asm").unwrap();
    let out = dir.join("bundle.json");
    let bundle = || bundle_command(&config, &wasm, &out).output().unwrap();
    let run = bundle();
    assert!(run.status.success(), "{}", stderr(&run));
    let plugin = plugin_of(&out);
    let json: serde_json::Value = serde_json::from_str(&plugin).unwrap();
    assert!(json["policy"]["modules"].is_null(), "{}", json["policy"]);
    assert!(json["policy"]["programs"]["p"]["program"].is_string());
    // The bundle alone decides, as the filter does (no modules to fall back on).
    let gateway = Config::from_json(plugin.as_bytes())
        .unwrap()
        .compile()
        .unwrap();
    let mut policies_set = gateway.policies.unwrap().into_inner();
    assert!(policies_set.interpreted().is_empty());
    let parts = weir::policy::InputParts {
        caller: weir::policy::CallerInput {
            kind: "api_key",
            team: Some("t"),
            ..Default::default()
        },
        model: "best",
        ..Default::default()
    };
    let input = weir::policy::input_value(&parts, None);
    let d = policies_set.evaluate("p", input).unwrap();
    assert_eq!(d.denial().unwrap().reason, "no best");
    assert_eq!(d.max_tokens, Some(64));

    // `with` is Rego the VM does not compile: refused, and the file is not replaced.
    let before = std::fs::read(&out).unwrap();
    std::fs::write(
        policies.join("w.rego"),
        "package weir.policy.w\n\ndeny contains \"x\" if {\n\tnot data.caps.t with data.caps as {}\n}\n",
    )
    .unwrap();
    let check = weir(&["check", config.to_str().unwrap()]);
    assert!(!check.status.success());
    assert!(
        stdout(&check).contains("  w: regorus's VM cannot compile it"),
        "{}",
        stdout(&check)
    );
    let run = bundle();
    assert!(!run.status.success());
    let err = stderr(&run);
    assert!(err.contains("policy w") && err.contains("VM"), "{err}");
    assert_eq!(std::fs::read(&out).unwrap(), before);
}
