"""Inline images (``data:`` URIs) kept out of job records.

An inline image is up to 10 MB decoded (13.4 MB as base64). Kept in the job's
request, it would be read back by every ``status``/``get`` and live as long as the
record. Instead the store keeps each one under its own key (``INLINE_KEY``, with a
TTL: the job's deadline plus the record TTL, so ``retry_chain`` can still resume a
chain from it), and the request holds a marker, ``wavequeue-inline:<id>``. Before
its first submit the worker uploads the image to WaveSpeed's media storage (the
upload needs the API key, which only workers hold), writes the download URL into
the request in place of the marker, and deletes the key. From then on the request
is small, a re-submit or a chain retry sends the same URL, and no submit POST has to
carry megabytes (a slow POST that times out has an unknown outcome; an upload is
safe to repeat).
"""

from __future__ import annotations

import base64
import binascii
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

#: What a request holds in place of an inline image, followed by the image's id.
MARKER_PREFIX = "wavequeue-inline:"
#: The job hash field that says "upload the inline images before submitting".
INLINE_FIELD = "inline_images"
_IMAGE_FIELDS = ("image", "images")


def is_marker(value: object) -> bool:
    return isinstance(value, str) and value.startswith(MARKER_PREFIX)


def _references(body: Mapping[str, Any]) -> Iterator[tuple[str, int | None, Any]]:
    """(field, index or None, value) of every image reference in ``body``."""
    for field in _IMAGE_FIELDS:
        value = body.get(field)
        if isinstance(value, list):
            for index, item in enumerate(value):
                yield field, index, item
        elif value is not None:
            yield field, None, value


def _replaced(body: Mapping[str, Any], new: Mapping[tuple[str, int | None], str]) -> dict[str, Any]:
    result = dict(body)
    for (field, index), value in new.items():
        if index is None:
            result[field] = value
        else:
            items = list(result[field])
            items[index] = value
            result[field] = items
    return result


def split_inline(body: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """``body`` with every ``data:`` image replaced by a marker, and {image id: data URI}."""
    images: dict[str, str] = {}
    new: dict[tuple[str, int | None], str] = {}
    for field, index, value in _references(body):
        if isinstance(value, str) and value[:5].lower() == "data:":
            image_id = uuid.uuid4().hex
            images[image_id] = value
            new[field, index] = MARKER_PREFIX + image_id
    return (_replaced(body, new) if new else dict(body)), images


def marker_ids(body: Mapping[str, Any]) -> list[str]:
    """The ids of the inline images ``body`` refers to, in order."""
    return [
        value.removeprefix(MARKER_PREFIX) for _, _, value in _references(body) if is_marker(value)
    ]


def with_images(body: Mapping[str, Any], by_id: Mapping[str, str]) -> dict[str, Any]:
    """``body`` with each marker replaced by ``by_id[image id]`` (a URL, or the data URI)."""
    new = {
        (field, index): by_id[value.removeprefix(MARKER_PREFIX)]
        for field, index, value in _references(body)
        if is_marker(value) and value.removeprefix(MARKER_PREFIX) in by_id
    }
    return _replaced(body, new) if new else dict(body)


def decode_data_uri(uri: str) -> tuple[bytes, str]:
    """(bytes, MIME type) of a base64 ``data:image/...`` URI; ``ValueError`` if it is not one."""
    head, separator, payload = uri.partition(",")
    if not separator or not head.lower().startswith("data:") or not head.endswith(";base64"):
        raise ValueError("not a base64 data URI")
    mime = head[5:].removesuffix(";base64").lower()
    try:
        return base64.b64decode(payload, validate=True), mime
    except binascii.Error:
        raise ValueError("the data URI's payload is not base64") from None
