"""Read the broker's messages straight from Redis, decoded.

kombu's Redis transport keeps waiting messages in one list per queue and messages
delivered but not yet acknowledged in the ``unacked`` hash (delivery tag -> ``[payload,
exchange, routing key]``). A Celery payload's body is base64 JSON ``[args, kwargs,
embed]``; a chain's later steps ride along in ``embed["chain"]``. So the jobs a
message "carries" are its own ``job_id`` and those of the steps chained after it.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, replace
from typing import Any

import redis

UNACKED_KEY = "unacked"
#: Delivery tag -> when it was (last) delivered to a consumer.
UNACKED_INDEX_KEY = "unacked_index"
QUEUE_PATTERN = "wavequeue.*"


@dataclass(frozen=True)
class BrokerMessage:
    #: ``queue:<name>`` or ``unacked:<delivery tag>``.
    where: str
    task: str
    task_id: str
    job_ids: tuple[str, ...]
    #: For an unacked message: when a worker took it (a restored message taken again
    #: gets a new time; one never restored keeps its old one).
    delivered_at: float | None = None

    @property
    def waiting(self) -> bool:
        return self.where.startswith("queue:")


def decode_payload(where: str, payload: bytes | str | dict[str, Any]) -> BrokerMessage:
    message = payload if isinstance(payload, dict) else json.loads(payload)
    headers = message.get("headers") or {}
    body: Any = message.get("body", "")
    if (message.get("properties") or {}).get("body_encoding") == "base64":
        body = base64.b64decode(body)
    try:
        _args, kwargs, embed = json.loads(body)
    except (ValueError, TypeError):
        return BrokerMessage(where, str(headers.get("task")), str(headers.get("id")), ())
    job_ids = [kwargs.get("job_id", "")] if isinstance(kwargs, dict) else []
    for signature in (embed or {}).get("chain") or []:
        job_ids.append((signature.get("kwargs") or {}).get("job_id", ""))
    return BrokerMessage(
        where, str(headers.get("task")), str(headers.get("id")), tuple(j for j in job_ids if j)
    )


def queue_names(client: redis.Redis) -> list[str]:
    return sorted(_text(key) for key in client.scan_iter(match=QUEUE_PATTERN, _type="list"))


def read_messages(client: redis.Redis) -> list[BrokerMessage]:
    """Every message waiting in a wavequeue queue or held unacknowledged, decoded."""
    found: list[BrokerMessage] = []
    # redis-py's annotations cover its async client too; this one is synchronous.
    sync: Any = client
    for queue in queue_names(client):
        for payload in sync.lrange(queue, 0, -1):
            found.append(decode_payload(f"queue:{queue}", payload))
    delivered: dict[str, float] = {
        _text(tag): float(score)
        for tag, score in sync.zrange(UNACKED_INDEX_KEY, 0, -1, withscores=True)
    }
    for tag, entry in sync.hgetall(UNACKED_KEY).items():
        payload = json.loads(entry)[0]
        message = decode_payload(f"unacked:{_text(tag)}", payload)
        found.append(replace(message, delivered_at=delivered.get(_text(tag))))
    return found


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
