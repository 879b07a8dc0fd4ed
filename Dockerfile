# syntax=docker/dockerfile:1
#
# sendonce: one image for the worker, the webhook receiver and the CLI.
#
#   docker build -t sendonce:local .
#   docker run --rm sendonce:local --help
#   docker run -v sendonce-worker:/var/lib/sendonce \
#       -e SENDONCE_BOOTSTRAP_SERVERS=kafka:9092 sendonce:local            # the worker
#   docker run -p 8080:8080 sendonce:local receiver                         # webhook receiver
#   docker run --rm sendonce:local topics create --bootstrap kafka:9092     # any CLI command
#
# No secret is baked in: Graph credentials and webhook secrets come from the
# environment (SENDONCE_GRAPH_CLIENT_SECRET, SENDONCE_RECEIVER_CLIENT_STATES, ...)
# at run time. Every setting is a SENDONCE_* variable (see README, Configuration).

# ---------------------------------------------------------------- build stage
# Installs the project and its dependencies (all published as manylinux wheels,
# so no compiler is needed) into a virtualenv that the runtime stage copies whole.
FROM python:3.11.14-slim-bookworm AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/sendonce

WORKDIR /src
# Only what the wheel is built from (.dockerignore keeps everything else out).
COPY pyproject.toml README.md ./
COPY sendonce ./sendonce
COPY streams ./streams
COPY schemas ./schemas
COPY connectors ./connectors
RUN /opt/sendonce/bin/pip install --no-compile /src \
    && /opt/sendonce/bin/python -m compileall -q /opt/sendonce/lib

# -------------------------------------------------------------- runtime stage
FROM python:3.11.14-slim-bookworm AS runtime

LABEL org.opencontainers.image.title="sendonce" \
      org.opencontainers.image.description="Kafka stream processor that makes every intended email happen once" \
      org.opencontainers.image.licenses="Apache-2.0"

# A fixed numeric uid/gid, so Kubernetes' runAsNonRoot can verify it and volume
# ownership (fsGroup) lines up.
RUN groupadd --system --gid 10001 sendonce \
    && useradd --system --uid 10001 --gid 10001 --home-dir /home/sendonce \
        --create-home --shell /usr/sbin/nologin sendonce \
    && mkdir -p /var/lib/sendonce /var/spool/sendonce/outbox /var/lib/sendonce-emulator \
    && chown -R 10001:10001 /var/lib/sendonce /var/spool/sendonce /var/lib/sendonce-emulator

COPY --from=build /opt/sendonce /opt/sendonce

# /var/lib/sendonce:         the worker's RocksDB ledger (SENDONCE_DATA_DIR), one per worker.
# /var/spool/sendonce/outbox: .eml files of the outbox provider (shared by the workers).
# The listeners bind every interface inside the container so that published ports
# and health probes reach them.
ENV PATH=/opt/sendonce/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SENDONCE_DATA_DIR=/var/lib/sendonce \
    SENDONCE_OUTBOX_DIR=/var/spool/sendonce/outbox \
    SENDONCE_METRICS_HOST=0.0.0.0 \
    SENDONCE_METRICS_PORT=9464 \
    SENDONCE_RECEIVER_HOST=0.0.0.0 \
    SENDONCE_RECEIVER_PORT=8080 \
    SENDONCE_LOG_FORMAT=json

VOLUME ["/var/lib/sendonce"]

# 9464: the worker's /metrics, /healthz (liveness) and /readyz (readiness).
# 8080: the webhook receiver (POST /graph/notifications, /webhooks/{source}; GET /healthz).
EXPOSE 9464 8080

USER 10001:10001
WORKDIR /home/sendonce

# Liveness of the worker (its /healthz on the metrics port). The receiver's compose
# service and Kubernetes Deployment declare their own check on the receiver port.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('SENDONCE_METRICS_PORT', '9464'), timeout=4)"]

ENTRYPOINT ["sendonce"]
CMD ["worker"]
