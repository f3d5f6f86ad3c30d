"""The jobs page: what the queue holds and what each job did, with cancel and retry buttons.

Served by the exporter process beside ``/metrics`` (``wavequeue exporter``), at
``/jobs``: the figures the exporter reports (queue depth by priority, in flight, oldest
waiting, ended in the last hour), a searchable list of jobs from the store's list index,
and a page per job with its timeline, its input and output images, a cancel button while
it runs and, for a failed or timed-out job, a retry button. Figures and lists refresh
live. Login as Flower's: open on localhost, basic auth (``WAVEQUEUE_JOBS_BASIC_AUTH``)
required beyond it; buttons post a form with tornado's XSRF token.
"""
