# syntax=docker/dockerfile:1
#
# docker build -t retryd .
# docker run --rm -p 9464:9464 -v ./retryd.toml:/etc/retryd/retryd.toml:ro \
#   -e AWS_REGION=eu-west-1 retryd
#
# The image carries retryd and its runtime dependencies only: the moto-based
# sandbox extra stays out, so `retryd sandbox` is not available in it.

ARG PYTHON_IMAGE=python:3.12-slim

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# Only what the wheel is built from, so a change to tests or docs keeps this layer cached.
COPY pyproject.toml README.md ./
COPY retryd ./retryd
RUN python -m pip wheel --no-deps --wheel-dir /wheels .


FROM ${PYTHON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/retryd/bin:$PATH

# A fixed numeric id lets Kubernetes' runAsNonRoot verify the user without a passwd lookup.
RUN groupadd --system --gid 10001 retryd \
 && useradd --system --uid 10001 --gid retryd --no-create-home --home-dir /var/lib/retryd \
      --shell /usr/sbin/nologin retryd \
 && install -d -o retryd -g retryd -m 0750 /var/lib/retryd \
 && install -d -m 0755 /etc/retryd

# The bind mount keeps the wheel itself out of every layer of the final image.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    python -m venv /opt/retryd \
 && /opt/retryd/bin/pip install /wheels/retryd-*.whl \
 && /opt/retryd/bin/pip uninstall --yes pip

COPY config/retryd.example.toml /etc/retryd/retryd.example.toml

# The state directory is the working directory so that a relative ledger path
# (an SQLite file) lands somewhere writable; mount a volume there to keep it.
WORKDIR /var/lib/retryd
USER 10001:10001

EXPOSE 9464
# retryd drains in-flight messages on SIGTERM within shutdown.drain_timeout_s
# (20 s by default); give `docker stop` a --time above that.
STOPSIGNAL SIGTERM
# slim images have no curl; urlopen raises on a 503, which makes the check fail.
# The port follows RETRYD_HTTP__PORT when it is set in the environment.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('RETRYD_HTTP__PORT', '9464'), timeout=4)"]

ENTRYPOINT ["retryd"]
CMD ["run", "--config", "/etc/retryd/retryd.toml"]
