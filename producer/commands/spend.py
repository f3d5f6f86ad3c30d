"""``wavequeue spend`` (what each UTC day cost, per tenant) and ``wavequeue budget``
(today's caps and what is left; caps changed at run time)."""

from __future__ import annotations

import sys
from typing import Any

import click

from producer.commands.common import (
    EXIT_COMPLETED,
    fail_bad_input,
    json_option,
    make_client,
    print_json,
    reports_errors,
)
from worker.balance import last_reading
from worker.budgets import BudgetStatus, DaySpend, ScopeBudget
from worker.constants import DEFAULT_TENANT
from worker.money import dollars, format_usd, usd_to_micros

ALL = "(all)"


def _measures(values: dict[str, int] | Any) -> dict[str, Any]:
    billed = int(values.get("billed", 0))
    unconfirmed = int(values.get("unconfirmed", 0))
    return {
        "jobs": int(values.get("jobs", 0)),
        "images": int(values.get("images", 0)),
        "billed_micros": billed,
        "billed_usd": format_usd(billed),
        "unconfirmed_micros": unconfirmed,
        "unconfirmed_usd": format_usd(unconfirmed),
    }


def spend_rows(days: list[DaySpend], tenant: str | None) -> list[dict[str, Any]]:
    """One row per day and tenant (and the day's whole-account row unless ``tenant``)."""
    rows = []
    for day in days:
        tenants = [tenant] if tenant else sorted(day.by_tenant)
        for name in tenants:
            rows.append({"day": day.day, "tenant": name, **_measures(day.by_tenant.get(name, {}))})
        if not tenant:
            rows.append({"day": day.day, "tenant": ALL, **_measures(day.total)})
    return rows


@click.command("spend")
@click.option(
    "--tenant", default=None, help="Only this tenant (default: every tenant and the total)."
)
@click.option(
    "--days",
    type=click.IntRange(min=1, max=400),
    default=7,
    show_default=True,
    help="How many UTC days back, today included.",
)
@json_option
@reports_errors
def spend_command(*, tenant: str | None, days: int, as_json: bool) -> None:
    """What WaveSpeed billed per UTC day and tenant: jobs and images billed, dollars billed
    (completed jobs, at the price list), and unconfirmed dollars (jobs that ended while
    their prediction may still have run: cancelled after submit, timed out)."""
    with make_client() as client:
        if tenant is not None:
            client.budget(tenant)  # checks the name (exit 2 on a bad one)
        rows = spend_rows(client.spend(days), tenant)
        reserved = client.budgets.reserved()
    in_flight = reserved.get(tenant, 0) if tenant else reserved.get("total", 0)
    if as_json:
        print_json({"rows": rows, "reserved_now_micros": in_flight})
        sys.exit(EXIT_COMPLETED)
    header = (
        f"{'day':<10}  {'tenant':<20} {'jobs':>6} {'images':>7} {'billed':>12} {'unconfirmed':>12}"
    )
    click.echo(header)
    for row in rows:
        click.echo(
            f"{row['day']:<10}  {row['tenant']:<20} {row['jobs']:>6} {row['images']:>7} "
            f"{dollars(row['billed_micros']):>12} {dollars(row['unconfirmed_micros']):>12}"
        )
    click.echo(f"reserved now by jobs in flight: {dollars(in_flight)}")


@click.group("budget", invoke_without_command=True)
@click.pass_context
def budget_command(ctx: click.Context) -> None:
    """Daily budgets (UTC days): show what is left, or change a cap at run time.
    Without a subcommand: ``budget show``."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(show_command)


def _scope_line(name: str, scope: ScopeBudget) -> str:
    usage = scope.usage
    if scope.cap.micros is None:
        cap = "no cap" + (" (set at run time)" if scope.cap.source == "runtime" else "")
    else:
        cap = f"cap {dollars(scope.cap.micros)} ({scope.cap.source})"
    left = scope.remaining
    return (
        f"{name}: {cap}; billed {dollars(usage.billed)}, unconfirmed "
        f"{dollars(usage.unconfirmed)}, reserved {dollars(usage.reserved)}"
        + ("" if left is None else f"; remaining {dollars(left)}")
    )


def describe_budget(status: BudgetStatus) -> list[str]:
    left = status.remaining
    return [
        f"today {status.day} (UTC), tenant {status.tenant}: "
        + ("no cap" if left is None else f"{dollars(left)} left"),
        "  " + _scope_line("account", status.account),
        "  " + _scope_line(f"tenant {status.tenant}", status.own),
    ]


@budget_command.command("show")
@click.option("--tenant", default=DEFAULT_TENANT, show_default=True)
@json_option
@reports_errors
def show_command(*, tenant: str = DEFAULT_TENANT, as_json: bool = False) -> None:
    """Today's caps, what was spent and reserved, and what is left for TENANT."""
    with make_client() as client:
        status = client.budget(tenant)
        held = client.budgets.held_count()
        balance = last_reading(client.store.client)
    if as_json:
        print_json(
            {
                **status.to_json(),
                "held_jobs": held,
                "balance_micros": balance.micros,
                "balance_checked_at": balance.checked_at,
                "balance_low": balance.low,
            }
        )
        return
    for line in describe_budget(status):
        click.echo(line)
    click.echo(f"  jobs held for a budget (all tenants): {held}")
    if balance.micros is not None:
        paused = ", submission paused: low balance" if balance.low else ""
        click.echo(
            f"  account balance {dollars(balance.micros)} (last read by the sweeper){paused}"
        )


def _scope(tenant: str | None, account: bool) -> str | None:
    if account == (tenant is not None):
        fail_bad_input({"--tenant": "give either --tenant NAME (or '*') or --account"})
    return tenant


@budget_command.command("set")
@click.argument("amount")
@click.option("--tenant", default=None, help="A tenant's cap; '*' caps every tenant without one.")
@click.option("--account", is_flag=True, help="The whole account's cap.")
@reports_errors
def set_command(*, amount: str, tenant: str | None, account: bool) -> None:
    """Set a daily cap to AMOUNT US dollars ('none' lifts it) from now on, overriding the
    settings; jobs held for a budget that now fit are sent again at once."""
    scope = _scope(tenant, account)
    with make_client() as client:
        woken = client.set_budget(None if amount.lower() == "none" else amount, scope)
    name = "the account" if scope is None else f"tenant {scope}"
    shown = "no cap" if amount.lower() == "none" else dollars(usd_to_micros(amount))
    click.echo(f"daily budget of {name}: {shown}; {woken} held job(s) sent again")


@budget_command.command("clear")
@click.option("--tenant", default=None, help="A tenant's run-time cap ('*' for the default one).")
@click.option("--account", is_flag=True, help="The whole account's run-time cap.")
@reports_errors
def clear_command(*, tenant: str | None, account: bool) -> None:
    """Forget a cap set at run time: the settings' cap (if any) applies again."""
    scope = _scope(tenant, account)
    with make_client() as client:
        woken = client.clear_budget(scope)
    name = "the account" if scope is None else f"tenant {scope}"
    click.echo(f"run-time daily budget of {name} cleared; {woken} held job(s) sent again")
