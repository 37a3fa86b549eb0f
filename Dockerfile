# Two images from one file, both non-root with the same store layout and base:
#   docker build -t fashion-serving .                       the service (default target "serve"): ONNX Runtime, no TensorFlow
#   docker build --target train -t fashion-serving:train .  training jobs: TensorFlow and the training CLI
# BASE_IMAGE must provide Python 3.11 with venv: the official image, or a plain Debian bookworm base.
ARG BASE_IMAGE=python:3.11-slim
# checkov:skip=CKV_DOCKER_7:The base is an argument; its default has a version tag (python:3.11-slim).

# ---- build stages: one virtual environment each ----

FROM ${BASE_IMAGE} AS build-serve
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY . .
# The service needs no TensorFlow: versions carry an ONNX artifact. pip and setuptools are not needed at
# run time either; tests and C headers inside packages are dead weight.
RUN python3 -m venv /opt/venv && \
    /opt/venv/bin/pip install . && \
    /opt/venv/bin/pip uninstall -y pip setuptools && \
    find /opt/venv -name __pycache__ -type d -prune -exec rm -rf {} + && \
    find /opt/venv/lib/python3*/site-packages -type d \( -name tests -o -name include \) -prune -exec rm -rf {} + && \
    cd /opt/venv/lib/python3*/site-packages/onnxruntime && rm -rf transformers quantization tools

FROM ${BASE_IMAGE} AS build-train
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY . .
# The "train" extra brings TensorFlow, Keras, tf2onnx and matplotlib.
RUN python3 -m venv /opt/venv && \
    /opt/venv/bin/pip install ".[train]" && \
    find /opt/venv -name __pycache__ -type d -prune -exec rm -rf {} + && \
    rm -rf /opt/venv/lib/python3*/site-packages/tensorflow/include

# ---- what both images share ----

FROM ${BASE_IMAGE} AS runtime
ARG APP_UID=10001
# Metadata first: on copy-on-write-less storage (vfs) every step after the large venv copy costs a full copy.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MODEL_STORE=/app/models \
    MPLCONFIGDIR=/tmp/matplotlib \
    TF_CPP_MIN_LOG_LEVEL=2
RUN groupadd --gid ${APP_UID} app && \
    useradd --uid ${APP_UID} --gid app --no-create-home --shell /usr/sbin/nologin app
WORKDIR /app
USER app

# ---- the training image: `docker run ... fashion-serving:train python -m training train ...` ----

FROM runtime AS train
CMD ["python", "-m", "training", "--help"]
COPY --from=build-train /opt/venv /opt/venv
COPY --from=build-train --chown=app:app /src/models /app/models

# ---- the serving image (the default target: last) ----

FROM runtime AS serve
# One worker process: ready 1.6 s after start. `-e WORKERS=auto` runs one per CPU the container may use
# (its CPU limit counts); two workers take 3.2 s to be ready. The compose file and the Deployment set auto.
ENV HOST=0.0.0.0 PORT=8000 WORKERS=1
EXPOSE 8000
HEALTHCHECK --interval=5s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/health/ready', timeout=2).status != 200)"]
# On SIGTERM the service stops accepting and gives in-flight requests GRACEFUL_TIMEOUT_S (8 s, inside
# `docker stop`'s 10 s); those still running then get a JSON 503.
STOPSIGNAL SIGTERM
CMD ["python", "-m", "service"]
COPY --from=build-serve /opt/venv /opt/venv
# The bundled store; a named volume mounted here starts as a copy of it, owned by the app user.
COPY --from=build-serve --chown=app:app /src/models /app/models
