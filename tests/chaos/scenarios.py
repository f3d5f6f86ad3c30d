"""The scenarios: each fault alone, then all of them mixed in one run, plus the small
mixed run that ``make test`` includes. Times are seconds after the first enqueue.

Settings that differ from the shipped defaults, and why:

- Polls every 0.5-2 s (``BASE_SETTINGS``): the emulator answers in 0.5-2 s, and
  WaveSpeed's 2 s guidance is about its servers, not ours.
- ``WAVEQUEUE_VISIBILITY_TIMEOUT``: kept at the shipped 600 s wherever the scenario
  is about the broker giving messages back (warm stop, Redis restart: the project
  rule is stated for shipped defaults) or about the emulator. Shortened to 20-40 s
  where workers are SIGKILLed or messages are lost on purpose: a killed worker's
  held messages come back only after the visibility timeout (or the sweeper's grace,
  (vt - longest countdown) / 2), and what those scenarios prove is that nothing is
  lost or sent twice, not how long 600 s is. 20 s is above the longest countdown
  (2 s) plus the task time limit (15 s), which the worker checks at start.
- Retry backoff: 0.25 s doubling to 2 s (a short run); the emulator scenarios use the
  shipped 1 s doubling to 60 s, which is what rides out a 30 s outage within the
  retry budget of 8.
- ``WAVEQUEUE_JOB_DEADLINE`` 40-120 s: bounds how long a stuck job can hang the run.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tests.chaos.faults import EmulatorOutage, KillWorkers, Poison, RestartRedis, WarmStops
from tests.chaos.scenario import Scenario
from tests.chaos.stack import StackConfig
from tests.chaos.workload import WorkloadSpec

SHORT_VT = {"WAVEQUEUE_VISIBILITY_TIMEOUT": "20"}
SHIPPED_BACKOFF = {"WAVEQUEUE_RETRY_BASE_DELAY": "1", "WAVEQUEUE_RETRY_MAX_DELAY": "60"}
REDIS_FAULTS = ("redis_restart", "redis_down")

#: About 20% of submits and 20% of polls meet a fault, of every kind the issue lists.
TWENTY_PERCENT: Mapping[str, Any] = {
    "submit_500": 0.03,
    "submit_503": 0.03,
    "submit_429": {"probability": 0.03, "retry_after": 1},
    "submit_drop_before_create": 0.03,
    "submit_drop_after_create": 0.03,
    "submit_slow": {"probability": 0.03, "delay": 2},
    "submit_malformed": 0.02,
    "result_500": 0.04,
    "result_503": 0.04,
    "result_429": {"probability": 0.03, "retry_after": 1},
    "result_drop": 0.03,
    "result_slow": {"probability": 0.03, "delay": 2},
    "result_malformed": 0.03,
    "prediction_failed": {"probability": 0.05, "code": 1403},
    # A 400 that quotes the Authorization header back: the key must still land nowhere.
    "submit_echo_auth": 0.01,
}
#: The same, but failed predictions say "the service broke" (5003): the worker then
#: submits a new prediction, which the double-submission check must accept.
TWENTY_PERCENT_TRANSIENT_FAILURES: Mapping[str, Any] = {
    **TWENTY_PERCENT,
    "prediction_failed": {"probability": 0.05, "code": 5003},
}


def _deadline(seconds: int) -> dict[str, str]:
    return {"WAVEQUEUE_JOB_DEADLINE": str(seconds)}


WORKER_KILL = Scenario(
    name="worker-kill",
    title="workers SIGKILLed (half of them mid-POST) and restarted",
    workload=WorkloadSpec(singles=80, chains=40, enqueue_over=60, deadline=90, seed=1),
    stack=StackConfig(settings={**SHORT_VT, **_deadline(90)}, seed=1),
    faults=(
        KillWorkers(at=(8, 24, 40), mid_submit=True),
        KillWorkers(at=(16, 32, 48), mid_submit=False),
    ),
    # Slow submits keep the window between the POST and storing the id open.
    emulator_faults={"submit_slow": {"probability": 0.3, "delay": 1.5}},
)

WARM_STOP = Scenario(
    name="warm-stop",
    title="warm shutdown (SIGTERM) of workers holding countdowns",
    workload=WorkloadSpec(singles=60, chains=30, enqueue_over=45, deadline=90, seed=2),
    # Longer predictions: every worker holds poll countdowns when it is stopped.
    stack=StackConfig(settings=_deadline(90), latency="uniform:2:5", seed=2),
    faults=(WarmStops(at=(10, 20, 30, 40)),),
)

REDIS = Scenario(
    name="redis",
    title="redis-server restarted (AOF), then unreachable for 10 s",
    workload=WorkloadSpec(singles=60, chains=30, enqueue_over=50, deadline=60, seed=3),
    stack=StackConfig(settings=_deadline(60), latency="uniform:1:4", seed=3),
    faults=(RestartRedis(at=12), RestartRedis(at=35, down_for=10)),
    rule_for=REDIS_FAULTS,
)

EMULATOR = Scenario(
    name="emulator",
    title="emulator faults at 20%, and the emulator unreachable for 30 s",
    workload=WorkloadSpec(singles=100, chains=35, enqueue_over=60, deadline=120, seed=4),
    stack=StackConfig(settings={**SHIPPED_BACKOFF, **_deadline(120)}, seed=4),
    faults=(EmulatorOutage(at=25, seconds=30),),
    emulator_faults=TWENTY_PERCENT,
)

EMULATOR_RESUBMIT = Scenario(
    name="emulator-resubmit",
    title="emulator faults at 20% under WAVEQUEUE_AMBIGUOUS_SUBMIT=resubmit",
    workload=WorkloadSpec(singles=40, chains=20, enqueue_over=30, deadline=120, seed=5),
    stack=StackConfig(
        settings={
            **SHIPPED_BACKOFF,
            **_deadline(120),
            "WAVEQUEUE_AMBIGUOUS_SUBMIT": "resubmit",
        },
        seed=5,
    ),
    faults=(EmulatorOutage(at=15, seconds=10),),
    emulator_faults=TWENTY_PERCENT_TRANSIENT_FAILURES,
)

POISON = Scenario(
    name="poison",
    title="poison messages: unknown job, corrupted record, old task name",
    workload=WorkloadSpec(singles=30, chains=7, enqueue_over=15, deadline=45, seed=6),
    # Short visibility timeout: the job sent under the old task name is re-sent by the
    # sweeper after its grace ((20 - 2) / 2 = 9 s), not after 299 s.
    stack=StackConfig(settings={**SHORT_VT, **_deadline(45)}, seed=6),
    faults=(Poison(at=4),),
)

MIXED = Scenario(
    name="mixed",
    title="everything at once",
    workload=WorkloadSpec(singles=130, chains=40, enqueue_over=90, deadline=120, seed=7),
    stack=StackConfig(
        settings={
            # Kills want a short visibility timeout, which caps the backoff (40 s > 15 s
            # + the 15 s task time limit); a budget of 12 rides out the 30 s outage.
            "WAVEQUEUE_VISIBILITY_TIMEOUT": "40",
            "WAVEQUEUE_RETRY_BASE_DELAY": "0.5",
            "WAVEQUEUE_RETRY_MAX_DELAY": "15",
            "WAVEQUEUE_RETRY_BUDGET": "12",
            **_deadline(120),
        },
        seed=7,
    ),
    faults=(
        Poison(at=5),
        KillWorkers(at=(12, 70), mid_submit=True),
        WarmStops(at=(20, 80)),
        RestartRedis(at=30),
        EmulatorOutage(at=40, seconds=30),
        RestartRedis(at=95, down_for=10),
        KillWorkers(at=(100,), mid_submit=False),
    ),
    emulator_faults=TWENTY_PERCENT_TRANSIENT_FAILURES,
)

#: ``make chaos``: each fault alone, then all mixed (1,100 jobs and more).
FULL = (WORKER_KILL, WARM_STOP, REDIS, EMULATOR, EMULATOR_RESUBMIT, POISON, MIXED)

#: Inside ``make test``: every kind of fault once, on 106 jobs, in about a minute.
SMALL = Scenario(
    name="small",
    title="small mixed run (make test)",
    workload=WorkloadSpec(singles=46, chains=20, enqueue_over=20, deadline=40, seed=8),
    stack=StackConfig(
        settings={**SHORT_VT, "WAVEQUEUE_RETRY_MAX_DELAY": "4", **_deadline(40)}, seed=8
    ),
    faults=(
        Poison(at=2),
        KillWorkers(at=(5,), mid_submit=True),
        WarmStops(at=(10,)),
        RestartRedis(at=15),
        EmulatorOutage(at=19, seconds=8),
    ),
    emulator_faults=TWENTY_PERCENT,
)
