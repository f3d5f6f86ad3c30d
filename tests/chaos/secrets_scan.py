"""Find the API key anywhere Redis or the logs hold text, plain or base64-encoded.

Celery message bodies are base64: a key inside one would not show up in a plain
substring search. A base64 encoding of a longer string contains the encoding of the
key at one of three byte alignments, so ``needles(key)`` gives the key itself plus
those three inner encodings, and a hit on any of them is a leak.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis


def needles(secret: str) -> list[bytes]:
    raw = secret.encode()
    found = [raw]
    for shift in range(3):
        encoded = base64.b64encode(b"\0" * shift + raw)
        start = -(-4 * shift // 3)  # characters touched by the padding bytes in front
        end = 4 * ((shift + len(raw)) // 3)  # characters touched by what follows
        found.append(encoded[start:end])
    return found


@dataclass(frozen=True)
class Hit:
    where: str
    excerpt: str


def search(blobs: Iterable[tuple[str, bytes]], secret: str) -> list[Hit]:
    patterns = needles(secret)
    hits = []
    for where, blob in blobs:
        for pattern in patterns:
            index = blob.find(pattern)
            if index >= 0:
                excerpt = blob[max(0, index - 60) : index + len(pattern) + 20]
                hits.append(Hit(where, excerpt.decode(errors="replace").replace(secret, "<KEY>")))
                break
    return hits


def redis_blobs(url: str) -> Iterator[tuple[str, bytes]]:
    """Every key of every database, with its value (by type), as bytes."""
    with redis.Redis.from_url(url) as first:
        databases = sorted(int(name[2:]) for name in first.info("keyspace") if name[:2] == "db")
    for db in databases:
        with redis.Redis.from_url(url, db=db) as client:
            for key in client.scan_iter(count=1000):
                yield f"db{db} key name", key
                yield f"db{db} {key!r}", b"\n".join(_values(client, key))


def _values(client: redis.Redis, key: bytes) -> list[bytes]:
    sync: Any = client  # redis-py's annotations cover its async client too
    kind = sync.type(key)
    kind = kind.decode() if isinstance(kind, bytes) else kind
    readers: dict[str, Callable[[], Iterable[Any]]] = {
        "string": lambda: [sync.get(key)],
        "hash": lambda: [item for pair in sync.hgetall(key).items() for item in pair],
        "list": lambda: sync.lrange(key, 0, -1),
        "set": lambda: sync.smembers(key),
        "zset": lambda: [member for member, _ in sync.zrange(key, 0, -1, withscores=True)],
        "stream": lambda: [repr(entry).encode() for entry in sync.xrange(key)],
    }
    reader = readers.get(str(kind))
    return [value for value in reader() if isinstance(value, bytes)] if reader else []


def file_blobs(paths: Iterable[Path]) -> Iterator[tuple[str, bytes]]:
    for path in paths:
        if path.is_file():
            yield str(path), path.read_bytes()
