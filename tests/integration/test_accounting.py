"""wavequeue's accounting against the emulator's debits, to the micro-dollar, over a mixed
run of a few hundred jobs on three real workers: every model, 1 to 4 images, three
tenants, remote failures (final and retried with a new prediction), refused submits and
failing polls."""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path

import requests
from PIL import Image

from tests.support.stack import SECRET_API_KEY, WorkerStack, worker_stack
from worker.budgets import last_days
from worker.constants import RESERVED_KEY
from worker.models import JobRecord, price_of

TENANTS = ("alpha", "beta", "gamma")


def _upload_image(stack: WorkerStack) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (30, 120, 200)).save(buffer, format="PNG")
    response = requests.post(
        f"{stack.emulator.base_url}/api/v3/media/upload/binary",
        files={"file": ("input.png", buffer.getvalue(), "image/png")},
        headers={"Authorization": f"Bearer {SECRET_API_KEY}"},
        timeout=10,
    )
    response.raise_for_status()
    url: str = response.json()["data"]["download_url"]
    return url


def _enqueue_mix(stack: WorkerStack, batch: str, image: str) -> list[str]:
    """120 jobs: every model, Pro text-to-image with 1 to 4 images, three tenants."""
    jobs = stack.jobs
    ids = []
    for i in range(120):
        tenant = TENANTS[i % 3]
        prompt = f"{batch} job {i}"
        kind = i % 6
        if kind in (0, 1):
            ids.append(
                jobs.enqueue(
                    "flux-kontext-pro/text-to-image",
                    prompt=prompt,
                    num_images=1 + i % 4,
                    tenant=tenant,
                )
            )
        elif kind == 2:
            ids.append(jobs.enqueue("flux-kontext-max/text-to-image", prompt=prompt, tenant=tenant))
        elif kind == 3:
            ids.append(jobs.enqueue("flux-kontext-pro", prompt=prompt, image=image, tenant=tenant))
        elif kind == 4:
            ids.append(jobs.enqueue("flux-kontext-max", prompt=prompt, image=image, tenant=tenant))
        else:
            model = "flux-kontext-pro/multi" if i % 12 == 5 else "flux-kontext-max/multi"
            ids.append(jobs.enqueue(model, prompt=prompt, images=[image, image], tenant=tenant))
    return ids


def test_accounting_equals_the_emulators_debits_over_a_mixed_run(tmp_path: Path) -> None:
    settings = {
        # A cap far above the run: every submit takes the budget check and reservation.
        "WAVEQUEUE_DAILY_BUDGET": "500",
        "WAVEQUEUE_TENANT_BUDGETS": "*=100",
        "WAVEQUEUE_RETRY_BUDGET": "10",
    }
    with worker_stack(tmp_path, settings=settings, workers=3, concurrency=4) as stack:
        image = _upload_image(stack)
        # Batch one: final remote failures (not billed), refused submits, failing polls.
        stack.emulator.configure(
            faults={
                "prediction_failed": {"probability": 0.15, "code": 1403},
                "submit_503": 0.1,
                "result_500": 0.05,
            }
        )
        first = _enqueue_mix(stack, "one", image)
        stack.jobs.wait(first, timeout=300)
        # Batch two: remote failures worth a new prediction (5003), each billed only if
        # its last prediction completes.
        stack.emulator.configure(
            faults={
                "prediction_failed": {"probability": 0.2, "code": 5003},
                "submit_503": None,
                "result_500": None,
                "result_503": 0.05,
            }
        )
        second = _enqueue_mix(stack, "two", image)
        records = stack.jobs.wait(first + second, timeout=300)

        statuses = Counter(r.status.value for r in records)
        assert set(statuses) == {"completed", "failed"}, statuses
        assert statuses["failed"] >= 5  # failures are part of the run
        billing = stack.emulator.stats()["billing"]
        created = stack.emulator.stats()["predictions"]["created"]
        assert created > len(records)  # retried predictions too

        # Each record: completed ones at the price per image delivered, failed ones free.
        for record in records:
            expected = price_of(record.model, len(record.outputs)) if _done(record) else 0
            assert record.cost_micros == expected, record
            assert not record.cost_unconfirmed and record.held is None
        billed = sum(r.cost_micros or 0 for r in records)
        assert billed == billing["billed_micros"]
        assert sum(len(r.outputs) for r in records) == billing["billed_images"]
        assert statuses["completed"] == billing["predictions_billed"]

        # The day's spend (and yesterday's, should the run cross midnight UTC), per tenant.
        days = stack.jobs.store.client
        spend = _spend(stack)
        assert spend.get("billed", 0) == billed
        assert spend.get("unconfirmed", 0) == 0
        for tenant in TENANTS:
            mine = sum(r.cost_micros or 0 for r in records if r.tenant == tenant)
            assert spend.get(f"billed|{tenant}", 0) == mine
        assert days.hget(RESERVED_KEY, "total") == "0"
        counters = stack.jobs.store.counters()
        assert sum(v for (name, _), v in counters.items() if name == "spend_micros") == billed

        # What the account's balance says, to the cent (and to the micro-dollar).
        response = requests.get(
            f"{stack.emulator.base_url}/api/v3/balance",
            headers={"Authorization": f"Bearer {SECRET_API_KEY}"},
            timeout=10,
        )
        balance = response.json()["data"]["balance"]
        assert round(balance * 100) == round((1_000_000_000 - billed) / 10_000)
        assert billing["balance_micros"] == 1_000_000_000 - billed


def _done(record: JobRecord) -> bool:
    return record.status.value == "completed"


def _spend(stack: WorkerStack) -> dict[str, int]:
    store = stack.jobs.store
    totals: Counter[str] = Counter()
    for day in last_days(store.clock(), 2):
        for field, value in store.client.hgetall(f"wq:spend:{day}").items():
            totals[str(field)] += int(value)
    return dict(totals)
