# The sendonce sidecar as an image:
#   docker build -t sendonce .
#   docker run --rm -p 50051:50051 sendonce                       # a `console` receiver
#   docker run --rm -p 50051:50051 -v "$PWD/examples:/etc/sendonce:ro" sendonce \
#       --listen 0.0.0.0:50051 --config /etc/sendonce/receivers.toml
# Running attempts get --shutdown-grace (25 s) after SIGTERM: give `docker stop -t 30` (Kubernetes'
# default terminationGracePeriodSeconds is already 30). Probes: Kubernetes' native gRPC probe on
# port 50051 uses the health service the sidecar serves.

# The base of both stages: a CPython >= 3.11 with pip, groupadd/useradd and `python` on PATH.
# Where no container registry can be reached, tests/deploy/test_image.py builds one from Debian's
# packages (scripts/image-base) and passes --build-arg BASE_IMAGE=local/python-base:bookworm.
ARG BASE_IMAGE=python:3.11-slim

# --- builder: both packages and every dependency, installed into a virtual environment ----------
FROM ${BASE_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY client/ client/
COPY server/ server/
# Our two packages as wheels first, from source and without their dependencies; then the
# environment from exactly those wheels (named by file, so `sendonce` can only come from ./client)
# and their dependencies. The environment gets no pip of its own: the final stage needs none.
RUN pip wheel --no-deps --wheel-dir /wheels ./client ./server \
 && python -m venv --without-pip /opt/sendonce \
 && pip --python /opt/sendonce/bin/python install /wheels/sendonce-*.whl /wheels/sendonce_server-*.whl \
 && pip --python /opt/sendonce/bin/python check

# --- final: the environment, nothing else -------------------------------------------------------
# Plain COPY, no BuildKit-only instruction: any builder builds this file (BuildKit, the legacy
# builder, buildah, kaniko).
FROM ${BASE_IMAGE}
# The working directory is the one place the user may write (a sqlite:// store, a `file`
# receiver's relative path); mount a volume there to keep the state.
RUN groupadd --gid 10001 sendonce \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin sendonce \
 && install --directory --owner=10001 --group=10001 /var/lib/sendonce
# The same base in both stages: the environment's interpreter link and its scripts' shebangs hold.
COPY --from=builder /opt/sendonce /opt/sendonce
ENV PATH=/opt/sendonce/bin:$PATH
USER 10001:10001
WORKDIR /var/lib/sendonce
# 50051: gRPC; 9464: Prometheus metrics, when started with --metrics-listen 0.0.0.0:9464.
EXPOSE 50051 9464
# Exec form: sendonce-server is PID 1 and receives SIGTERM itself (it drains, then exits 0).
# `sendonce health` (the client's CLI, in the image too) is the exec probe for a TLS listener.
ENTRYPOINT ["sendonce-server"]
CMD ["--listen", "0.0.0.0:50051"]
