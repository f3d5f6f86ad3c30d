"""``callback_url`` on jobs and chains: only http(s) URLs, only with the signing secret
configured; a bad one is a ValidationError (the CLI: exit 2) and nothing reaches Redis."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import pytest
import redis
from click.testing import CliRunner

from producer import JobClient, TextToImage, ValidationError
from producer.cli import main
from worker.settings import Settings

SECRET = "whsec_" + base64.b64encode(b"p" * 32).decode()
GOOD = "https://backend.internal:8443/hooks/wavequeue?token=abc"
BAD = [
    ("ftp://backend/x", "must be http or https, not 'ftp'"),
    ("javascript:alert(1)", "must be http or https"),
    ("/relative/path", "must be http or https"),
    ("http://", "must name a host"),
    ("http://user:pw@backend/x", "must not carry credentials"),
    ("http://backend:99999/x", "is not a valid URL"),
    ("http://backend/a b", "whitespace"),
    ("https://backend/" + "a" * 2100, "at most 2048 characters"),
    ("", "must be an http(s) URL"),
]


@pytest.fixture
def jobs(redis_url: str) -> Iterator[JobClient]:
    with JobClient(Settings(redis_url=redis_url, callback_secret=SECRET)) as client:
        yield client


def _nothing_written(redis_url: str) -> None:
    assert redis.Redis.from_url(redis_url).keys("*") == []


@pytest.mark.parametrize(("url", "why"), BAD, ids=[why for _, why in BAD])
def test_a_bad_callback_url_is_refused_before_anything_is_written(
    jobs: JobClient, redis_url: str, url: str, why: str
) -> None:
    with pytest.raises(ValidationError) as raised:
        jobs.text_to_image("a kite", callback_url=url)
    assert why in raised.value.problems["callback_url"]
    assert "token" not in str(raised.value)  # the URL itself is never quoted
    with pytest.raises(ValidationError):
        jobs.chain(TextToImage("a kite"), ["make it blue"], callback_url=url)
    _nothing_written(redis_url)


def test_a_callback_url_needs_the_secret(redis_url: str) -> None:
    with (
        JobClient(Settings(redis_url=redis_url)) as client,
        pytest.raises(ValidationError) as raised,
    ):
        client.text_to_image("a kite", callback_url=GOOD)
    assert "WAVEQUEUE_CALLBACK_SECRET" in raised.value.problems["callback_url"]
    _nothing_written(redis_url)


def test_a_good_callback_url_is_on_the_record(jobs: JobClient) -> None:
    job_id = jobs.text_to_image("a kite", callback_url=GOOD)
    record = jobs.get(job_id)
    assert record.callback_url == GOOD
    assert record.callback_attempts == 0 and record.callback_status is None
    chain_id = jobs.chain(TextToImage("a kite"), ["make it blue"], callback_url=GOOD)
    status = jobs.chain_status(chain_id)
    assert status.callback["callback_url"] == GOOD
    assert status.to_json()["callback_url"] == GOOD
    for step in status.steps:  # the steps call nothing back themselves
        assert jobs.get(step.job_id).callback_url is None
    assert SECRET not in str(jobs.store.client.dump(f"wq:job:{job_id}"))


def test_the_cli_refuses_a_bad_callback_url_with_exit_2(redis_url: str) -> None:
    env = {"REDIS_URL": redis_url, "WAVEQUEUE_CALLBACK_SECRET": SECRET}
    result = CliRunner().invoke(
        main, ["generate", "a kite", "--callback-url", "ftp://backend/x"], env=env
    )
    assert result.exit_code == 2
    assert "error: callback_url: must be http or https" in result.stderr
    _nothing_written(redis_url)
    ok = CliRunner().invoke(main, ["generate", "a kite", "--callback-url", GOOD, "--json"], env=env)
    assert ok.exit_code == 0, ok.output
