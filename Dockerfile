# The agent host image: `docker build -t jetagents .`, run with JETAGENTS_NATS_URL set.
# Base images are arguments so a machine without registry access can build from local
# stand-ins (ops/scripts/compose-smoke); the defaults are the official images.
ARG PYTHON_IMAGE=python:3.12-slim-bookworm
ARG RUNTIME_IMAGE=${PYTHON_IMAGE}

# ---- build: a virtualenv with jetagents and its dependencies, nothing else
FROM ${PYTHON_IMAGE} AS build
# a build behind a TLS-intercepting proxy passes its CA bundle path here
ARG PIP_CERT
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/jetagents
COPY pyproject.toml README.md /src/
COPY shared /src/shared
COPY services /src/services
RUN /opt/jetagents/bin/pip install /src \
 && find /opt/jetagents -name '__pycache__' -prune -exec rm -rf {} + \
 && rm -rf /opt/jetagents/lib/python3*/site-packages/pip* /opt/jetagents/bin/pip*

# ---- runtime: the virtualenv on the same Python, as an unprivileged user
FROM ${RUNTIME_IMAGE}
RUN useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin jetagents
COPY --from=build /opt/jetagents /opt/jetagents
ENV PATH=/opt/jetagents/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    JETAGENTS_HEALTH_PORT=8080 \
    JETAGENTS_HEALTH_BIND=0.0.0.0 \
    JETAGENTS_LOG_FORMAT=json
USER 10001:10001
# probes from outside the container (kubelet, load balancers) need 0.0.0.0; outside a
# container a host binds 127.0.0.1 unless told otherwise
EXPOSE 8080
# ready = connected, JetStream reachable, partitions started, not draining
HEALTHCHECK --interval=5s --timeout=4s --start-period=20s --retries=3 \
  CMD ["python3", "-m", "agent_host.probe", "readyz"]
# exec form: python is PID 1 and gets SIGTERM itself, which starts the bounded drain
# (JETAGENTS_DRAIN_GRACE_S, 30 s); give the runtime a longer stop timeout than that
STOPSIGNAL SIGTERM
ENTRYPOINT ["python3", "-m", "agent_host"]
