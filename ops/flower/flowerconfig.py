"""Flower's config file: ``celery -A worker.app flower --conf=ops/flower/flowerconfig.py``.

Flower executes this file and takes every module-level name that matches one of
its options. Environment (``FLOWER_*``) and command-line values are applied
before this file runs, so each default below applies only where the option
still holds Flower's own default (see ``ops/flower/guard.py``):

- ``address``: 127.0.0.1 unless ``FLOWER_ADDRESS``/``--address`` says otherwise;
  beyond localhost, ``FLOWER_BASIC_AUTH=user:password`` (or OAuth) is required
  and Flower refuses to start without it.
- ``url_prefix``: ``FLOWER_URL_PREFIX`` (e.g. ``flower`` behind a reverse proxy).
- ``persistent`` state in ``db`` (``FLOWER_DB``, default ``.wavequeue/flower/flower.db``).
- ``max_tasks`` bounded; offline workers purged; the tasks page's columns chosen.
- ``/metrics`` asks for the same login as every page (Flower serves it to anyone).
- The broker transport options (``visibility_timeout``, Sentinel's ``master_name``)
  are the workers' own; TLS (``broker_use_ssl``) comes with ``worker.app``'s config,
  which Flower reads for its broker page and ``/api/queues/length``.
"""

import sys
from typing import Any as _Any

from tornado.options import options as _current

from ops.flower import guard as _guard
from worker.app import app as _app
from worker.app import transport_options as _transport_options
from worker.settings import Settings as _Settings


def _ours(name: str, value: _Any) -> _Any:
    """Our default for option ``name``, unless env or command line already set it."""
    # tornado keeps defaults only on its private table, keyed with dashes.
    option = _current._options[name.replace("_", "-")]
    current = option.value()
    return value if current == option.default else current


address = _ours("address", "127.0.0.1")
url_prefix = _guard.normalize_prefix(_current.url_prefix)
persistent = True
db = _guard.prepare_db(_ours("db", str(_guard.DEFAULT_DB)))
state_save_interval = _ours("state_save_interval", _guard.STATE_SAVE_INTERVAL_MS)
max_tasks = _ours("max_tasks", _guard.MAX_TASKS)
purge_offline_workers = _ours("purge_offline_workers", _guard.PURGE_OFFLINE_WORKERS)
tasks_columns = _ours("tasks_columns", _guard.TASKS_COLUMNS)

_settings = _Settings.from_env()
_guard.require_login_for_metrics()
try:
    _guard.check_exposure(address, list(_current.basic_auth or []), _current.auth)
    _guard.check_redis(_settings)
except _guard.FlowerConfigError as _exc:
    sys.stderr.write(f"flower: {_exc}\n")
    sys.stderr.flush()
    raise SystemExit(_guard.EX_CONFIG) from None

# Same visibility timeout (and Sentinel master) as the workers, so Flower's broker view
# and any message it handles agree with them (worker.app already sets them; this makes
# it explicit).
_app.conf.broker_transport_options = _transport_options(_settings)
