"""Input images: http(s) URLs and ``data:`` URIs pass through; local files are inlined.

Why inline instead of upload here: uploading to WaveSpeed's media endpoint needs
the WaveSpeed API key, and a producer never holds it (only workers do). So a local
file becomes a base64 ``data:image/...`` URI; the store keeps it under its own key
(never in the job record) and the worker uploads it before the first submit
(``worker.inline_images``). It waits in Redis until then, so files are capped
(``max_bytes``, at most ``worker.limits.MAX_INLINE_IMAGE_BYTES``); put bigger images
on your own storage and pass their URL.

Which local files are read at all is the client's choice (``LocalFiles``): none
(the Python API's default: a backend passes its users' strings, and any string
that is not a URL would otherwise be read from the server's disk), any (the CLI's
default: its user names their own files), or only those under one directory,
symlinks resolved (an upload folder a backend controls).

A file is checked from its header only (Pillow reads the size without decoding
the pixels): its type must be one WaveSpeed takes, and it must have at most
``MAX_IMAGE_PIXELS`` pixels, so a small file that would decode to gigabytes (a
decompression bomb) is refused (``worker.image_header``, which the request model
applies to data URIs too). URLs and data URIs are checked by the request model
(``worker.image_refs``), the same rule the worker applies again before submitting.
"""

from __future__ import annotations

import base64
import os
import re
from dataclasses import dataclass
from pathlib import Path

from worker.image_header import image_type
from worker.image_refs import ImageReferenceError, data_uri_bytes
from worker.limits import MAX_INLINE_IMAGE_BYTES, megabytes

#: The largest image (decoded bytes) a producer inlines into a job record.
DEFAULT_MAX_INLINE_BYTES = MAX_INLINE_IMAGE_BYTES
#: ``scheme://`` or ``data:``: a reference the request model judges, never a file path.
_URL_LIKE = re.compile(r"^(?:[a-z][a-z0-9+.-]+://|data:)", re.IGNORECASE)

ImageSource = str | os.PathLike[str]

__all__ = ["DEFAULT_MAX_INLINE_BYTES", "ImageReferenceError", "LocalFiles", "is_remote_reference"]

#: ``WAVEQUEUE_LOCAL_IMAGES`` / ``JobClient(local_images=...)``: no local files at all...
REFUSE = "refuse"
#: ...or any file the process can read.
ANY = "any"
_HOW_TO_ALLOW = (
    "pass an http(s) URL or a data:image URI, or let the client read files "
    "(JobClient(local_images='any' or a directory), WAVEQUEUE_LOCAL_IMAGES)"
)


@dataclass(frozen=True)
class LocalFiles:
    """Which local image files may be read: ``root`` None with ``allowed`` False reads
    none, ``allowed`` True reads any, a ``root`` reads only files under that directory."""

    allowed: bool = False
    root: Path | None = None

    @classmethod
    def parse(cls, value: str | os.PathLike[str]) -> LocalFiles:
        """``"refuse"``, ``"any"`` or a directory (which must exist)."""
        if value == REFUSE:
            return cls(allowed=False)
        if value == ANY:
            return cls(allowed=True)
        root = Path(value)
        if not root.is_absolute() or not root.is_dir():
            raise ValueError(f"local image directory {str(root)!r} is not a directory")
        return cls(allowed=True, root=root.resolve())

    def path(self, text: str, base_dir: Path | None) -> Path:
        """The file ``text`` names, if this policy lets it be read; else
        ``ImageReferenceError`` saying why (never whether a file outside exists)."""
        if not self.allowed:
            raise ImageReferenceError(
                f"local file paths are not accepted by this client: {_HOW_TO_ALLOW}"
            )
        if self.root is None:
            return _local_path(text, base_dir)
        path = Path(text)  # no "~": a confined name is a name under the root
        if not path.is_absolute():
            path = (base_dir if base_dir is not None else self.root) / path
        resolved = path.resolve()  # symlinks followed, ".." taken away
        if not resolved.is_relative_to(self.root):
            raise ImageReferenceError(
                f"{text!r} is outside {str(self.root)!r}: this client reads local files "
                "only from there"
            )
        return resolved


#: Reads no local file: the Python API's default.
NO_LOCAL_FILES = LocalFiles()


def is_remote_reference(value: str) -> bool:
    """A URL (any ``scheme://``) or a data URI: passed to the request model, which
    accepts http(s) and ``data:image`` and names the rule that refuses anything else."""
    return bool(_URL_LIKE.match(value))


def resolve_image(
    source: object,
    *,
    max_bytes: int = DEFAULT_MAX_INLINE_BYTES,
    base_dir: Path | None = None,
    local_files: LocalFiles = NO_LOCAL_FILES,
) -> str:
    """The reference to store for ``source``: URLs and data URIs as given (data URIs
    size-checked), a local file as a data URI if ``local_files`` lets it be read. A
    relative path is taken from ``base_dir`` when given (a batch file's folder), else
    from the policy's directory, else from the current directory.
    Raises ``ImageReferenceError``."""
    if isinstance(source, os.PathLike):
        return _inline_file(local_files.path(os.fspath(source), base_dir), max_bytes)
    if not isinstance(source, str):
        raise ImageReferenceError(
            f"must be a URL, a data: URI or a file path, not {type(source).__name__}"
        )
    if not source.strip():
        raise ImageReferenceError("must not be empty")
    if source[:5].lower() == "data:":
        _check_data_uri_size(source, max_bytes)
        return source
    if is_remote_reference(source):
        return source  # the request model checks the URL against the rule
    return _inline_file(local_files.path(source, base_dir), max_bytes)


def _local_path(text: str, base_dir: Path | None) -> Path:
    try:
        path = Path(text).expanduser()
    except RuntimeError:  # "~someone" with no such user: take the name as it is
        path = Path(text)
    return base_dir / path if base_dir is not None and not path.is_absolute() else path


def _check_data_uri_size(uri: str, max_bytes: int) -> None:
    # The same count as the request model's (4 base64 characters carry 3 bytes).
    if data_uri_bytes(uri) > max_bytes:
        raise ImageReferenceError(f"data URI is larger than {megabytes(max_bytes)}")


def _inline_file(path: Path, max_bytes: int) -> str:
    if not path.is_file():
        raise ImageReferenceError(
            f"not an http(s) URL, a data: URI or an existing file: {str(path)!r}"
        )
    try:
        with path.open("rb") as handle:
            # Read one byte past the cap, never the whole of a file that grew.
            data = handle.read(max_bytes + 1)
    except OSError as exc:
        raise ImageReferenceError(f"{path.name}: cannot read: {exc.strerror}") from None
    if len(data) > max_bytes:
        size = max(path.stat().st_size, len(data))
        raise ImageReferenceError(
            f"{path.name} is {megabytes(size)}; files are inlined up to {megabytes(max_bytes)} "
            "(host bigger images yourself and pass the URL)"
        )
    mime = image_type(data, path.name)
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
