"""WaveSpeed webhooks: the callback URL a submit passes, and ``wavequeue webhooks``.

- ``urls``: the per-job callback URL, ``<base>/wavespeed/<job id>/<MAC>``, where the MAC
  of the job id under a local key (``WAVEQUEUE_WEBHOOK_URL_KEY``) makes a job's URL
  unguessable. Workers build it; the receiver checks it.
- ``signature``: WaveSpeed's v3 signature check (HMAC-SHA256 over
  ``"{webhook-id}.{webhook-timestamp}.{raw body}"``, five minutes' tolerance).
- ``receiver``: what a verified callback does to its job, through the same settling path
  a poll uses (``worker.settle``); no HTTP in it.
- ``server`` and ``cli``: the tornado service around it.

Importing this package (or ``urls``/``signature``) loads neither tornado nor Celery.
"""
