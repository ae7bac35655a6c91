# syntax=docker/dockerfile:1
# The sendonce sidecar as an image:
#   docker build -t sendonce .
#   docker run --rm -p 50051:50051 sendonce                       # a `console` receiver
#   docker run --rm -p 50051:50051 -v "$PWD/examples:/etc/sendonce:ro" sendonce \
#       --listen 0.0.0.0:50051 --config /etc/sendonce/receivers.toml
# Running attempts get --shutdown-grace (25 s) after SIGTERM: give `docker stop -t 30` (Kubernetes'
# default terminationGracePeriodSeconds is already 30). Probes: Kubernetes' native gRPC probe on
# port 50051 uses the health service the sidecar serves.

# --- builder: wheels of both packages and of every dependency -------------------------------------
FROM python:3.11-slim AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY client/ client/
COPY server/ server/
# Our two packages first, from source and without their dependencies; then the dependencies of
# exactly those wheels (the wheel files are named, so `sendonce` can only come from ./client).
RUN pip wheel --no-deps --wheel-dir /wheels ./client ./server \
 && pip wheel --wheel-dir /wheels /wheels/sendonce-*.whl /wheels/sendonce_server-*.whl

# --- final: the wheels installed, nothing else ---------------------------------------------------
FROM python:3.11-slim
# The working directory is the one place the user may write (a sqlite:// store, a `file`
# receiver's relative path); mount a volume there to keep the state.
RUN groupadd --gid 10001 sendonce \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin sendonce \
 && install --directory --owner=10001 --group=10001 /var/lib/sendonce
# Mounted from the builder rather than copied, so no layer of this image keeps the wheels;
# --no-index: everything must come from them.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels sendonce-server \
 && pip check
USER 10001:10001
WORKDIR /var/lib/sendonce
# 50051: gRPC; 9464: Prometheus metrics, when started with --metrics-listen 0.0.0.0:9464.
EXPOSE 50051 9464
# Exec form: sendonce-server is PID 1 and receives SIGTERM itself (it drains, then exits 0).
ENTRYPOINT ["sendonce-server"]
CMD ["--listen", "0.0.0.0:50051"]
