"""Hostile input and faults through the real Envoy: every bad request gets a clear error
in the caller's API shape and exactly one audit record, and nothing unchecked is forwarded."""
from __future__ import annotations

import concurrent.futures
import json
import socket
import time

import httpx
import pytest

import devstack
from conftest import DEMO_KEY, Running, serving

MESSAGES = [{"role": "user", "content": "hi"}]
JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def hostile(built, tmp_path_factory) -> Running:
    # Short route and header timeouts, so a slow provider or client is a quick test.
    stack = devstack.Stack(tmp_path_factory.mktemp("hostile"), route_timeout="2s", request_headers_timeout="1s")
    with serving(stack) as running:
        yield running


def big(size: int) -> bytes:
    return b'{"model":"fast","messages":[{"role":"user","content":"' + b"a" * size + b'"}]}'


def nested(depth: int) -> bytes:
    return b'{"model":"fast","x":' + b"[" * depth + b"]" * depth + b"}"


# (id, body, extra headers, status, OpenAI error code, words in the message)
BAD_INPUT = [
    ("not-json", b"{model: fast}", {}, 400, "invalid_request", "not valid JSON"),
    ("not-an-object", b'["fast"]', {}, 400, "invalid_request", "JSON object"),
    ("empty", b"  ", {}, 400, "invalid_request", "empty"),
    ("missing-model", b'{"messages": []}', {}, 400, "invalid_request", "model parameter"),
    ("model-not-a-string", b'{"model": ["fast"]}', {}, 400, "invalid_request", "must be a string"),
    ("model-twice", b'{"model": "fast", "messages": [], "model": "best"}', {}, 400, "invalid_request", "more than once"),
    ("invalid-utf8", b'{"model": "fast", "messages": [{"role": "user", "content": "\xff\xfe"}]}', {}, 400, "invalid_request", "UTF-8"),
    ("wrong-content-type", b'{"model": "fast"}', {"content-type": "text/plain"}, 415, "unsupported_media_type", "Content-Type"),
    ("form-encoded", b"model=fast", {"content-type": "application/x-www-form-urlencoded"}, 415, "unsupported_media_type", "JSON"),
    ("over-the-limit", big(9 * 1024 * 1024), {}, 413, "request_too_large", "larger than the limit"),
    ("nested-10000-deep", nested(10_000), {}, 400, "invalid_request", "nested deeper"),
    ("huge-max-tokens", b'{"model": "fast", "messages": [], "max_tokens": 1e400}', {}, 400, "invalid_request", "positive integer"),
    ("huge-integer", b'{"model": "fast", "messages": [], "max_tokens": 123456789012345678901234567890}', {}, 400, "invalid_request", "positive integer"),
    ("infinite-temperature", b'{"model": "fast", "messages": [], "temperature": 1e999}', {}, 400, "invalid_request", "temperature"),
    ("oversize-directive", b'{"model": "fast", "messages": []}', {"x-weir-user": "u" * 200}, 400, "invalid_request", "x-weir-user"),
    ("bad-run-id", b'{"model": "fast", "messages": []}', {"x-weir-run-id": "run 1; drop"}, 400, "invalid_request", "x-weir-run-id"),
    ("weir-sets-team", b'{"model": "fast", "messages": [], "weir": {"team": "finance"}}', {}, 400, "invalid_request", "weir.team"),
    ("weir-sets-scopes", b'{"model": "fast", "messages": [], "weir": {"scopes": ["*"]}}', {}, 400, "invalid_request", "weir.scopes"),
    ("no-body", b"", {}, 400, "invalid_request", "no body"),
]


@pytest.mark.parametrize("case", BAD_INPUT, ids=[c[0] for c in BAD_INPUT])
def test_bad_input_gets_a_clear_openai_error_and_one_record(hostile, rid, case):
    _, body, extra, status, code, words = case
    headers = {"authorization": f"Bearer {DEMO_KEY}", "x-weir-request-id": rid, **JSON, **extra}
    response = httpx.post(hostile.url + "/v1/chat/completions", content=body, headers=headers, timeout=60)
    assert response.status_code == status, response.text[:300]
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code and words in error["message"], error
    assert hostile.received(rid) == []
    record = hostile.audit(rid)
    assert (record["status"], record["outcome"], record["decision"]) == (status, "denied", "deny")


@pytest.mark.parametrize("case", [c for c in BAD_INPUT if c[0] in ("not-json", "model-twice", "invalid-utf8", "over-the-limit")],
                         ids=lambda c: c[0])
def test_bad_input_on_messages_gets_anthropics_error_shape(hostile, rid, case):
    _, body, extra, status, _, words = case
    headers = {"x-api-key": DEMO_KEY, "anthropic-version": "2023-06-01", "x-weir-request-id": rid, **JSON, **extra}
    response = httpx.post(hostile.url + "/v1/messages", content=body, headers=headers, timeout=60)
    assert response.status_code == status
    body = response.json()
    assert body["type"] == "error" and words in body["error"]["message"]
    assert hostile.received(rid) == []
    assert hostile.audit(rid)["outcome"] == "denied"


def raw_post(port: int, header_line: str, rid: str) -> bytes:
    body = b'{"model":"fast","messages":[]}'
    raw = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {DEMO_KEY}\r\n"
           f"x-request-id: {rid}\r\nx-weir-request-id: {rid}\r\n{header_line}\r\n"
           f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(raw)
        return s.recv(65536)


def test_directive_with_a_bare_cr_is_refused(hostile, rid):
    reply = raw_post(hostile.stack.port, "x-weir-user: evil\rInjected: 1", rid)
    assert reply.startswith(b"HTTP/1.1 400")
    assert b'"code":"invalid_request"' in reply and b"x-weir-user" in reply
    assert hostile.received(rid) == []
    assert hostile.audit(rid)["error"] == "invalid_request"


def test_requests_envoy_refuses_before_weir_still_get_a_record(hostile, rid):
    """A NUL byte in a header: Envoy's HTTP codec answers 400 itself, before any filter."""
    before = len(hostile.audit_records())
    reply = raw_post(hostile.stack.port, "x-weir-user: ok\x00bad", rid)
    assert reply.startswith(b"HTTP/1.1 400")
    assert hostile.received(rid) == []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and len(hostile.audit_records()) == before:
        time.sleep(0.1)
    [record] = hostile.audit_records()[before:]
    assert (record["status"], record["outcome"], record["decision"], record["error"]) == (
        400, "denied", "deny", "rejected_by_envoy")
    assert record["time"].endswith("Z") and record["duration_ms"] < 60_000
    assert record["detail"].startswith("http1.")


def read_response(s: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response (with a content-length) from `s`."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            raise AssertionError(f"connection closed after {data!r}")
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    while len(body) < int(headers.get("content-length", "0")):
        chunk = s.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(lines[0].split()[1]), headers, body


def post_head(rid: str, key: str, length: int) -> bytes:
    return (f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
            f"x-weir-request-id: {rid}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\n\r\n").encode()


def test_a_refused_request_keeps_its_connection(hostile, rid):
    """A refusal waits for a small body to arrive, so Envoy keeps the HTTP/1 connection:
    a client retrying (or going on with another key) pays for no new connection."""
    body = json.dumps({"model": "fast", "messages": MESSAGES}).encode()
    with socket.create_connection(("127.0.0.1", hostile.stack.port), timeout=10) as s:
        s.sendall(post_head(rid, "wk_live_not_a_key", len(body)))
        # The answer waits for the body...
        s.settimeout(0.5)
        with pytest.raises(TimeoutError):
            s.recv(1)
        s.settimeout(10)
        s.sendall(body)
        status, headers, reply = read_response(s)
        assert status == 401 and headers.get("connection") != "close", headers
        assert json.loads(reply)["error"]["code"] == "invalid_api_key"
        # ...and the same connection serves the next request.
        s.sendall(post_head(rid + "-2", DEMO_KEY, len(body)) + body)
        status, headers, reply = read_response(s)
        assert status == 200, reply
    assert hostile.received(rid) == []
    assert (hostile.audit(rid)["status"], hostile.audit(rid)["outcome"]) == (401, "denied")
    assert hostile.audit(rid + "-2")["outcome"] == "completed"


def test_a_refusal_waiting_for_a_body_is_sent_when_trailers_end_the_request(hostile, rid):
    """HTTP/2: a request may end with trailers instead of its last data frame."""
    import h2.config
    import h2.connection
    import h2.events

    body = json.dumps({"model": "fast", "messages": MESSAGES}).encode()
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    conn.send_headers(1, [(":method", "POST"), (":path", "/v1/chat/completions"), (":scheme", "http"),
                          (":authority", "x"), ("authorization", "Bearer wk_live_not_a_key"),
                          ("x-weir-request-id", rid), ("content-type", "application/json"),
                          ("content-length", str(len(body)))])
    conn.send_data(1, body)
    conn.send_headers(1, [("x-checksum", "1")], end_stream=True)
    status, reply, ended = None, b"", False
    with socket.create_connection(("127.0.0.1", hostile.stack.port), timeout=10) as s:
        s.sendall(conn.data_to_send())
        while not ended:
            data = s.recv(65536)
            assert data, "connection closed before the reply ended"
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    status = dict(event.headers)[b":status"]
                elif isinstance(event, h2.events.DataReceived):
                    reply += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.StreamEnded):
                    ended = True
            s.sendall(conn.data_to_send())
    assert status == b"401" and json.loads(reply)["error"]["code"] == "invalid_api_key"
    assert hostile.audit(rid)["status"] == 401


def test_a_refusal_does_not_wait_for_a_large_body(hostile, rid):
    """Above 64 KiB (or without a length) the refusal goes at once: Weir never waits for,
    nor buffers, a large body from a caller it refuses; Envoy then closes the connection."""
    with socket.create_connection(("127.0.0.1", hostile.stack.port), timeout=10) as s:
        s.sendall(post_head(rid, "wk_live_not_a_key", 64 * 1024 + 1) + b'{"model":')
        status, headers, reply = read_response(s)
        assert status == 401 and headers.get("connection") == "close", headers
    assert hostile.audit(rid)["outcome"] == "denied"


def test_a_client_that_leaves_while_its_refusal_waits_still_gets_a_record(hostile, rid):
    with socket.create_connection(("127.0.0.1", hostile.stack.port), timeout=10) as s:
        s.sendall(post_head(rid, "wk_live_not_a_key", 100) + b'{"model":')
        time.sleep(0.3)
    record = hostile.audit(rid)
    # No reply was sent (status 0), and the record says why.
    assert (record["outcome"], record["error"], record["status"], record["detail"]) == (
        "denied", "invalid_api_key", 0, "downstream_remote_disconnect"), record
    assert hostile.received(rid) == []


def test_credentials_in_the_query_string_are_ignored_and_not_forwarded(hostile, rid):
    secret = "wk_live_QUERYSTRINGSECRET0123456789abcdef"
    url = hostile.url + f"/v1/chat/completions?api_key={secret}&key={secret}&trace=1"
    # The query key is not a credential for Weir:
    response = httpx.post(url, json={"model": "fast", "messages": MESSAGES}, headers={"x-weir-request-id": rid}, timeout=10)
    assert response.status_code == 401
    rid2 = rid + "-authed"
    response = httpx.post(url, json={"model": "fast", "messages": MESSAGES},
                          headers={"authorization": f"Bearer {DEMO_KEY}", "x-weir-request-id": rid2}, timeout=10)
    assert response.status_code == 200
    [received] = hostile.received(rid2)
    assert secret not in json.dumps(received)
    assert received["path"] == "/v1/chat/completions"
    assert secret not in hostile.stack.audit_log.read_text()
    assert secret not in hostile.stack.envoy_log.read_text()


def test_clients_cannot_steer_envoy_with_x_envoy_headers(hostile, rid):
    headers = {"authorization": f"Bearer {DEMO_KEY}", "x-weir-request-id": rid,
               "x-envoy-upstream-rq-timeout-ms": "1", "x-envoy-retry-on": "5xx", "x-envoy-max-retries": "10",
               "x-mock-status": "500"}
    response = httpx.post(hostile.url + "/v1/chat/completions", json={"model": "fast", "messages": MESSAGES},
                          headers=headers, timeout=10)
    assert response.status_code == 500
    assert len(hostile.received(rid)) == 1  # no client-ordered retries
    assert hostile.audit(rid)["attempts"] == 1


@pytest.mark.parametrize(
    "fault, status, detail",
    [
        ({"x-mock-delay-ms": "4000"}, 504, "response_timeout"),
        ({"x-mock-drop-after": "0"}, 503, "upstream_reset_before_response_started"),
        ({"x-mock-status": "503"}, 503, "via_upstream"),
        ({"x-mock-status": "429"}, 429, "via_upstream"),
    ],
    ids=["slow", "reset-before-response", "503", "429"],
)
def test_provider_faults_give_a_sensible_status_in_the_clients_shape(hostile, rid, fault, status, detail):
    headers = {"authorization": f"Bearer {DEMO_KEY}", "x-weir-request-id": rid, **fault}
    response = httpx.post(hostile.url + "/v1/chat/completions", json={"model": "fast", "messages": MESSAGES},
                          headers=headers, timeout=30)
    assert response.status_code == status
    assert "error" in response.json()
    record = hostile.audit(rid)
    assert (record["status"], record["outcome"]) == (status, "upstream_error")
    assert record["detail"].startswith(detail)


def test_reloading_the_filter_under_load_loses_nothing(hostile):
    stack = hostile.stack
    before = len(hostile.audit_records())
    ids = [f"reload-{i}-{time.time_ns()}" for i in range(300)]

    def send(rid):
        r = httpx.post(stack.url + "/v1/chat/completions", json={"model": "fast", "messages": MESSAGES},
                       headers={"authorization": f"Bearer {DEMO_KEY}", "x-weir-request-id": rid}, timeout=30)
        return r.status_code

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(send, rid) for rid in ids]
        for _ in range(6):  # rewrite the filter configuration while requests run
            assert stack.bundle().returncode == 0
            time.sleep(0.05)
        statuses = [f.result() for f in futures]
    assert statuses == [200] * len(ids)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and len(hostile.audit_records()) < before + len(ids):
        time.sleep(0.1)
    found = {r["request_id"] for r in hostile.audit_records()}
    assert all(rid in found for rid in ids)
    assert len(hostile.audit_records()) == before + len(ids)
    assert stack.envoy.poll() is None


def test_a_filter_that_cannot_load_fails_closed(built, tmp_path):
    """FAIL_CLOSED: with Weir's VM unable to start, nothing is forwarded, the client gets a
    JSON error, and the request is still recorded."""
    stack = devstack.Stack(tmp_path)
    try:
        stack.start_mock()
        assert stack.bundle().returncode == 0
        broken = tmp_path / "broken.wasm"
        broken.write_bytes(b"\0asm not a module")
        resource = json.loads(stack.filter_config.read_text())
        resource["resources"][0]["typed_config"]["config"]["vm_config"]["code"]["local"]["filename"] = str(broken)
        stack.filter_config.write_text(json.dumps(resource))
        stack.render()
        stack.start_envoy()
        response = httpx.post(stack.url + "/v1/chat/completions", json={"model": "fast", "messages": MESSAGES},
                              headers={"authorization": f"Bearer {DEMO_KEY}", "x-request-id": "vm-down"}, timeout=10)
        assert response.status_code >= 500
        assert response.json()["error"]["type"] == "server_error"
        assert httpx.get(stack.mock_url() + "/_mock/requests").json() == []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not stack.audit_log.exists():
            time.sleep(0.1)
        time.sleep(0.5)
        [record] = [json.loads(line) for line in stack.audit_log.read_text().splitlines()]
        assert (record["request_id"], record["outcome"], record["error"]) == ("vm-down", "error", "weir_unavailable")
        assert DEMO_KEY not in stack.audit_log.read_text()
    finally:
        stack.stop()


FRONT_LUA = """          - name: envoy.filters.http.lua
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua
              default_source_code:
                inline_string: |
                  function envoy_on_request(handle)
                    local path = handle:headers():get(":path")
                    if path == "/answered-in-front" then
                      handle:respond({[":status"] = "204"}, "")
                    elseif path == "/refused-in-front" then
                      handle:respond({[":status"] = "403"}, "no")
                    end
                  end
"""


def test_requests_a_filter_in_front_of_weir_answers_get_an_honest_record(built, tmp_path):
    """A filter placed before Weir (a CORS preflight, a WAF) may answer a request itself:
    its record says what happened (completed or denied), not "client aborted"."""
    with devstack.Stack(tmp_path / "stack", front_filters=FRONT_LUA) as stack:
        assert httpx.get(stack.url + "/answered-in-front", timeout=10).status_code == 204
        assert httpx.get(stack.url + "/refused-in-front", timeout=10).status_code == 403
        deadline = time.monotonic() + 10
        while len(stack.audit_log.read_text().splitlines()) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        records = {r["path"]: r for r in map(json.loads, stack.audit_log.read_text().splitlines())}
        answered, refused = records["/answered-in-front"], records["/refused-in-front"]
        assert (answered["status"], answered["outcome"], answered["decision"], answered["error"]) == (
            204, "completed", "allow", None)
        assert (refused["status"], refused["outcome"], refused["decision"], refused["error"]) == (
            403, "denied", "deny", "rejected_by_envoy")
        assert answered["detail"] and refused["detail"]


def test_a_clients_own_x_request_id_is_bounded_in_records_and_headers(hostile):
    """Without x-weir-request-id the record uses Envoy's x-request-id, which a client may set
    to anything a header can hold: it is cut to 128 characters of the request-id alphabet."""
    stamp = time.time_ns()
    raw = f"big-{stamp}-" + 'a "b"<c>' * 2000
    r = httpx.post(hostile.url + "/v1/chat/completions", json={"model": "fast", "messages": [{"role": "user", "content": "x"}]},
                   headers={"authorization": f"Bearer {DEMO_KEY}", "x-request-id": raw}, timeout=10)
    assert r.status_code == 200, r.text
    expected = "".join(c if c.isalnum() or c in "._:-" else "_" for c in raw[:128])
    assert r.headers["x-weir-run-id"] == expected
    record = hostile.audit(expected)
    assert record["request_id"] == record["run_id"] == expected


def test_a_client_that_trickles_its_headers_is_cut_off(hostile):
    """Envoy's request_headers_timeout (10 s in envoy.yaml; 1 s here): a client that never
    finishes its headers (slowloris) loses the connection instead of holding it."""
    with socket.create_connection(("127.0.0.1", hostile.stack.port), timeout=10) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: weir\r\n")
        started = time.monotonic()
        received = b""
        while chunk := s.recv(4096):  # until Envoy closes the connection
            received += chunk
        waited = time.monotonic() - started
    assert 0.8 <= waited < 5, waited
    assert received.startswith(b"HTTP/1.1 408"), received[:200]
    # Still recorded: Envoy refused it, before any header reached Weir.
    deadline = time.monotonic() + 10
    while not (found := [r for r in hostile.audit_records() if r["detail"] == "request_header_timeout"]):
        assert time.monotonic() < deadline, "no audit record for the timed-out request"
        time.sleep(0.1)
    [record] = found
    assert (record["status"], record["outcome"], record["error"]) == (408, "denied", "rejected_by_envoy")
