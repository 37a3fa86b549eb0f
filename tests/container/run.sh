#!/usr/bin/env bash
# Builds both images (serve, the default target, and train) and tests them for real: sizes, serve,
# predict, metrics, a training container publishing into a shared volume, the serving container
# switching to it, and a clean `docker stop`. Fails loudly, never skips.
set -euo pipefail
cd "$(dirname "$0")/../.."

IMAGE=${IMAGE:-fashion-serving:test}
TRAIN_IMAGE=${TRAIN_IMAGE:-fashion-serving:test-train}
MAX_SERVE_GROWTH_MB=230  # what the serving image may add to its base
PORT=${PORT:-18080}
VOLUME=fashion-serving-test-models
SERVE=fashion-serving-test-serve
PYTHON=${PYTHON:-.venv/bin/python}
DATA_DIR=${FASHION_MNIST_DIR:-/usr/share/datasets/fashion-mnist}
log() { printf '[container-test] %s\n' "$*"; }
fail() { log "FAIL: $*"; exit 1; }
elapsed() { awk -v start="$1" -v now="$(date +%s.%N)" 'BEGIN { printf "%.2f", now - start }'; }

start_engine() {
  docker info >/dev/null 2>&1 && return 0
  command -v dockerd >/dev/null || { apt-get update -qq && apt-get install -y -qq docker.io >/dev/null; }
  log "starting dockerd (vfs storage driver)"
  mkdir -p /var/lib/docker-vfs
  (dockerd --data-root /var/lib/docker-vfs --storage-driver vfs >/tmp/dockerd.log 2>&1 &)
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && return 0; sleep 1; done
  tail -20 /tmp/dockerd.log || true
  fail "the Docker engine did not start"
}

# The official base where a registry is reachable; otherwise a stand-in for python:3.11-slim built with
# debootstrap (Debian bookworm has Python 3.11), carrying the host's CA bundle for pip.
pick_base() {
  if [ -n "${BASE_IMAGE:-}" ]; then echo "$BASE_IMAGE"; return; fi
  if docker image inspect python:3.11-slim >/dev/null 2>&1 || timeout 60 docker pull -q python:3.11-slim >/dev/null 2>&1; then
    echo python:3.11-slim; return
  fi
  local base=local/python-base:3.11
  if ! docker image inspect "$base" >/dev/null 2>&1; then
    command -v debootstrap >/dev/null || apt-get install -y -qq debootstrap >/dev/null
    local rootfs; rootfs=$(mktemp -d)
    chmod 755 "$rootfs"  # it becomes the image's /: mktemp's 0700 would lock the non-root user out of everything
    log "building stand-in base image $base with debootstrap" >&2
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$rootfs" >/dev/null
    cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
    tar -C "$rootfs" -c . | docker import --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' - "$base" >/dev/null
    rm -rf "$rootfs"
  fi
  echo "$base"
}

cleanup() {
  docker rm -f "$SERVE" >/dev/null 2>&1 || true
  docker volume rm -f "$VOLUME" >/dev/null 2>&1 || true
}

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
  local seconds=$1 what=$2; shift 2
  for _ in $(seq $((seconds * 2))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.5; done
  docker logs --tail 30 "$SERVE" 2>&1 || true
  fail "$what within ${seconds}s"
}

start_engine
BASE=$(pick_base)
log "building $IMAGE (serve) and $TRAIN_IMAGE (train) on $BASE"
DOCKER_BUILDKIT=0 docker build -q --network host --build-arg BASE_IMAGE="$BASE" -t "$IMAGE" . >/dev/null
DOCKER_BUILDKIT=0 docker build -q --network host --build-arg BASE_IMAGE="$BASE" --target train \
  -t "$TRAIN_IMAGE" . >/dev/null
size_mb() { docker image inspect -f '{{.Size}}' "$1" | awk '{printf "%.0f", $1/1e6}'; }
base_mb=$(size_mb "$BASE") serve_mb=$(size_mb "$IMAGE") train_mb=$(size_mb "$TRAIN_IMAGE")
log "image sizes: base $base_mb MB, serve $serve_mb MB (+$((serve_mb - base_mb))), train $train_mb MB (+$((train_mb - base_mb)))"
[ $((serve_mb - base_mb)) -le $MAX_SERVE_GROWTH_MB ] || fail "the serving image adds more than $MAX_SERVE_GROWTH_MB MB to its base"
docker run --rm "$IMAGE" python -c "import importlib.util as u, sys; sys.exit(u.find_spec('tensorflow') is not None)" \
  || fail "the serving image carries TensorFlow"

cleanup
trap cleanup EXIT
started=$(date +%s.%N)
docker run -d --name "$SERVE" -p "127.0.0.1:$PORT:8000" -v "$VOLUME:/app/models" -e POLL_INTERVAL_S=1 "$IMAGE" >/dev/null
wait_for 60 "the service was not ready" "$PYTHON" -c \
  "import httpx, sys; sys.exit(httpx.get('http://127.0.0.1:$PORT/health/ready').status_code != 200)"
process_started=$(date -d "$(docker inspect -f '{{.State.StartedAt}}' "$SERVE")" +%s.%N)
log "docker run -> ready: $(elapsed "$started") s, of which container process start -> ready: $(elapsed "$process_started") s"
wait_for 60 "the container did not report healthy" \
  bash -c "[ \"\$(docker inspect -f '{{.State.Health.Status}}' $SERVE)\" = healthy ]"
log "HEALTHCHECK reports healthy"

"$PYTHON" -m tests.container.check "http://127.0.0.1:$PORT" predict

log "training container publishing into the shared volume"
docker run --rm -v "$VOLUME:/app/models" -v "$DATA_DIR:/data:ro" "$TRAIN_IMAGE" \
  python -m training train --data-dir /data --epochs 1 --max-train-samples 2000 --promote always
# The job publishes the version after the bundled ones.
next_version=$(( $(find models/fashion-mnist -mindepth 1 -maxdepth 1 -name '[0-9]*' -type d | wc -l) + 1 ))
"$PYTHON" -m tests.container.check "http://127.0.0.1:$PORT" version "$next_version"

stop_started=$(date +%s.%N)
docker stop -t 30 "$SERVE" >/dev/null
stop_seconds=$(elapsed "$stop_started")
code=$(docker inspect -f '{{.State.ExitCode}}' "$SERVE")
# 0 or 143 (uvicorn re-raises SIGTERM after its graceful shutdown); 137 would mean it had to be killed.
case "$code" in 0|143) ;; *) fail "docker stop: exit code $code" ;; esac
log "docker stop: exit code $code after $stop_seconds s"
log "PASS"
