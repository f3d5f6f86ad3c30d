"""Keeping outputs after WaveSpeed deletes them (7 days): a copy before the job completes.

A job that asks for it (``keep_outputs=True``, or the workers' ``WAVEQUEUE_KEEP_OUTPUTS``
for jobs that do not say) does not complete when its prediction does: it moves to
``persisting`` with WaveSpeed's URLs in ``outputs``, and a worker copies each output to
durable storage; only then does the job complete, with the copies' locations in
``stored_outputs`` (``worker.runner``). A copy that fails is tried again later, on its own
schedule (``WAVEQUEUE_PERSIST_RETRY_*``), by the job's own ``run_job`` message: a job in
``persisting`` is never submitted again.

Targets (``target_from_settings``):

* a directory (the default, ``WAVEQUEUE_OUTPUTS_DIR``): ``<dir>/<job id>/output<N>.<ext>``,
  written under a temporary name and renamed when complete; location ``file:///...``;
* an S3-compatible bucket (``WAVEQUEUE_OUTPUTS_S3_BUCKET``, ``..._ENDPOINT``,
  ``..._PREFIX``), through boto3 with the credentials boto3 finds in the environment
  (``AWS_ACCESS_KEY_ID`` ..., a profile, an instance role); location
  ``s3://<bucket>/<prefix><job id>/output<N>.<ext>``.

The object names depend only on the job and the output's position, so a copy tried
twice (two copies of a message, a retry after a half-done copy) writes the same objects.
Each output is fetched as outside input (``worker.safe_fetch``: the URL rule, a size
cap) into a temporary file, never held in memory.
"""

from __future__ import annotations

import contextlib
import mimetypes
import os
import tempfile
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO, Protocol
from urllib.parse import urlsplit

from worker.limits import MAX_OUTPUT_BYTES
from worker.models import JobState
from worker.outside_text import printable
from worker.safe_fetch import FetchError, fetch
from worker.settings import Settings

#: The variables boto3 itself reads for the S3 target (never ``Settings``: its credentials
#: are boto3's, from the environment, a profile or an instance role).
BOTO3_ENV_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")
#: Longest a message about a failed copy quotes.
MAX_COPY_ERROR_CHARS = 300
_IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".gif"})


class CopyError(Exception):
    """An output could not be fetched or kept; the message is safe to store and log."""


class Target(Protocol):
    """Durable storage for outputs."""

    def keep(self, key: str, source: BinaryIO, content_type: str) -> str:
        """Store ``source`` under ``key`` (``<job id>/output<N>.<ext>``); its location."""
        ...


class DirectoryTarget:
    """A local (or mounted) directory: the default target."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).resolve()

    def keep(self, key: str, source: BinaryIO, content_type: str) -> str:
        del content_type  # the extension says it
        path = self.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{uuid.uuid4().hex}.part")
        try:
            with partial.open("wb") as sink:
                while chunk := source.read(1024 * 1024):
                    sink.write(chunk)
            partial.replace(path)  # a reader never sees half a file
        finally:
            with contextlib.suppress(FileNotFoundError):
                partial.unlink()
        return path.as_uri()


class S3Target:
    """An S3-compatible bucket, through boto3 (imported only when configured)."""

    def __init__(
        self,
        bucket: str,
        *,
        prefix: str = "",
        endpoint: str | None = None,
        client: Any = None,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix
        self.client = client if client is not None else s3_client(endpoint)

    def keep(self, key: str, source: BinaryIO, content_type: str) -> str:
        name = self.prefix + key
        self.client.put_object(
            Bucket=self.bucket, Key=name, Body=source, ContentType=content_type or "image/png"
        )
        return f"s3://{self.bucket}/{name}"


def s3_client(endpoint: str | None) -> Any:
    """A boto3 S3 client; credentials and region as boto3 reads them (the environment,
    a profile, an instance role), the region ``us-east-1`` if none is configured."""
    try:
        import boto3  # noqa: PLC0415 - only S3 targets need it (the ``s3`` extra)
        from botocore.config import Config  # noqa: PLC0415
    except ImportError as exc:
        raise CopyError(
            "WAVEQUEUE_OUTPUTS_S3_BUCKET is set but boto3 is not installed "
            "(pip install 'wavequeue[s3]')"
        ) from exc
    session = boto3.session.Session()
    return session.client(
        "s3",
        endpoint_url=endpoint,
        region_name=session.region_name or "us-east-1",
        config=Config(retries={"max_attempts": 2, "mode": "standard"}),
    )


def target_from_settings(settings: Settings) -> Target:
    """S3 when a bucket is configured, else the directory."""
    if settings.outputs_s3_bucket:
        return S3Target(
            settings.outputs_s3_bucket,
            prefix=settings.outputs_s3_prefix,
            endpoint=settings.outputs_s3_endpoint,
        )
    return DirectoryTarget(settings.outputs_dir)


def parse_s3_location(location: str) -> tuple[str, str] | None:
    """``s3://bucket/key`` -> (bucket, key); None for any other location."""
    parts = urlsplit(location)
    if parts.scheme != "s3" or not parts.netloc or not parts.path.strip("/"):
        return None
    return parts.netloc, parts.path.lstrip("/")


class OutputKeeper:
    """Decides which jobs keep their outputs, and copies them."""

    def __init__(self, settings: Settings, target: Target | None = None) -> None:
        self.settings = settings
        self._target = target

    @property
    def target(self) -> Target:
        # Built on first use: a worker that never keeps outputs never builds a boto3 client.
        if self._target is None:
            self._target = target_from_settings(self.settings)
        return self._target

    def wants(self, state: JobState) -> bool:
        """The job's own choice, else the workers' default."""
        return self.settings.keep_outputs if state.keep_outputs is None else state.keep_outputs

    def copy(self, job_id: str, outputs: Sequence[str]) -> list[str]:
        """Copy every output; their locations, in order. ``CopyError`` on any failure (the
        outputs copied before it are simply written again next time)."""
        try:
            return [self._copy_one(job_id, index, url) for index, url in enumerate(outputs, 1)]
        except CopyError:
            raise
        except Exception as exc:  # noqa: BLE001 - any storage failure is a failed copy, retried
            # boto3's and the filesystem's errors name the operation, never a credential.
            message = f"output could not be kept: {type(exc).__name__}: {exc}"
            raise CopyError(printable(message, MAX_COPY_ERROR_CHARS)) from None

    def _copy_one(self, job_id: str, index: int, url: str) -> str:
        with tempfile.TemporaryFile() as spool:
            try:
                fetched = fetch(
                    url,
                    spool,
                    max_bytes=MAX_OUTPUT_BYTES,
                    allow_private=self.settings.allow_private_image_urls,
                    connect_timeout=self.settings.connect_timeout,
                    read_timeout=self.settings.read_timeout,
                )
            except FetchError as exc:
                raise CopyError(printable(f"output {index}: {exc}", MAX_COPY_ERROR_CHARS)) from None
            spool.seek(0)
            suffix = _suffix(fetched.url, fetched.content_type)
            return self.target.keep(f"{job_id}/output{index}{suffix}", spool, fetched.content_type)


def _suffix(url: str, content_type: str) -> str:
    suffix = Path(urlsplit(url).path).suffix.lower()
    if suffix in _IMAGE_SUFFIXES:
        return suffix
    guessed = mimetypes.guess_extension(content_type) if content_type.startswith("image/") else None
    return guessed if guessed in _IMAGE_SUFFIXES else ".png"
