"""``WaveSpeedClient`` over real HTTP: the emulator (its faults) and small scripted servers.

Each rule of ``worker.wavespeed``'s error mapping is staged on the wire: a submit that
provably never left is transient, one that may have reached WaveSpeed is "outcome
unknown"; the API key never shows in a message; redirects are followed by GETs only,
and never carry the key to another host; TLS is verified; proxies are used only when
the settings say a proxy variable was set.
"""

from __future__ import annotations

import base64
import math
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import urllib3

from tests.support.emulator import EmulatorHandle
from tests.support.scripted_http import (
    Reply,
    Seen,
    envelope,
    scripted_server,
    self_signed_cert,
)
from worker.errors import (
    PermanentError,
    RateLimitedError,
    SubmitOutcomeUnknownError,
    TransientError,
)
from worker.wavespeed import RemoteStatus, WaveSpeedClient

MODEL = "flux-kontext-max/text-to-image"
BODY = {"prompt": "a lighthouse"}
KEY = "test-key"  # the emulator fixture's


def client_for(base_url: str, **options: object) -> WaveSpeedClient:
    settings: dict[str, object] = {
        "api_key": KEY,
        "connect_timeout": 5.0,
        "read_timeout": 30.0,
        **options,
    }
    return WaveSpeedClient(base_url=base_url, **settings)  # type: ignore[arg-type]


@pytest.fixture
def client(emulator: EmulatorHandle) -> Iterator[WaveSpeedClient]:
    made = client_for(emulator.base_url)
    yield made
    made.close()


def created_count(emulator: EmulatorHandle) -> int:
    count: int = emulator.stats()["predictions"]["created"]
    return count


def a_closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# --- the calls ------------------------------------------------------------------------


def test_submit_then_result(client: WaveSpeedClient, emulator: EmulatorHandle) -> None:
    submitted = client.submit(MODEL, BODY, webhook="http://127.0.0.1:9/hook?job=j1&t=a b")

    [seen] = emulator.predictions()
    assert seen["id"] == submitted.id and seen["input"] == BODY
    assert seen["webhook"]["url"] == "http://127.0.0.1:9/hook?job=j1&t=a b"
    done = emulator.wait_for(submitted.id)
    polled = client.result(submitted.id)
    assert polled.status is RemoteStatus.COMPLETED
    assert polled.outputs == done["outputs"] and polled.outputs


def test_upload_stores_the_bytes(client: WaveSpeedClient, emulator: EmulatorHandle) -> None:
    data = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40

    url = client.upload(data, "image/png", 'in "quotes".png')

    fetched = urllib3.request("GET", url, timeout=10)
    assert (fetched.status, fetched.data) == (200, data)
    assert emulator.stats()["uploads"] == 1


def test_webhook_secret(client: WaveSpeedClient, emulator: EmulatorHandle) -> None:
    answer = emulator.session.get(
        emulator.url("/api/v3/webhook/secret"), headers=emulator.auth_headers, timeout=10
    )
    assert client.webhook_secret() == answer.json()["data"]["secret"]


def test_balance_in_micro_dollars(client: WaveSpeedClient, emulator: EmulatorHandle) -> None:
    assert client.balance() == 1_000_000_000
    emulator.configure(balance="156.78")
    assert client.balance() == 156_780_000


@pytest.mark.parametrize(
    ("raw", "micros"),
    [(b"0.30000000000000004", 300_000), (b"12", 12_000_000), (b"1e2", 100_000_000)],
)
def test_balance_reads_the_number_as_text(raw: bytes, micros: int) -> None:
    body = b'{"code":200,"message":"success","data":{"balance":' + raw + b',"currency":"USD"}}'
    with scripted_server(lambda _: Reply(200, body, {"Content-Type": "application/json"})) as srv:
        assert client_for(srv.base_url).balance() == micros


@pytest.mark.parametrize("data", [{"balance": "ten"}, {"balance": True}, {"currency": "USD"}])
def test_a_balance_without_an_amount_is_refused(data: dict[str, object]) -> None:
    with (
        scripted_server(lambda _: envelope(data)) as server,
        pytest.raises(PermanentError, match="balance"),
    ):
        client_for(server.base_url).balance()


# --- a submit that never left: safe to retry -------------------------------------------


def test_connection_refused_is_transient() -> None:
    refused = client_for(f"http://127.0.0.1:{a_closed_port()}")
    with pytest.raises(TransientError) as raised:
        refused.submit(MODEL, BODY)
    assert raised.value.code == "connect"
    assert type(raised.value) is TransientError


def test_connect_timeout_is_transient() -> None:
    # A listener whose accept queue is full: the kernel drops further SYNs, so a
    # connect waits until its timeout (nothing is ever sent).
    with socket.socket() as listener, socket.socket() as filler:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        filler.connect(listener.getsockname())  # fills the queue of one
        stalled = client_for(f"http://127.0.0.1:{listener.getsockname()[1]}", connect_timeout=0.3)
        with pytest.raises(TransientError) as raised:
            stalled.submit(MODEL, BODY)
    assert raised.value.code == "connect"
    assert "ConnectTimeoutError" in raised.value.message


@pytest.mark.parametrize(("kind", "status"), [("submit_503", 503), ("submit_429", 429)])
def test_503_and_429_are_safe_to_retry(
    client: WaveSpeedClient, emulator: EmulatorHandle, kind: str, status: int
) -> None:
    emulator.configure(faults={kind: {"count": 1, "retry_after": 7} if status == 429 else 1})
    with pytest.raises(TransientError) as raised:
        client.submit(MODEL, BODY)
    assert raised.value.code == status
    if status == 429:
        assert isinstance(raised.value, RateLimitedError)
        assert raised.value.retry_after == 7


# --- a submit that may have reached WaveSpeed: outcome unknown -------------------------


@pytest.mark.parametrize(
    ("kind", "created"),
    [
        ("submit_drop_after_create", 1),
        ("submit_drop_before_create", 0),  # the same on the wire: the client cannot tell
        ("submit_malformed", 1),
        ("submit_500", 0),
        ("submit_502", 0),
    ],
)
def test_maybe_sent_is_outcome_unknown(
    client: WaveSpeedClient, emulator: EmulatorHandle, kind: str, created: int
) -> None:
    emulator.configure(faults={kind: {"count": 1}})
    with pytest.raises(SubmitOutcomeUnknownError) as raised:
        client.submit(MODEL, BODY)
    assert raised.value.code == "submit_outcome_unknown"
    assert created_count(emulator) == created


def test_a_read_timeout_on_submit_is_outcome_unknown(emulator: EmulatorHandle) -> None:
    emulator.configure(faults={"submit_slow": {"delay": 30, "count": 1}})
    impatient = client_for(emulator.base_url, read_timeout=0.3)
    with pytest.raises(SubmitOutcomeUnknownError) as raised:
        impatient.submit(MODEL, BODY)
    assert "ReadTimeoutError" in raised.value.message


def test_a_submit_redirect_is_not_followed(emulator: EmulatorHandle) -> None:
    # A 307 would re-send the POST (and so maybe bill twice): it is an unknown outcome.
    target = emulator.url("/api/v3/wavespeed-ai/" + MODEL)
    reply = Reply(307, b"", {"Location": target})
    with scripted_server(lambda _seen: reply) as server:
        with pytest.raises(SubmitOutcomeUnknownError) as raised:
            client_for(server.base_url).submit(MODEL, BODY)
        assert len(server.seen) == 1
    assert "HTTP 307" in raised.value.message
    assert emulator.stats()["submissions"]["total"] == 0


# --- polls: any failure to get an answer is transient ----------------------------------


@pytest.mark.parametrize("kind", ["result_drop", "result_malformed", "result_500", "result_502"])
def test_a_failed_poll_is_transient(
    client: WaveSpeedClient, emulator: EmulatorHandle, kind: str
) -> None:
    prediction = client.submit(MODEL, BODY)
    emulator.configure(faults={kind: {"count": 1}})
    with pytest.raises(TransientError) as raised:
        client.result(prediction.id)
    assert type(raised.value) is TransientError
    assert client.result(prediction.id).id == prediction.id  # the next poll is fine


def test_a_read_timeout_on_a_poll_is_transient(emulator: EmulatorHandle) -> None:
    prediction = client_for(emulator.base_url).submit(MODEL, BODY)
    emulator.configure(faults={"result_slow": {"delay": 30, "count": 1}})
    with pytest.raises(TransientError) as raised:
        client_for(emulator.base_url, read_timeout=0.3).result(prediction.id)
    assert raised.value.code == "transport"
    assert "ReadTimeoutError" in raised.value.message


def test_a_poll_follows_a_redirect_on_its_host_with_the_key() -> None:
    def answer(seen: Seen) -> Reply:
        if seen.target.endswith("/result"):
            return Reply(302, b"", {"Location": "/moved/p1"})
        return envelope({"id": "p1", "status": "processing"})

    with scripted_server(answer) as server:
        polled = client_for(server.base_url).result("p1")
    assert polled.status is RemoteStatus.PROCESSING
    assert [seen.target for seen in server.seen] == ["/api/v3/predictions/p1/result", "/moved/p1"]
    assert server.seen[1].headers["authorization"] == f"Bearer {KEY}"


def test_a_redirect_to_another_host_does_not_carry_the_key() -> None:
    with scripted_server(lambda _seen: envelope({"id": "p1", "status": "created"})) as other:
        moved = Reply(302, b"", {"Location": other.base_url + "/elsewhere"})
        with scripted_server(lambda _seen: moved) as server:
            client_for(server.base_url).result("p1")
        [seen] = other.seen
    assert "authorization" not in seen.headers


def test_endless_redirects_are_a_permanent_error() -> None:
    with scripted_server(lambda seen: Reply(302, b"", {"Location": seen.target})) as server:
        with pytest.raises(PermanentError) as raised:
            client_for(server.base_url).result("p1")
        assert len(server.seen) == 31  # the request and 30 redirects
    assert raised.value.code == "client"


# --- the request itself is wrong: permanent, nothing sent ------------------------------


def test_a_key_that_cannot_be_a_header_is_refused_without_quoting_it(
    emulator: EmulatorHandle,
) -> None:
    broken = client_for(emulator.base_url, api_key="sk-secret\r\nX-Injected: 1")
    with pytest.raises(PermanentError) as raised:
        broken.submit(MODEL, BODY)
    assert raised.value.code == "client"
    assert "sk-secret" not in str(raised.value)
    assert emulator.stats()["submissions"]["total"] == 0


def test_a_body_that_is_not_json_is_refused(
    client: WaveSpeedClient, emulator: EmulatorHandle
) -> None:
    with pytest.raises(PermanentError) as raised:
        client.submit(MODEL, {"prompt": "x", "guidance_scale": math.nan})
    assert raised.value.code == "client"
    assert emulator.stats()["submissions"]["total"] == 0


# --- the key and the server's words ----------------------------------------------------


def test_an_echoed_key_is_redacted(client: WaveSpeedClient, emulator: EmulatorHandle) -> None:
    emulator.configure(faults={"submit_echo_auth": {"count": 1}})
    with pytest.raises(PermanentError) as raised:
        client.submit(MODEL, BODY)
    assert raised.value.code == 400
    assert KEY not in raised.value.message
    assert "[redacted]" in raised.value.message


def test_a_wrong_key_is_permanent(emulator: EmulatorHandle) -> None:
    with pytest.raises(PermanentError) as raised:
        client_for(emulator.base_url, api_key="not-the-key").submit(MODEL, BODY)
    assert raised.value.code == 401
    assert "not-the-key" not in raised.value.message


def test_a_failed_predictions_message_is_redacted_and_printable(
    client: WaveSpeedClient, emulator: EmulatorHandle
) -> None:
    # Failed before the fix: the printable message was computed, then overwritten.
    message = f"\x1b[2Jbad input; key {KEY}\nnext line"
    emulator.configure(faults={"prediction_failed": {"code": 1400, "message": message}})
    prediction = client.submit(MODEL, BODY)
    emulator.wait_for(prediction.id)

    failed = client.result(prediction.id)

    assert failed.status is RemoteStatus.FAILED
    assert KEY not in failed.error_message
    assert "\x1b" not in failed.error_message and "\n" not in failed.error_message
    assert "bad input" in failed.error_message


# --- upload: nothing billable, so any failure is safe to retry ------------------------


def test_an_upload_that_gets_no_answer_is_transient() -> None:
    with pytest.raises(TransientError) as raised:
        client_for(f"http://127.0.0.1:{a_closed_port()}").upload(b"png", "image/png", "a.png")
    assert raised.value.code == "upload"


# --- TLS --------------------------------------------------------------------------------


def test_tls_to_a_plain_http_server_is_a_permanent_tls_error() -> None:
    # The server answers the TLS hello with an HTTP 400: not TLS, however often tried.
    with scripted_server(lambda _seen: envelope({})) as server:
        https = server.base_url.replace("http://", "https://")
        with pytest.raises(PermanentError) as raised:
            client_for(https).submit(MODEL, BODY)
        assert server.seen == []
    assert raised.value.code == "tls"


def test_a_certificate_nobody_signed_is_refused(tmp_path: Path) -> None:
    with scripted_server(lambda _seen: envelope({}), tls=self_signed_cert(tmp_path)) as server:
        with pytest.raises(PermanentError) as raised:
            client_for(server.base_url).webhook_secret()
        assert server.seen == []
    assert raised.value.code == "tls"


# --- proxies ----------------------------------------------------------------------------

PROXY_ENV = ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY")


@pytest.fixture
def clean_proxy_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in (*PROXY_ENV, "no_proxy", "NO_PROXY", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def _proxy_answer(seen: Seen) -> Reply:
    return envelope({"id": "p1", "status": "processing"})


def test_calls_go_through_the_environments_proxy_when_told(
    emulator: EmulatorHandle, clean_proxy_env: pytest.MonkeyPatch
) -> None:
    with scripted_server(_proxy_answer) as proxy:
        clean_proxy_env.setenv("HTTP_PROXY", f"http://user:p%40ss@127.0.0.1:{proxy.port}")
        polled = client_for(emulator.base_url, proxy_from_env=True).result("p1")
        [seen] = proxy.seen
    assert polled.status is RemoteStatus.PROCESSING
    assert seen.target == emulator.url("/api/v3/predictions/p1/result")  # absolute form
    credentials = base64.b64encode(b"user:p@ss").decode()
    assert seen.headers["proxy-authorization"] == f"Basic {credentials}"


@pytest.mark.parametrize("no_proxy", [None, "127.0.0.1"])
def test_no_proxy_without_the_setting_or_for_a_no_proxy_host(
    emulator: EmulatorHandle, clean_proxy_env: pytest.MonkeyPatch, no_proxy: str | None
) -> None:
    with scripted_server(_proxy_answer) as proxy:
        clean_proxy_env.setenv("http_proxy", f"http://127.0.0.1:{proxy.port}")
        if no_proxy:
            clean_proxy_env.setenv("NO_PROXY", no_proxy)
        direct = client_for(emulator.base_url, proxy_from_env=no_proxy is not None)
        with pytest.raises(PermanentError) as raised:
            direct.result("unknown-id")  # the emulator's own 404
        assert proxy.seen == []
    assert raised.value.code == 404


def test_the_environments_ca_bundle_is_trusted_with_proxies_on(
    tmp_path: Path, clean_proxy_env: pytest.MonkeyPatch
) -> None:
    cert, key = self_signed_cert(tmp_path)
    secret = {"secret": "whsec_abc"}
    with scripted_server(lambda _seen: envelope(secret), tls=(cert, key)) as server:
        clean_proxy_env.setenv("HTTPS_PROXY", f"http://127.0.0.1:{a_closed_port()}")
        clean_proxy_env.setenv("NO_PROXY", "127.0.0.1")
        clean_proxy_env.setenv("REQUESTS_CA_BUNDLE", str(cert))
        assert client_for(server.base_url, proxy_from_env=True).webhook_secret() == "whsec_abc"


def test_urllib3_retries_nothing() -> None:
    # A 503 with Retry-After: 0 is what urllib3's own retries would retry at once.
    busy = Reply(503, b'{"message": "busy"}', {"Retry-After": "0"})
    with scripted_server(lambda _seen: busy) as server:
        client = client_for(server.base_url)
        with pytest.raises(TransientError):
            client.submit(MODEL, BODY)
        with pytest.raises(TransientError):
            client.result("p1")
        assert [seen.method for seen in server.seen] == ["POST", "GET"]
