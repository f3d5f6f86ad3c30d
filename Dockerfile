# One image for every wavequeue process: the worker, Flower, the exporter and the
# emulator differ only by command (see docker-compose.yml). Redis, Prometheus and
# Grafana use their official images.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies first, so a code change does not reinstall them; at the versions the
# test suite passed with (constraints.txt, the same pins `make` installs).
COPY pyproject.toml README.md constraints.txt ./
RUN mkdir worker producer emulator ops \
    && touch worker/__init__.py producer/__init__.py emulator/__init__.py ops/__init__.py \
    && pip install -c constraints.txt '.[s3]' \
    && pip uninstall -y wavequeue

COPY worker ./worker
COPY producer ./producer
COPY emulator ./emulator
COPY ops ./ops
RUN pip install --no-deps . \
    && useradd --system --uid 10001 --user-group --home-dir /data --create-home wavequeue

# Not root. /data holds Flower's persistent state (a volume in compose).
USER wavequeue

# Works for every service: it reads PID 1's command to know which one it is
# (a Celery ping for the worker, an HTTP request for the others).
HEALTHCHECK --interval=30s --timeout=15s --start-period=30s --retries=3 \
    CMD ["python", "-m", "ops.healthcheck"]

CMD ["wavequeue", "worker"]
