# syntax=docker/dockerfile:1
# pegp-stream image: the learner daemon (`pegp-stream run`), HTTP predictions and /metrics on port 8080.
# Build: docker build -t pegp-stream:0.1.0 .      Lint: hadolint Dockerfile
# (the tag deploy/compose.yaml and deploy/k8s use; tests/test_deploy.py checks they agree)
# CPU-only torch/torchvision come from the PyTorch CPU wheel index (no CUDA libraries: ~1 GB instead of ~6 GB).

ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim-bookworm AS builder

ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# torch first, from the CPU index, so the package's `torch>=2.4` requirement is already met by the CPU build.
RUN pip install --index-url https://download.pytorch.org/whl/cpu \
        "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}"

WORKDIR /src
COPY pyproject.toml README.md ./
COPY pegp_stream ./pegp_stream
# Installs the package and its remaining dependencies (ranges in pyproject.toml) into the venv.
RUN pip install . \
    && pip check


FROM python:${PYTHON_VERSION}-slim-bookworm AS runtime

LABEL org.opencontainers.image.title="pegp-stream" \
      org.opencontainers.image.description="Online continual learning daemon: PEGP-projected PET of a frozen ViT on a Kafka stream" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PEGP_HTTP__HOST=0.0.0.0 \
    PEGP_CHECKPOINT__DIR=/var/lib/pegp-stream/checkpoints

RUN groupadd --system --gid 10001 pegp \
    && useradd --system --uid 10001 --gid pegp --home-dir /var/lib/pegp-stream --no-create-home \
        --shell /usr/sbin/nologin pegp \
    && mkdir -p /var/lib/pegp-stream/checkpoints /etc/pegp-stream \
    && chown -R pegp:pegp /var/lib/pegp-stream

COPY --from=builder /opt/venv /opt/venv
COPY deploy/config/daemon.yaml /etc/pegp-stream/config.yaml

USER 10001:10001
WORKDIR /var/lib/pegp-stream
VOLUME ["/var/lib/pegp-stream"]
EXPOSE 8080

# No curl in slim images: probe /healthz with the venv's Python (exit 1 on any error or non-2xx answer).
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request, sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4).status < 300 else 1)"]

ENTRYPOINT ["pegp-stream"]
CMD ["run", "--config", "/etc/pegp-stream/config.yaml"]
