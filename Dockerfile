# The service image; the same image runs training jobs (python -m training train ...).
# BASE_IMAGE must provide Python 3.11 with venv: the official image, or a plain Debian bookworm base.
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY . .
# Dependencies and the project in one venv; the "train" extra brings TensorFlow for training jobs.
RUN python3 -m venv /opt/venv && \
    /opt/venv/bin/pip install ".[train]" && \
    find /opt/venv -name __pycache__ -type d -prune -exec rm -rf {} + && \
    rm -rf /opt/venv/lib/python3*/site-packages/tensorflow/include

FROM ${BASE_IMAGE}
ARG APP_UID=10001
# Metadata first: on copy-on-write-less storage (vfs) every step after the large venv copy costs a full copy.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOST=0.0.0.0 \
    PORT=8000 \
    MODEL_STORE=/app/models \
    MPLCONFIGDIR=/tmp/matplotlib \
    TF_CPP_MIN_LOG_LEVEL=2
RUN groupadd --gid ${APP_UID} app && \
    useradd --uid ${APP_UID} --gid app --no-create-home --shell /usr/sbin/nologin app
WORKDIR /app
EXPOSE 8000
HEALTHCHECK --interval=5s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/health/ready', timeout=2).status != 200)"]
# On SIGTERM the service stops accepting and gives in-flight requests GRACEFUL_TIMEOUT_S (8 s, inside
# `docker stop`'s 10 s); those still running then get a JSON 503.
STOPSIGNAL SIGTERM
USER app
CMD ["python", "-m", "service"]
COPY --from=build /opt/venv /opt/venv
# The bundled store; a named volume mounted here starts as a copy of it, owned by the app user.
COPY --from=build --chown=app:app /src/models /app/models
