# outrider sidecar image.
#
# Two stages: `build` installs outrider and its runtime dependencies into a virtualenv; the final stage copies only
# that virtualenv onto a fresh slim Python base, so no compiler, pip cache, source tree or test/lint extra ships.
# No HEALTHCHECK on purpose: in Kubernetes the probes (/health, /ready) belong to the pod spec, and Docker's
# HEALTHCHECK is ignored there anyway.
#
#   docker build -t outrider:0.1.0 .
#   docker run --rm outrider:0.1.0 --help

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# pyproject.toml names README.md as the long description, so the build needs both.
COPY pyproject.toml README.md ./
COPY src ./src
# A non-editable install of the project alone: its [project] dependencies come along, its extras do not.
# pip byte-compiles while installing, so the final image never needs to write .pyc files (read-only root works).
RUN python -m venv /opt/outrider \
    && /opt/outrider/bin/pip install /src \
    && /opt/outrider/bin/outrider --version

FROM ${PYTHON_IMAGE}
# A fixed numeric uid/gid: Kubernetes' runAsNonRoot can only verify a numeric USER, and the manifests' fsGroup
# matches it so the shared models volume is writable.
RUN groupadd --system --gid 10001 outrider \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin outrider
COPY --from=build /opt/outrider /opt/outrider
ENV PATH=/opt/outrider/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
EXPOSE 9000
ENTRYPOINT ["outrider"]
CMD ["serve"]
