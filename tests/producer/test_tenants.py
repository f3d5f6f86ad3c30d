"""The tenant and keep_outputs options: checked before anything reaches Redis, stored on
the record, on every way in (Python API, batch lines, chains, the CLI)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from producer import JobClient, ValidationError
from worker.constants import DEFAULT_TENANT
from worker.settings import Settings
from worker.store import JobStore
from worker.tenants import parse_weights

WAVEQUEUE = str(Path(sys.executable).with_name("wavequeue"))


@pytest.fixture
def client(redis_url: str) -> JobClient:
    return JobClient(Settings(redis_url=redis_url))


def _keys(redis_url: str) -> int:
    return int(JobStore.from_url(redis_url, record_ttl=60).client.dbsize())


def test_a_job_names_its_tenant_and_keeps_outputs(client: JobClient) -> None:
    job_id = client.text_to_image("a lighthouse", tenant="acme.eu-1", keep_outputs=True)
    record = client.get(job_id)
    assert (record.tenant, record.keep_outputs) == ("acme.eu-1", True)
    plain = client.get(client.text_to_image("a lighthouse"))
    assert (plain.tenant, plain.keep_outputs) == (DEFAULT_TENANT, None)


@pytest.mark.parametrize("tenant", ["", "a b", "x" * 65, "-lead", "a|b", "ünï", 7])
def test_a_bad_tenant_is_refused_and_nothing_is_written(
    client: JobClient, redis_url: str, tenant: object
) -> None:
    with pytest.raises(ValidationError) as refused:
        client.text_to_image("a lighthouse", tenant=tenant)  # type: ignore[arg-type]
    assert set(refused.value.problems) == {"tenant"}
    assert _keys(redis_url) == 0


def test_batch_lines_and_chains_carry_the_tenant(client: JobClient) -> None:
    prepared = client.prepare_many(
        [
            {"kind": "text-to-image", "prompt": "one", "tenant": "beta"},
            {"kind": "text-to-image", "prompt": "two", "keep_outputs": False},
        ]
    )
    first, second = client.get_many(client.submit_many(prepared))
    assert (first.tenant, second.tenant, second.keep_outputs) == ("beta", "default", False)
    with pytest.raises(ValidationError) as refused:
        client.prepare_many([{"kind": "text-to-image", "prompt": "x", "keep_outputs": "yes"}])
    assert set(refused.value.problems) == {"item0.keep_outputs"}

    chain_id = client.chain({"prompt": "a bike"}, ["make it blue"], tenant="gamma")
    steps = client.get_many([step.job_id for step in client.chain_status(chain_id).steps])
    assert {step.tenant for step in steps} == {"gamma"}


def test_the_cli_takes_tenant_and_keep_outputs(redis_url: str) -> None:
    done = subprocess.run(
        [WAVEQUEUE, "generate", "a lighthouse", "--tenant", "delta", "--keep-outputs", "--json"],
        env={**os.environ, "REDIS_URL": redis_url},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    job_id = json.loads(done.stdout)["job_id"]
    shown = subprocess.run(
        [WAVEQUEUE, "status", job_id],
        env={**os.environ, "REDIS_URL": redis_url},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "tenant delta" in shown.stdout
    record = JobClient(Settings(redis_url=redis_url)).get(job_id)
    assert (record.tenant, record.keep_outputs) == ("delta", True)
    bad = subprocess.run(
        [WAVEQUEUE, "generate", "a lighthouse", "--tenant", "no spaces"],
        env={**os.environ, "REDIS_URL": redis_url},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert bad.returncode == 2 and "tenant" in bad.stderr


def test_weights_parse_or_say_why() -> None:
    assert parse_weights("acme=3, beta=1,") == {"acme": 3, "beta": 1}
    assert parse_weights("") == {}
    for text, why in (("acme", "tenant=weight"), ("acme=0", "1 to"), ("a b=2", "tenant")):
        with pytest.raises(ValueError, match=why):
            parse_weights(text)
