"""Flower for wavequeue: ``celery -A worker.app flower --conf=ops/flower/flowerconfig.py``."""
