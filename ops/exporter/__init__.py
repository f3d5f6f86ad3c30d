"""``wavequeue exporter``: Prometheus metrics read from Redis at every scrape.

Flower exports workers and task events; this exporter covers what Flower
cannot see: queue lengths, held (unacked) countdown messages, live jobs and the
job-level counters and histograms the workers keep in Redis.
"""
