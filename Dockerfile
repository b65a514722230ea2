# syntax=docker/dockerfile:1
#
# Build:  docker build -t retryd:0.1.0 .
# Run:    docker run --rm --stop-timeout 30 -p 9464:9464 -e AWS_REGION=eu-west-1 \
#           -v "$PWD/retryd.toml:/etc/retryd/retryd.toml:ro" \
#           retryd:0.1.0 run --config /etc/retryd/retryd.toml
#
# The image holds retryd and its pinned runtime dependencies (constraints.txt)
# in a venv, and nothing else: no moto sandbox, no dev tools (constraints-dev.txt
# pins those for CI and contributors), no pip, no build tools, no
# credentials. AWS credentials come at run time from the AWS chain (ECS task
# role, instance profile, or AWS_* variables passed to `docker run`).

# The interpreter the test suite and constraints.txt were made with.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/retryd
# Dependencies first, in a layer of their own: it is rebuilt only when a pin changes.
COPY constraints.txt ./
RUN /opt/retryd/bin/pip install --no-cache-dir --requirement constraints.txt
# Then the wheel, from only what it is built from.
COPY pyproject.toml README.md ./
COPY retryd ./retryd
# `pip check` proves the pins satisfy the wheel's own requirements; pip and
# setuptools then leave the venv, which the final image copies as it is.
RUN python -m pip wheel --no-cache-dir --no-deps --wheel-dir /wheels . \
 && /opt/retryd/bin/pip install --no-cache-dir --no-deps /wheels/retryd_aws-*.whl \
 && /opt/retryd/bin/pip check \
 && /opt/retryd/bin/pip uninstall --yes pip setuptools


FROM ${PYTHON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/retryd/bin:$PATH

# A fixed numeric id lets Kubernetes' runAsNonRoot and ECS's `user` check it
# without a passwd lookup.
RUN groupadd --system --gid 10001 retryd \
 && useradd --system --no-log-init --uid 10001 --gid retryd --no-create-home \
      --home-dir /var/lib/retryd --shell /usr/sbin/nologin retryd \
 && install -d -o retryd -g retryd -m 0750 /var/lib/retryd \
 && install -d -m 0755 /etc/retryd

# Same base image as the builder, so the venv's interpreter link stays valid.
COPY --from=builder /opt/retryd /opt/retryd
COPY config/retryd.example.toml /etc/retryd/retryd.example.toml

# The state directory is the working directory, so the default SQLite ledger
# (a relative path) lands somewhere writable; mount a volume there to keep it.
WORKDIR /var/lib/retryd
USER 10001:10001

EXPOSE 9464
# retryd drains in-flight messages on SIGTERM within shutdown.drain_timeout_s
# (20 s by default): give `docker stop` a --time (or ECS a stopTimeout) above that.
STOPSIGNAL SIGTERM
# Slim images have no curl: the probe ships in the package. It follows
# RETRYD_HTTP__PORT and exits 1 on anything but a 200 from /healthz.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-m", "retryd.service.healthcheck"]

# Exec form: retryd is PID 1 and receives SIGTERM itself (it reaps no children,
# as it starts none).
ENTRYPOINT ["retryd"]
CMD ["run"]
