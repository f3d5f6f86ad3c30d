"""The producer's side of cost and budgets against a real redis-server (no worker needed):
the tenant and on_budget options, the estimate on new records, the budget and spend
commands and their output."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner, Result

from producer import JobClient
from producer.cli import main
from producer.errors import ValidationError
from worker.constants import BUDGETS_KEY, SPEND_KEY
from worker.store import utc_day


@pytest.fixture
def client(redis_url: str) -> JobClient:
    return JobClient(redis_url=redis_url)


def _cli(redis_url: str, *args: str, **env: str) -> Result:
    return CliRunner().invoke(main, list(args), env={"REDIS_URL": redis_url, **env})


def test_new_records_carry_tenant_on_budget_and_estimate(client: JobClient) -> None:
    job_id = client.text_to_image(
        "four lanterns",
        model="flux-kontext-pro/text-to-image",
        num_images=4,
        tenant="acme",
        on_budget="fail",
    )
    record = client.get(job_id)
    assert record.tenant == "acme" and record.on_budget.value == "fail"
    assert record.estimated_cost_micros == 160_000  # 4 x $0.04
    assert record.cost_micros is None and record.held is None
    plain = client.get(client.text_to_image("one lantern"))  # Kontext Max
    assert plain.tenant == "default" and plain.on_budget.value == "wait"
    assert plain.estimated_cost_micros == 80_000
    chain_id = client.chain({"prompt": "one lantern"}, ["make it red"], tenant="beta")
    steps = client.chain_status(chain_id).steps
    assert {client.get(step.job_id).tenant for step in steps} == {"beta"}


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"tenant": "a b"}, "tenant"),
        ({"tenant": "x" * 65}, "tenant"),
        ({"tenant": ""}, "tenant"),
        ({"on_budget": "maybe"}, "on_budget"),
    ],
)
def test_bad_options_are_refused_before_anything_is_written(
    client: JobClient, options: dict[str, str], field: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        client.text_to_image("refused", **options)  # type: ignore[arg-type]
    assert field in caught.value.problems
    assert client.store.client.dbsize() == 0


def test_a_batch_line_takes_the_options(client: JobClient) -> None:
    prepared = client.prepare(
        {"kind": "text-to-image", "prompt": "a kite", "tenant": "acme", "on_budget": "fail"}
    )
    assert prepared.options.tenant == "acme" and prepared.options.on_budget.value == "fail"


def test_budget_set_show_and_clear(redis_url: str, client: JobClient) -> None:
    env = {"WAVEQUEUE_DAILY_BUDGET": "100", "WAVEQUEUE_TENANT_BUDGETS": "*=5"}
    shown = json.loads(
        _cli(redis_url, "budget", "show", "--tenant", "acme", "--json", **env).output
    )
    assert shown["account"]["cap_micros"] == 100_000_000
    assert shown["tenant_budget"] == {
        "cap_micros": 5_000_000,
        "cap_source": "settings",
        "billed_micros": 0,
        "unconfirmed_micros": 0,
        "reserved_micros": 0,
        "remaining_micros": 5_000_000,
    }
    result = _cli(redis_url, "budget", "set", "--tenant", "acme", "12.50", **env)
    assert result.exit_code == 0, result.output
    assert "daily budget of tenant acme: $12.50" in result.output
    assert client.store.client.hget(BUDGETS_KEY, "tenant:acme") == "12500000"
    day = utc_day(client.store.clock())
    client.store.client.hset(SPEND_KEY.format(day=day), mapping={"billed|acme": 2_500_000})
    client.store.client.hset("wq:spend:reserved", mapping={"acme": 40_000, "total": 40_000})
    text = _cli(redis_url, "budget", "show", "--tenant", "acme", **env).output
    assert "cap $12.50 (runtime)" in text and "remaining $9.96" in text
    assert client.budget("acme").remaining == 9_960_000

    assert _cli(redis_url, "budget", "set", "--account", "none", **env).exit_code == 0
    assert client.budget("acme").account.cap.micros is None
    assert _cli(redis_url, "budget", "clear", "--account", **env).exit_code == 0
    assert _cli(redis_url, "budget", "clear", "--tenant", "acme", **env).exit_code == 0
    assert not client.store.client.exists(BUDGETS_KEY)
    # Exactly one scope, and an amount that is money.
    assert _cli(redis_url, "budget", "set", "3", **env).exit_code == 2
    bad = _cli(redis_url, "budget", "set", "--account", "three", **env)
    assert bad.exit_code == 2 and "amount" in bad.stderr


def test_spend_shows_days_and_tenants(redis_url: str, client: JobClient) -> None:
    day = utc_day(client.store.clock())
    client.store.client.hset(
        SPEND_KEY.format(day=day),
        mapping={
            "billed": 200_000,
            "images": 4,
            "jobs": 3,
            "billed|acme": 120_000,
            "images|acme": 3,
            "jobs|acme": 2,
            "unconfirmed": 80_000,
            "unconfirmed|beta": 80_000,
            "billed|beta": 80_000,
            "images|beta": 1,
            "jobs|beta": 1,
        },
    )
    text = _cli(redis_url, "spend", "--days", "1").output
    lines = text.splitlines()
    assert lines[0].split() == ["day", "tenant", "jobs", "images", "billed", "unconfirmed"]
    assert lines[1].split() == [day, "acme", "2", "3", "$0.12", "$0.00"]
    assert lines[2].split() == [day, "beta", "1", "1", "$0.08", "$0.08"]
    assert lines[3].split() == [day, "(all)", "3", "4", "$0.20", "$0.08"]
    data = json.loads(_cli(redis_url, "spend", "--tenant", "acme", "--days", "2", "--json").output)
    assert data["rows"][0]["day"] == day and len(data["rows"]) == 2
    assert data["rows"][0]["billed_micros"] == 120_000 and data["rows"][0]["billed_usd"] == "0.12"
    assert data["rows"][1]["billed_micros"] == 0
