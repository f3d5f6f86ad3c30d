"""The contract (settings, models, errors) and the Celery consumer of wavequeue.

Importing this package builds nothing: the Celery app lives in ``worker.app``
and is only created when that module is imported.
"""
