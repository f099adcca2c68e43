# syntax=docker/dockerfile:1
# PoseKD runtime image. CPU by default; `--build-arg RUNTIME=gpu` swaps in onnxruntime-gpu with its CUDA
# and cuDNN wheels (run with `--gpus all`; the host needs only the NVIDIA driver and container toolkit).
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ARG RUNTIME=cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY service ./service
COPY distill ./distill
COPY posekd ./posekd
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install . \
 && if [ "$RUNTIME" = "gpu" ]; then \
      /opt/venv/bin/pip uninstall -y onnxruntime \
      && /opt/venv/bin/pip install "onnxruntime-gpu[cuda,cudnn]>=1.20"; \
    elif [ "$RUNTIME" != "cpu" ]; then echo "RUNTIME must be cpu or gpu" >&2; exit 1; fi

FROM ${PYTHON_IMAGE}
ARG RUNTIME=cpu
LABEL org.opencontainers.image.title="posekd" \
      org.opencontainers.image.description="Pose-estimation service serving distilled student models" \
      posekd.runtime="${RUNTIME}"
RUN groupadd --system --gid 10001 posekd \
 && useradd --system --uid 10001 --gid posekd --home-dir /app --shell /usr/sbin/nologin posekd
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY --chown=posekd:posekd model_store ./model_store
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    POSEKD_HOST=0.0.0.0 \
    POSEKD_PORT=8000 \
    POSEKD_MODEL_STORE=/app/model_store \
    POSEKD_DEVICE=auto
USER posekd
# 8000: the API (posekd serve); 9100: a worker's Prometheus metrics (posekd worker --metrics-port 9100)
EXPOSE 8000 9100
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(f'http://127.0.0.1:{os.environ.get(\"POSEKD_PORT\", \"8000\")}/healthz', timeout=2)"]
CMD ["posekd", "serve"]
