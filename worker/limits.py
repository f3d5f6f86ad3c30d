"""Every limit on input from outside, in one place (the README's "Limits on input"
lists them with the reasons). The producer checks them before anything reaches
Redis; the request models in ``worker.models`` enforce the ones that belong to a
request, so anything that validates a request (producer or worker) applies them.

Why these numbers:

- WaveSpeed documents 20 MB per uploaded image and 1-5 images for the Kontext
  ``/multi`` models. An inlined image lives in Redis (in the job record, for up to
  ``WAVEQUEUE_RECORD_TTL``) and is read back by the worker, so it is capped lower,
  at 10 MB decoded: bigger images belong on the caller's own storage, passed by URL.
- A whole request (the JSON body sent to WaveSpeed) is capped at 16 MB: one image
  at the inline cap fits (10 MB is ~13.4 MB as base64), five do not; a request
  that carries several big images must pass some by URL.
- FLUX.1 Kontext works at about one megapixel and resizes what it gets, so a
  picture of 40 MP (8K is 33 MP) carries nothing more; past that, a small
  compressed file can expand to gigabytes when decoded (a decompression bomb).
"""

from __future__ import annotations

#: Characters in a prompt (enforced by the request models). WaveSpeed's pages give
#: no maximum; FLUX's T5 text encoder reads 512 tokens (about 2,000 characters), so
#: 4,000 loses nothing and keeps a record small.
MAX_PROMPT_CHARS = 4000
#: Images a ``/multi`` request takes (WaveSpeed: 1 to 5).
MAX_IMAGES = 5
#: Decoded bytes of one inline image (a ``data:`` URI, or a local file inlined as one).
MAX_INLINE_IMAGE_BYTES = 10 * 1024 * 1024
#: Characters in an image URL. Presigned URLs with session tokens reach 2-3 KB;
#: common web servers refuse request lines over 8 KB.
MAX_IMAGE_URL_CHARS = 4096
#: Bytes of a whole request body as JSON (UTF-8), images included.
MAX_REQUEST_BYTES = 16 * 1024 * 1024
#: Pixels (width x height) of a local image file the producer inlines.
MAX_IMAGE_PIXELS = 40_000_000
#: Bytes of a job's metadata as compact JSON (stored on, and returned with, every record).
MAX_METADATA_BYTES = 4096
#: Characters in an idempotency key.
MAX_IDEMPOTENCY_KEY_CHARS = 200
#: The longest deadline a job may ask for (records of live jobs do not expire).
MAX_DEADLINE_SECONDS = 7 * 24 * 3600.0
#: Characters in a callback URL (where the worker POSTs a job's final record).
MAX_CALLBACK_URL_CHARS = 2048
#: Steps in one chain.
MAX_CHAIN_STEPS = 20
#: Requests in one ``wavequeue batch`` file. At ~300 jobs/s and ~3 KB of Redis per
#: job that is half a minute and ~30 MB; split bigger runs or use the Python API.
MAX_BATCH_LINES = 10_000
#: Bytes of one batch line: one request at its largest, plus room for the options.
MAX_BATCH_LINE_BYTES = MAX_REQUEST_BYTES + 64 * 1024
#: Bytes of one output image ``wavequeue download`` saves (``--max-bytes``). FLUX Kontext
#: answers about one megapixel: a PNG of a few MB; 50 MB leaves room for 4 MP outputs
#: and stops a host that sends without end.
MAX_OUTPUT_BYTES = 50 * 1024 * 1024
#: Bytes of all of a batch's requests together (local images inlined): they are all
#: held in memory until every line has passed, then written to Redis.
MAX_BATCH_BYTES = 256 * 1024 * 1024


def megabytes(size: int) -> str:
    """``size`` bytes for people: ``10.0 MB`` (MiB, as the limits above are written)."""
    return f"{size / (1024 * 1024):.1f} MB"
