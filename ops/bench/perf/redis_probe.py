"""The harness's window on one Redis: commands served, memory used, messages left.

``INFO commandstats`` counts every client's commands. The harness's own are taken
out: it counts each command it sends through this probe (the message checks while
it waits), and ``INFO`` itself is left out of every total (only the harness sends it).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import redis

#: kombu's Redis transport keeps every delivered, not yet acknowledged message here
#: (countdowns held by a worker included).
UNACKED_KEY = "unacked"


@dataclass(frozen=True)
class CommandSnapshot:
    served: Counter[str]
    own: Counter[str]


class RedisProbe:
    def __init__(self, url: str) -> None:
        self.url = url
        self.client = redis.Redis.from_url(url, decode_responses=True)
        self.own: Counter[str] = Counter()
        self.client.ping()  # connect now: the handshake stays out of every window
        self.own["ping"] += 1

    def snapshot(self) -> CommandSnapshot:
        stats = self.client.info("commandstats")
        served = Counter(
            {
                name.removeprefix("cmdstat_"): int(value["calls"])
                for name, value in stats.items()
                if isinstance(value, dict)
            }
        )
        return CommandSnapshot(served, Counter(self.own))

    @staticmethod
    def breakdown(before: CommandSnapshot, after: CommandSnapshot) -> Counter[str]:
        """Commands other clients sent between the two snapshots, by name."""
        served = after.served - before.served
        own = after.own - before.own
        others = served - own
        del others["info"]
        return others

    @staticmethod
    def commands_between(before: CommandSnapshot, after: CommandSnapshot) -> int:
        return sum(RedisProbe.breakdown(before, after).values())

    def used_memory(self) -> tuple[int, int]:
        """``used_memory`` and its dataset part (without client buffers and overhead)."""
        memory = self.client.info("memory")
        return int(memory["used_memory"]), int(memory["used_memory_dataset"])

    def server_version(self) -> str:
        return str(self.client.info("server")["redis_version"])

    def messages_left(self, queues: Sequence[str]) -> int:
        """Messages waiting in ``queues`` plus every message delivered and not yet acked."""
        pipe = self.client.pipeline(transaction=False)
        for queue in queues:
            pipe.llen(queue)
        pipe.hlen(UNACKED_KEY)
        self.own["llen"] += len(queues)
        self.own["hlen"] += 1
        return sum(int(count) for count in pipe.execute())

    def flush(self) -> None:
        self.client.flushall()
        self.own["flushall"] += 1

    def close(self) -> None:
        self.client.close()
