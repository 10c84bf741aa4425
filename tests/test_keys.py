"""Keys for real, against the real Envoy: scopes, expiry, rotation, revocation through the
CLI without restarting Envoy, /v1/models per key, JWT identity, 100,000 keys."""
from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import time
from pathlib import Path

import anthropic
import httpx
import jwt as pyjwt
import openai
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

import devstack
from conftest import ROOT, Running, serving

MESSAGES = [{"role": "user", "content": "hello"}]


def weir_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(devstack.WEIR_BIN), *args], capture_output=True, text=True)


class KeyStack(Running):
    """A stack whose configuration file the tests edit with the CLI and redeploy."""

    def __init__(self, stack: devstack.Stack, config: Path):
        super().__init__(stack)
        self.config = config

    def cli(self, *args: str) -> str:
        result = weir_cli(*args, "-c", str(self.config))
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    def deploy(self) -> None:
        result = self.stack.bundle(self.config)
        assert result.returncode == 0, result.stderr

    def new_key(self, *args: str) -> str:
        return self.cli("keys", "new", "--name", "test", *args)

    def chat(self, key: str, model: str = "fast", rid: str | None = None) -> httpx.Response:
        headers = {"authorization": f"Bearer {key}"}
        if rid:
            headers["x-weir-request-id"] = rid
        return httpx.post(self.url + "/v1/chat/completions", json={"model": model, "messages": MESSAGES},
                          headers=headers, timeout=10)

    def wait_for(self, key: str, status: int, timeout: float = 10.0) -> httpx.Response:
        """Polls until `key` gets `status` (a deployed change takes effect within seconds)."""
        deadline = time.monotonic() + timeout
        while True:
            response = self.chat(key)
            if response.status_code == status or time.monotonic() > deadline:
                assert response.status_code == status, response.text
                return response
            time.sleep(0.05)


@pytest.fixture(scope="module")
def keys(built, tmp_path_factory) -> KeyStack:
    workdir = tmp_path_factory.mktemp("keys")
    config = workdir / "weir.toml"
    config.write_text(devstack.sample_config_text())
    stack = devstack.Stack(workdir / "stack", config=config)
    with serving(stack, KeyStack(stack, config)) as running:
        yield running


def test_scopes_deny_with_403_naming_the_missing_scope(keys, rid):
    key = keys.new_key("--team", "support", "--scopes", "chat,model:fast")
    keys.deploy()
    keys.wait_for(key, 200)

    response = keys.chat(key, model="best", rid=rid)
    assert response.status_code == 403
    error = response.json()["error"]
    assert error["type"] == "permission_error" and error["code"] == "missing_scope"
    assert "`model:best`" in error["message"] and error["param"] == "model"
    assert keys.received(rid) == []
    record = keys.audit(rid)
    assert (record["outcome"], record["error"], record["team"]) == ("denied", "missing_scope", "support")

    client = anthropic.Anthropic(base_url=keys.url, api_key=key, max_retries=0)
    with pytest.raises(anthropic.PermissionDeniedError) as raised:
        client.messages.create(model="fast", max_tokens=5, messages=MESSAGES)
    assert raised.value.body["error"]["type"] == "permission_error"
    assert "`messages`" in raised.value.body["error"]["message"]

    with pytest.raises(openai.PermissionDeniedError) as raised:
        openai.OpenAI(base_url=keys.url + "/v1", api_key=key, max_retries=0).models.list()
    assert "`models`" in str(raised.value)


def test_models_lists_what_each_key_may_use_in_both_formats(keys):
    narrow = keys.new_key("--team", "t", "--scopes", "models,chat,model:f*,model:local")
    wide = keys.new_key("--team", "t", "--scopes", "*")
    keys.deploy()
    keys.wait_for(wide, 200)

    listed = openai.OpenAI(base_url=keys.url + "/v1", api_key=narrow, max_retries=0).models.list()
    assert [m.id for m in listed.data] == ["fast", "local"]
    assert all(m.object == "model" and m.owned_by == "weir" for m in listed.data)
    listed = openai.OpenAI(base_url=keys.url + "/v1", api_key=wide, max_retries=0).models.list()
    assert [m.id for m in listed.data] == ["balanced", "best", "fast", "local"]

    page = anthropic.Anthropic(base_url=keys.url, api_key=narrow, max_retries=0).models.list()
    assert [m.id for m in page.data] == ["fast", "local"]
    assert all(m.type == "model" for m in page.data)
    raw = httpx.get(keys.url + "/v1/models", headers={"x-api-key": narrow, "anthropic-version": "2023-06-01"}).json()
    assert raw["has_more"] is False and (raw["first_id"], raw["last_id"]) == ("fast", "local")

    # One model, as the SDKs retrieve it: exactly what the list shows the key.
    sdk = openai.OpenAI(base_url=keys.url + "/v1", api_key=narrow, max_retries=0)
    model = sdk.models.retrieve("fast")
    assert (model.id, model.object, model.owned_by) == ("fast", "model", "weir")
    for hidden in ["best", "fastest", "gpt-4o-mini"]:  # outside the scopes, unknown, a provider's
        with pytest.raises(openai.NotFoundError) as raised:
            sdk.models.retrieve(hidden)
        assert raised.value.code == "model_not_found"
        assert f"`{hidden}` does not exist or this key may not use it" in raised.value.message
    claude = anthropic.Anthropic(base_url=keys.url, api_key=narrow, max_retries=0)
    assert (claude.models.retrieve("local").id, claude.models.retrieve("local").type) == ("local", "model")
    with pytest.raises(anthropic.NotFoundError) as raised:
        claude.models.retrieve("best")
    assert raised.value.body["error"]["type"] == "not_found_error"
    assert openai.OpenAI(base_url=keys.url + "/v1", api_key=wide, max_retries=0).models.retrieve("best").id == "best"

    # A name outside the key's scopes is 403; one inside them but unknown is 404, listing
    # only what the key may use.
    assert keys.chat(narrow, model="nope").status_code == 403
    response = keys.chat(narrow, model="fastest")
    assert response.status_code == 404
    assert response.json()["error"]["message"].endswith("Available tiers: fast, local.")


def test_expired_key_is_refused_with_a_message_that_says_so(keys, rid):
    key = keys.new_key("--team", "t", "--scopes", "*", "--expires", "4s")
    keys.deploy()
    keys.wait_for(key, 200)
    response = keys.wait_for(key, 401, timeout=15)  # no redeploy: the filter checks the time
    error = response.json()["error"]
    assert error["code"] == "key_expired" and "expired at" in error["message"]
    response = keys.chat(key, rid=rid)
    record = keys.audit(rid)
    assert (record["error"], record["outcome"]) == ("key_expired", "denied")
    assert record["key_id"].startswith("key_")


def test_rotation_overlap_then_revocation_without_restarting_envoy(keys):
    envoy_pid = keys.stack.envoy.pid
    old = keys.new_key("--team", "t", "--scopes", "*", "--id", "rotating-svc")
    keys.deploy()
    keys.wait_for(old, 200)

    new = keys.cli("keys", "rotate", "rotating-svc", "--overlap", "4s")
    keys.deploy()
    keys.wait_for(new, 200)
    # Inside the overlap both work, and the record says which one was used.
    rid_old, rid_new = f"rot-old-{time.time_ns()}", f"rot-new-{time.time_ns()}"
    assert keys.chat(old, rid=rid_old).status_code == 200
    assert keys.chat(new, rid=rid_new).status_code == 200
    record = keys.audit(rid_old)
    assert (record["key_id"], record["key_successor"]) == ("rotating-svc", "rotating-svc-r1")
    record = keys.audit(rid_new)
    assert (record["key_id"], record["key_successor"]) == ("rotating-svc-r1", None)

    # After the window the old key stops, and says what replaced it.
    response = keys.wait_for(old, 401, timeout=15)
    assert response.json()["error"]["code"] == "key_rotated"
    assert "rotating-svc-r1" in response.json()["error"]["message"]
    assert keys.chat(new).status_code == 200

    keys.cli("keys", "revoke", "rotating-svc-r1")
    keys.deploy()
    response = keys.wait_for(new, 401, timeout=10)
    assert response.json()["error"]["code"] == "key_revoked"
    assert keys.stack.envoy.pid == envoy_pid and keys.stack.envoy.poll() is None


def test_100000_keys_load_and_work(built, tmp_path):
    lines = [devstack.sample_config_text()]
    for i in range(100_000):
        digest = hashlib.sha256(f"wk_live_bulk{i:06d}".encode()).hexdigest()
        lines.append(f'[[keys]]\nid = "bulk{i:06d}"\nteam = "team{i % 50}"\nhash = "sha256:{digest}"\n'
                     f'scopes = ["chat", "model:fast"]\n')
    config = tmp_path / "weir.toml"
    config.write_text("\n".join(lines))
    with devstack.Stack(tmp_path / "stack", config=config) as stack:
        assert "100001 keys" in stack.envoy_log.read_text()
        for i in (0, 54_321, 99_999):
            response = httpx.post(stack.url + "/v1/chat/completions", json={"model": "fast", "messages": MESSAGES},
                                  headers={"authorization": f"Bearer wk_live_bulk{i:06d}"}, timeout=10)
            assert response.status_code == 200, response.text
        response = httpx.post(stack.url + "/v1/chat/completions", json={"model": "fast", "messages": MESSAGES},
                              headers={"authorization": "Bearer wk_live_bulk100000"}, timeout=10)
        assert response.status_code == 401


# -- JWT identity ------------------------------------------------------------------------------


def b64url(n: int) -> str:
    return base64.urlsafe_b64encode(n.to_bytes((n.bit_length() + 7) // 8, "big")).rstrip(b"=").decode()


@pytest.fixture(scope="module")
def idp(tmp_path_factory):
    """A signing key and its JWKS file, as an identity provider would publish."""
    directory = tmp_path_factory.mktemp("idp")
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    numbers = private.public_key().public_numbers()
    jwks = {"keys": [{"kty": "RSA", "kid": "k1", "alg": "RS256", "use": "sig", "n": b64url(numbers.n), "e": b64url(numbers.e)}]}
    path = directory / "jwks.json"
    path.write_text(json.dumps(jwks))

    def token(claims: dict, key=private, **overrides) -> str:
        body = {"iss": devstack.JWT_ISSUER, "aud": devstack.JWT_AUDIENCE, "exp": int(time.time()) + 600, **claims}
        body.update(overrides)
        return pyjwt.encode(body, key, algorithm="RS256", headers={"kid": "k1"})

    return path, token


@pytest.fixture(scope="module")
def jwt_stack(built, idp, tmp_path_factory) -> Running:
    jwks, _ = idp
    workdir = tmp_path_factory.mktemp("jwt")
    config = workdir / "weir.toml"
    config.write_text(devstack.sample_config_text() + f"""
[jwt]
payload_header = "{devstack.JWT_PAYLOAD_HEADER}"
team_claim = "org.team"
project_claim = "project"
scopes_claim = "scope"
""")
    stack = devstack.Stack(workdir / "stack", config=config, jwks=jwks)
    with serving(stack) as running:
        yield running


def jwt_chat(stack: Running, token: str, rid: str, model: str = "fast", extra: dict | None = None) -> httpx.Response:
    headers = {"authorization": f"Bearer {token}", "x-weir-request-id": rid, **(extra or {})}
    return httpx.post(stack.url + "/v1/chat/completions", json={"model": model, "messages": MESSAGES},
                      headers=headers, timeout=10)


def test_jwt_identity_from_a_real_signed_token(jwt_stack, idp, rid):
    _, token = idp
    good = token({"sub": "alice@example.com", "org": {"team": "research"}, "project": "rag",
                  "scope": "openid chat models model:fast"})
    response = jwt_chat(jwt_stack, good, rid)
    assert response.status_code == 200, response.text
    record = jwt_stack.audit(rid)
    assert (record["identity"], record["key_id"], record["team"], record["project"]) == (
        "jwt", "jwt:alice@example.com", "research", "rag")
    [received] = jwt_stack.received(rid)
    assert good not in json.dumps(received) and devstack.JWT_PAYLOAD_HEADER not in received["headers"]
    assert received["headers"]["authorization"] == "Bearer mock-openai-credential"
    assert good not in jwt_stack.stack.audit_log.read_text()

    # The token's scopes apply.
    response = jwt_chat(jwt_stack, good, rid + "-best", model="best")
    assert response.status_code == 403
    listed = openai.OpenAI(base_url=jwt_stack.url + "/v1", api_key=good, max_retries=0).models.list()
    assert [m.id for m in listed.data] == ["fast"]


def test_jwt_that_envoy_rejects_never_becomes_an_identity(jwt_stack, idp, rid):
    _, token = idp
    claims = {"sub": "mallory", "org": {"team": "research"}, "scope": "*"}
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    for i, bad in enumerate([
        token(claims, key=other_key),                      # not signed by the IdP
        token(claims, exp=int(time.time()) - 600),          # expired (beyond jwt_authn's 60 s skew)
        token(claims, aud="someone-else"),                  # wrong audience
    ]):
        response = jwt_chat(jwt_stack, bad, f"{rid}-{i}")
        assert response.status_code == 401, (i, response.text)
        assert jwt_stack.audit(f"{rid}-{i}")["identity"] == "api_key"

    # A client cannot forge the payload header Envoy forwards.
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    response = httpx.post(jwt_stack.url + "/v1/chat/completions", json={"model": "fast", "messages": MESSAGES},
                          headers={devstack.JWT_PAYLOAD_HEADER: forged, "x-weir-request-id": rid}, timeout=10)
    assert response.status_code == 401
    assert jwt_stack.received(rid) == []
    # API keys keep working beside JWTs.
    response = jwt_chat(jwt_stack, devstack.DEMO_KEY, rid + "-key")
    assert response.status_code == 200


def test_jwt_without_a_team_claim_is_refused(jwt_stack, idp, rid):
    _, token = idp
    response = jwt_chat(jwt_stack, token({"sub": "bob", "scope": "chat model:*"}), rid)
    assert response.status_code == 401
    assert "`org.team`" in response.json()["error"]["message"]
    assert response.json()["error"]["code"] == "invalid_token"


def test_the_readme_shows_the_jwt_filters_the_tests_run():
    snippet = devstack.jwt_filters(Path("/etc/envoy/jwks.json"))
    assert snippet in (ROOT / "README.md").read_text()
