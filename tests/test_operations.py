"""Running Weir: `make run`, real-provider configuration, the CLI, choosing the Envoy
binary, and reloading the filter configuration without a restart."""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import stat
import subprocess
import time
from pathlib import Path

import httpx

import devstack
from conftest import DEMO_KEY, ROOT

WEIR = str(devstack.WEIR_BIN)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for our purposes.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_make_run_serves_the_printed_examples_and_stops_on_ctrl_c(built, tmp_path):
    port, admin = free_port(), free_port()
    env = dict(os.environ, WEIR_PORT=str(port), WEIR_ADMIN_PORT=str(admin), WEIR_RUN_DIR=str(tmp_path))
    env.pop("OPENAI_API_KEY", None)
    env.pop("ANTHROPIC_API_KEY", None)
    proc = subprocess.Popen(["make", "-s", "run"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    output = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            output.append(line)
            if "Ctrl-C stops" in line:
                break
        banner = "".join(output)
        assert "Ctrl-C stops" in banner, banner
        assert f"http://127.0.0.1:{port}" in banner and DEMO_KEY in banner

        # The curl example, pasted as printed.
        curl = re.search(r"(  curl -s .*?)\n\n", banner, re.S).group(1)
        result = subprocess.run(["bash", "-c", curl], capture_output=True, text=True, timeout=30)
        reply = json.loads(result.stdout)
        assert reply["model"] == "gpt-4.1-mini" and reply["usage"]["total_tokens"] > 0

        # The Python example, pasted as printed.
        python = re.search(r"  (python3 - <<'PY'\n.*?\nPY)", banner, re.S).group(1)
        python = python.replace("python3", str(ROOT / ".venv/bin/python"), 1)
        result = subprocess.run(["bash", "-c", python], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert "Mock reply from gpt-4.1-mini" in result.stdout

        pids = json.loads((tmp_path / "pids.json").read_text())
        assert all(pid_alive(p) for p in pids.values())
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        rest, _ = proc.communicate(timeout=30)
    assert "Stopping Envoy and the mock provider" in rest
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(pid_alive(p) for p in pids.values()):
        time.sleep(0.1)
    assert not any(pid_alive(p) for p in pids.values()), "Envoy or the mock survived Ctrl-C"


def test_real_provider_configuration_is_valid_and_routes_to_the_provider_cluster(built, tmp_path, monkeypatch):
    """No internet here: prove the TLS clusters validate and that requests go to them."""
    openai_secret, anthropic_secret = "sk-test-openai-7f1e2d3c4b5a", "sk-ant-test-9a8b7c6d5e4f"
    monkeypatch.setenv("OPENAI_API_KEY", openai_secret)
    monkeypatch.setenv("ANTHROPIC_API_KEY", anthropic_secret)
    stack = devstack.Stack(tmp_path, real=("openai", "anthropic"))
    try:
        stack.start_mock()
        assert stack.bundle().returncode == 0
        rendered = stack.render().read_text()
        for host in ("api.openai.com", "api.anthropic.com"):
            assert f"sni: {host}" in rendered
            assert f"address: {host}, port_value: 443" in rendered
        result = stack.validate()
        assert result.returncode == 0, result.stdout + result.stderr
        assert "OK" in result.stdout

        stack.start_envoy()
        for path, tier, cluster in (("/v1/chat/completions", "balanced", "openai"), ("/v1/messages", "best", "anthropic")):
            rid = f"real-{cluster}"
            body = {"model": tier, "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
            response = httpx.post(stack.url + path, json=body, timeout=30,
                                  headers={"authorization": f"Bearer {DEMO_KEY}", "x-weir-request-id": rid})
            assert response.status_code == 503  # no route to the internet from here
            # Envoy's own error, in the client's API shape.
            error = response.json()
            if cluster == "openai":
                assert error["error"]["type"] == "server_error"
                assert error["error"]["code"] == "no_healthy_upstream"
            else:
                assert error["type"] == "error" and error["error"]["type"] == "api_error"
            stats = httpx.get(stack.admin + "/stats?format=json").json()["stats"]
            values = {s["name"]: s.get("value") for s in stats if "name" in s}
            assert values[f"cluster.{cluster}.upstream_rq_503"] >= 1
            assert values["cluster.local.upstream_rq_total"] == 0
        time.sleep(0.5)
        records = [json.loads(line) for line in stack.audit_log.read_text().splitlines()]
        assert [(r["cluster"], r["outcome"]) for r in records] == [("openai", "upstream_error"), ("anthropic", "upstream_error")]
        # The provider credentials are in the bundle (mode 0600) and nowhere they could leak.
        assert stat.S_IMODE(stack.filter_config.stat().st_mode) == 0o600
        for path in (stack.envoy_log, stack.audit_log, stack.envoy_yaml):
            text = path.read_text()
            assert openai_secret not in text and anthropic_secret not in text, path
    finally:
        stack.stop()


def run_weir(*args, env=None, stdin=None):
    return subprocess.run([WEIR, *args], capture_output=True, text=True, env=env, input=stdin)


def test_cli_check_and_bundle(built, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY")}
    result = run_weir("check", "envoy/weir.toml", env=env)
    assert result.returncode == 1
    assert "providers.anthropic.credential_env: environment variable ANTHROPIC_API_KEY is not set" in result.stderr

    env.update(OPENAI_API_KEY="sk-one", ANTHROPIC_API_KEY="sk-two")
    result = run_weir("check", "envoy/weir.toml", env=env)
    assert result.returncode == 0, result.stderr
    assert "ok (3 providers, 4 tiers, 1 keys)" in result.stdout
    assert "decisions kept for repeating input: standard (caller, model, time)\n" in result.stdout

    out = tmp_path / "bundle.json"
    result = run_weir("bundle", "envoy/weir.toml", "--wasm", str(devstack.WASM), "--out", str(out), env=env)
    assert result.returncode == 0, result.stderr
    resource = json.loads(out.read_text())["resources"][0]
    wasm = resource["typed_config"]["config"]
    assert wasm["failure_policy"] == "FAIL_CLOSED" and wasm["allow_on_headers_stop_iteration"] is True
    plugin = json.loads(wasm["configuration"]["value"])
    assert plugin["providers"]["openai"]["credential"] == "sk-one"
    assert "credential_env" not in plugin["providers"]["openai"]

    bad = tmp_path / "bad.toml"
    bad.write_text('[tiers.x]\ntargets = [{ provider = "nope", model = "m" }]\n')
    result = run_weir("check", str(bad), env=env)
    assert result.returncode == 1 and "tiers.x.targets[0].provider: unknown provider \"nope\"" in result.stderr
    bad.write_text('[gateway]\nmax_body_byte = 5\n')
    result = run_weir("check", str(bad), env=env)
    assert result.returncode == 1 and "max_body_byte" in result.stderr and "line 2" in result.stderr
    bad.write_text('[providers.p]\napi = "openai"\ncluster = "c"\nauth = "bearer"\ncredential = "sk-in-file"\n')
    result = run_weir("check", str(bad), env=env)
    assert result.returncode == 1 and "do not belong in the configuration file" in result.stderr
    assert "sk-in-file" not in result.stderr

    result = run_weir("keys", "hash", stdin=DEMO_KEY + "\n")
    assert result.stdout.strip() in devstack.sample_config_text()


def test_envoy_binary_is_envoy_bin_else_func_e_else_the_pinned_package(tmp_path, monkeypatch):
    monkeypatch.setenv("ENVOY_BIN", "/opt/envoy/bin/envoy")
    assert devstack.envoy_command() == ["/opt/envoy/bin/envoy"]
    monkeypatch.delenv("ENVOY_BIN")
    func_e = tmp_path / "func-e"
    func_e.write_text("#!/bin/sh\n")
    func_e.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    assert devstack.envoy_command() == [str(func_e), "run"]
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    [binary] = devstack.envoy_command()
    assert binary.endswith("envoy/_bin/envoy")
    assert devstack.ENVOY_VERSION in subprocess.run([binary, "--version"], capture_output=True, text=True).stdout


def test_filter_configuration_reloads_without_restart_and_bad_ones_are_refused(built, tmp_path):
    stack = devstack.Stack(tmp_path)
    try:
        stack.start()
        envoy_pid = stack.envoy.pid
        body = {"model": "fast", "messages": [{"role": "user", "content": "hi"}]}

        def status(key: str) -> int:
            return httpx.post(stack.url + "/v1/chat/completions", json=body, timeout=10,
                              headers={"authorization": f"Bearer {key}"}).status_code

        assert status(DEMO_KEY) == 200
        new_key = "wk_live_reloaded_5d4c3b2a"
        config = devstack.sample_config_text()
        demo_hash = re.search(r'hash = "(sha256:[0-9a-f]+)"', config).group(1)
        new_hash = run_weir("keys", "hash", stdin=new_key).stdout.strip()
        changed = tmp_path / "weir.toml"
        changed.write_text(config.replace(demo_hash, new_hash))
        assert stack.bundle(changed).returncode == 0

        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and status(DEMO_KEY) != 401:
            time.sleep(0.05)
        assert status(DEMO_KEY) == 401 and status(new_key) == 200

        # A configuration the filter refuses leaves the last good one in force.
        resource = json.loads(stack.filter_config.read_text())
        resource["resources"][0]["typed_config"]["config"]["configuration"]["value"] = '{"tiers": {"x": {"targets": []}}}'
        tmp = stack.filter_config.with_suffix(".tmp")
        tmp.write_text(json.dumps(resource))
        tmp.rename(stack.filter_config)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and "configuration rejected" not in stack.envoy_log.read_text():
            time.sleep(0.05)
        assert "weir: configuration rejected: tiers.x.targets: must list at least one target" in stack.envoy_log.read_text()
        assert status(new_key) == 200 and status(DEMO_KEY) == 401
        assert stack.envoy.pid == envoy_pid and stack.envoy.poll() is None
    finally:
        stack.stop()


def test_credentials_in_envoys_environment_stay_out_of_the_bundle_and_the_config_dump(built, tmp_path):
    """`envoy_credential_env`: the provider credentials live in Envoy's own environment.
    `weir bundle` runs without them and the bundle and Envoy's admin config dump hold only
    their names; both filters (the main one and the per-attempt one of failover tiers) read
    the values when they load, and the providers get them. A configuration naming a
    variable Envoy lacks is refused, and the last good one stays."""
    names = {"OPENAI_API_KEY": "WEIR_TEST_ENVOY_OPENAI_KEY", "ANTHROPIC_API_KEY": "WEIR_TEST_ENVOY_ANTHROPIC_KEY"}
    text = devstack.sample_config_text()
    for bundled, in_envoy in names.items():
        text = text.replace(f'credential_env = "{bundled}"', f'envoy_credential_env = "{in_envoy}"')
    config = tmp_path / "weir.toml"
    config.write_text(text + """
[tiers.resilient]
failover = true
targets = [{ provider = "openai", model = "gpt-4.1-mini" }, { provider = "anthropic", model = "claude-sonnet-4-5" }]
""")
    secrets = devstack.MOCK_CREDENTIALS
    envoy_env = {in_envoy: secrets[bundled] for bundled, in_envoy in names.items()}
    stack = devstack.Stack(tmp_path / "stack", config=config, envoy_env=envoy_env)
    # The bundle is made without any credential in its environment.
    stack.bundle_env = lambda: {k: v for k, v in os.environ.items() if k not in (*names, *names.values())}
    try:
        stack.start()
        for bundle in (stack.filter_config, stack.upstream_filter_config):
            resource = json.loads(bundle.read_text())
            vm_config = resource["resources"][0]["typed_config"]["config"]["vm_config"]
            assert vm_config["environment_variables"]["host_env_keys"] == sorted(names.values())
            assert not any(secret in bundle.read_text() for secret in secrets.values())
        dump = httpx.get(stack.admin + "/config_dump", timeout=10).text
        assert "WEIR_TEST_ENVOY_OPENAI_KEY" in dump and "envoy_credential_env" in dump
        assert not any(secret in dump for secret in secrets.values())

        def chat(path: str, model: str, rid: str) -> httpx.Response:
            body = {"model": model, "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}
            return httpx.post(stack.url + path, json=body, timeout=10,
                              headers={"authorization": f"Bearer {DEMO_KEY}", "x-weir-request-id": rid})

        def received(provider: str, rid: str) -> dict:
            url = f"{stack.mock_url(provider)}/_mock/requests?request_id={rid}"
            [request] = json.loads(httpx.get(url, timeout=5).text)
            return request["headers"]

        # The mock refuses a wrong or missing credential, so each 200 is the provider's yes.
        for path, model, provider, header, value in [
            ("/v1/chat/completions", "fast", "openai", "authorization", f"Bearer {secrets['OPENAI_API_KEY']}"),
            ("/v1/messages", "fast", "anthropic", "x-api-key", secrets["ANTHROPIC_API_KEY"]),
            # A failover tier: the per-attempt upstream filter injects the credential.
            ("/v1/chat/completions", "resilient", "openai", "authorization", f"Bearer {secrets['OPENAI_API_KEY']}"),
        ]:
            rid = f"envoy-env-{provider}-{model}"
            r = chat(path, model, rid)
            assert r.status_code == 200, r.text
            assert received(provider, rid)[header] == value

        # Reloaded with a variable Envoy was not started with: refused, the last good stays.
        config.write_text(config.read_text().replace('"WEIR_TEST_ENVOY_OPENAI_KEY"', '"WEIR_TEST_ENVOY_MISSING"'))
        assert stack.bundle().returncode == 0  # the CLI cannot know Envoy's environment
        deadline = time.monotonic() + 10
        refusal = "configuration rejected: providers.openai.envoy_credential_env: Envoy's environment has no WEIR_TEST_ENVOY_MISSING"
        while time.monotonic() < deadline and refusal not in stack.envoy_log.read_text():
            time.sleep(0.05)
        assert refusal in stack.envoy_log.read_text()
        r = chat("/v1/chat/completions", "fast", "envoy-env-after-refusal")
        assert r.status_code == 200, r.text
        assert received("openai", "envoy-env-after-refusal")["authorization"] == f"Bearer {secrets['OPENAI_API_KEY']}"
        assert not any(secret in stack.envoy_log.read_text() for secret in secrets.values())
    finally:
        stack.stop()

    # An Envoy started without the variable fails closed: every request a 500 in the
    # client's shape, with its audit record, and the log says which variable is missing.
    lacking = devstack.Stack(tmp_path / "lacking", config=config, envoy_env={names["ANTHROPIC_API_KEY"]: "x"})
    lacking.bundle_env = stack.bundle_env
    try:
        lacking.start()
        r = httpx.post(lacking.url + "/v1/chat/completions", timeout=10,
                       json={"model": "fast", "messages": [{"role": "user", "content": "hi"}]},
                       headers={"authorization": f"Bearer {DEMO_KEY}", "x-weir-request-id": "envoy-env-lacking"})
        assert r.status_code == 500 and r.json()["error"]["type"] == "server_error", r.text
        assert "Envoy's environment has no WEIR_TEST_ENVOY_MISSING" in lacking.envoy_log.read_text()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and "weir_unavailable" not in (
                lacking.audit_log.read_text() if lacking.audit_log.exists() else ""):
            time.sleep(0.05)
        [record] = [json.loads(line) for line in lacking.audit_log.read_text().splitlines()]
        assert (record["status"], record["outcome"], record["error"]) == (500, "error", "weir_unavailable")
    finally:
        lacking.stop()


def test_moving_a_credential_between_the_bundle_and_envoys_environment_under_traffic_loses_nothing(built, tmp_path):
    """Naming a credential in Envoy's environment changes the filter's `vm_config`, so Envoy
    builds new VMs on the reload (a bundle-only change keeps them): requests in flight and
    arriving meanwhile are all served, each with the right credential (the mock refuses a
    wrong one)."""
    import collections
    import concurrent.futures
    import threading

    sample = devstack.sample_config_text()
    bundled = tmp_path / "bundled.toml"
    bundled.write_text(sample)
    in_envoy = tmp_path / "in-envoy.toml"
    in_envoy.write_text(sample.replace('credential_env = "OPENAI_API_KEY"',
                                       'envoy_credential_env = "WEIR_TEST_ENVOY_OPENAI_KEY"'))
    stack = devstack.Stack(tmp_path / "stack", config=bundled,
                           envoy_env={"WEIR_TEST_ENVOY_OPENAI_KEY": devstack.MOCK_CREDENTIALS["OPENAI_API_KEY"]})
    try:
        stack.start()

        def send(rid: str) -> int:
            return httpx.post(stack.url + "/v1/chat/completions", timeout=30,
                              json={"model": "fast", "messages": [{"role": "user", "content": "hi"}]},
                              headers={"authorization": f"Bearer {DEMO_KEY}", "x-weir-request-id": rid}).status_code

        def reloads() -> int:
            stats = httpx.get(stack.admin + "/stats?format=json&filter=config_reload$", timeout=10).json()["stats"]
            return sum(s["value"] for s in stats if s["name"].startswith("extension_config_discovery.http_filter.weir."))

        done = threading.Event()

        def traffic(n: int) -> list[int]:
            statuses, i = [], 0
            while not done.is_set():
                statuses.append(send(f"moving-credential-{n}-{i}"))
                i += 1
            return statuses

        before = reloads()
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(traffic, n) for n in range(8)]
            time.sleep(0.3)
            for i in range(4):
                config = in_envoy if i % 2 == 0 else bundled
                assert stack.bundle(config).returncode == 0
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline and reloads() < before + i + 1:
                    time.sleep(0.02)
                time.sleep(0.2)  # traffic on the new VMs
            done.set()
            statuses = [status for f in futures for status in f.result()]
        assert reloads() == before + 4, "each bundle was taken"
        assert len(statuses) > 16 and set(statuses) == {200}, collections.Counter(statuses)
        assert "configuration rejected" not in stack.envoy_log.read_text()
    finally:
        stack.stop()


def test_minimal_envoy_example_in_the_readme_is_valid(built, tmp_path):
    minimal = (ROOT / "envoy/minimal.yaml").read_text()
    assert minimal in (ROOT / "README.md").read_text(), "README must show envoy/minimal.yaml as it is"
    config = tmp_path / "minimal.yaml"
    config.write_text(minimal.replace("/etc/envoy/weir.wasm", str(devstack.WASM)))
    result = subprocess.run(devstack.envoy_command() + ["--mode", "validate", "-c", str(config), "--disable-hot-restart",
                             "--base-id", str(devstack.unique_base_id())], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    # Validation runs Weir's on_configure: a broken configuration fails it.
    config.write_text(config.read_text().replace('"auth": "none"', '"auth": "bearer"'))
    result = subprocess.run(devstack.envoy_command() + ["--mode", "validate", "-c", str(config), "--disable-hot-restart",
                             "--base-id", str(devstack.unique_base_id())], capture_output=True, text=True)
    assert result.returncode != 0


def test_the_audit_log_rotates_without_losing_a_record(built, tmp_path):
    """The usual rotation (rename the file, then ask Envoy to reopen its logs) under steady
    traffic: every request has exactly one record, in the old file or the new one."""
    import threading

    with devstack.Stack(tmp_path / "stack", concurrency=2) as stack:
        sent: list[str] = []
        stop = threading.Event()

        def traffic(n: int) -> None:
            with httpx.Client(base_url=stack.url, timeout=30) as client:
                i = 0
                while not stop.is_set():
                    rid = f"rotate-{n}-{i}"
                    i += 1
                    r = client.post("/v1/chat/completions", json={"model": "fast", "messages": [{"role": "user", "content": "x"}]},
                                    headers={"authorization": f"Bearer {DEMO_KEY}", "x-weir-request-id": rid})
                    assert r.status_code == 200, r.text
                    sent.append(rid)

        threads = [threading.Thread(target=traffic, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        time.sleep(1.5)
        rotated = stack.audit_log.with_suffix(".jsonl.1")
        stack.audit_log.rename(rotated)
        assert httpx.post(stack.admin + "/reopen_logs", timeout=10).status_code == 200
        time.sleep(1.5)
        stop.set()
        for t in threads:
            t.join()
        deadline = time.monotonic() + 10
        while True:
            ids = [json.loads(line)["request_id"] for f in (rotated, stack.audit_log)
                   for line in f.read_text().splitlines()]
            if len(ids) >= len(sent) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert sorted(ids) == sorted(sent)
        # Both files got records: the rotation happened under traffic.
        assert rotated.read_text().count("\n") > 50 and stack.audit_log.read_text().count("\n") > 50


def test_healthz_answers_probes_without_a_key_and_follows_envoys_health(built, tmp_path):
    with devstack.Stack(tmp_path / "stack") as stack:
        assert httpx.get(stack.url + "/healthz", timeout=10).status_code == 200
        # Failing the health check (as draining does) turns it to 503, for load balancers.
        assert httpx.post(stack.admin + "/healthcheck/fail", timeout=10).status_code == 200
        assert httpx.get(stack.url + "/healthz", timeout=10).status_code == 503
        assert httpx.post(stack.admin + "/healthcheck/ok", timeout=10).status_code == 200
        assert httpx.get(stack.url + "/healthz", timeout=10).status_code == 200
        # Only /healthz: other paths still go to Weir, and probes leave no audit records.
        r = httpx.get(stack.url + "/healthz/x", timeout=10)
        assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_url", r.text
        ok = httpx.post(stack.url + "/v1/chat/completions", json={"model": "fast", "messages": [{"role": "user", "content": "x"}]},
                        headers={"authorization": f"Bearer {DEMO_KEY}", "x-weir-request-id": "after-probes"}, timeout=10)
        assert ok.status_code == 200
        deadline = time.monotonic() + 10
        while "after-probes" not in stack.audit_log.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        paths = [json.loads(line)["path"] for line in stack.audit_log.read_text().splitlines()]
        assert paths == ["/healthz/x", "/v1/chat/completions"], paths


def test_limit_counters_survive_a_configuration_reload(built, tmp_path):
    """Counters live in Envoy's shared data, which outlives the filter's VMs: a reload (a
    new configuration, so new VMs) keeps what this window has counted."""
    config = tmp_path / "weir.toml"
    config.write_text(devstack.sample_config_text() + "\n[limits.per_key]\nrequests_per_minute = 3\n")
    with devstack.Stack(tmp_path / "stack", config=config) as stack:
        body = {"model": "fast", "messages": [{"role": "user", "content": "hi"}]}

        def chat() -> httpx.Response:
            return httpx.post(stack.url + "/v1/chat/completions", json=body, timeout=10,
                              headers={"authorization": f"Bearer {DEMO_KEY}"})

        if time.time() % 60 > 52:  # all of it in one minute window
            time.sleep(61 - time.time() % 60)
        assert [chat().status_code for _ in range(2)] == [200, 200]
        # A new configuration (another price), loaded by new VMs.
        loaded = stack.envoy_log.read_text().count("weir: configuration loaded")
        changed = tmp_path / "weir-changed.toml"
        changed.write_text(config.read_text().replace('"gpt-4o-mini" = { input = "0.15"', '"gpt-4o-mini" = { input = "0.16"'))
        assert changed.read_text() != config.read_text()
        assert stack.bundle(changed).returncode == 0
        deadline = time.monotonic() + 10
        while stack.envoy_log.read_text().count("weir: configuration loaded") == loaded and time.monotonic() < deadline:
            time.sleep(0.05)
        assert stack.envoy_log.read_text().count("weir: configuration loaded") > loaded
        time.sleep(0.5)
        third, fourth = chat(), chat()
        assert third.status_code == 200 and third.headers["x-ratelimit-remaining-requests"] == "0", third.headers
        assert fourth.status_code == 429
