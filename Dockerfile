# Serving images: the serving code only (service/, index/, model_export/, utpm/features), no
# training, no load tests, no torch or pandas; dependencies from the hash-pinned lock files in
# requirements/ (docs/serving.md, "Docker"). Targets:
#   serve (default, CPU):  docker build -t utpm-serve .
#   serve-gpu (CUDA 12):   docker build --target serve-gpu -t utpm-serve-gpu .
#     runs with --gpus all; without a usable GPU it falls back to the CPU loudly (a WARNING at start-up,
#     /readyz names the provider); UTPM_DEVICE=cuda makes it refuse to start instead.
# Run with a bundle mounted read-only (made by `make demo`, or `utpm export` + `utpm index build`):
#   docker run -p 8000:8000 -v "$PWD/artifacts/demo/bundle:/bundle:ro" utpm-serve
# or `docker compose up` (docker-compose.yml: the service, Redis, optionally Prometheus + Grafana).
# Settings are UTPM_* environment variables (service/config.py), e.g. -e UTPM_REDIS_URL=redis://redis:6379/0.

ARG BUNDLE=""

# -- CPU dependencies --------------------------------------------------------------------------
FROM python:3.11-slim AS deps
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY requirements/serve.lock /tmp/serve.lock
RUN pip install --no-cache-dir --require-hashes -r /tmp/serve.lock

# -- the serving code, shared by both targets --------------------------------------------------
FROM python:3.11-slim AS code
WORKDIR /app
COPY service ./service
COPY index ./index
COPY model_export ./model_export
COPY utpm/__init__.py ./utpm/__init__.py
COPY utpm/ranking.py ./utpm/ranking.py
COPY utpm/features ./utpm/features
# Optional baked-in bundle (empty by default: mount one at /bundle instead).
ARG BUNDLE
COPY ${BUNDLE:-requirements} /tmp/bundle-src
RUN mkdir /bundle && if [ -f /tmp/bundle-src/manifest.json ]; then cp -r /tmp/bundle-src/. /bundle/; fi \
    && rm -rf /tmp/bundle-src

# -- GPU: CUDA 12 + cuDNN runtime, onnxruntime-gpu and faiss-gpu from requirements/serve-gpu.lock --
FROM nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04 AS serve-gpu
# Python 3.11 (the lock's) from the deadsnakes PPA: Ubuntu 22.04's own python3.11 is a release candidate.
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        software-properties-common gpg-agent ca-certificates \
    && add-apt-repository -y ppa:deadsnakes/ppa && apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3.11 python3.11-venv \
    && apt-get purge -y --auto-remove software-properties-common gpg-agent \
    && rm -rf /var/lib/apt/lists/* \
    && python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app \
    PYTHONUNBUFFERED=1 \
    UTPM_BUNDLE=/bundle \
    UTPM_DEVICE=auto \
    NUMBA_CACHE_DIR=/app/.numba
COPY requirements/serve-gpu.lock /tmp/serve-gpu.lock
RUN pip install --no-cache-dir --require-hashes -r /tmp/serve-gpu.lock && rm /tmp/serve-gpu.lock
COPY --from=code /app /app
COPY --from=code /bundle /bundle
RUN python -c "import service.main, sys; assert 'torch' not in sys.modules" \
    && python -c "from utpm.features.history import compile_kernel; compile_kernel()" \
    && useradd --system --uid 10001 --home /nonexistent --shell /usr/sbin/nologin utpm \
    && chown -R utpm /bundle /app/.numba
USER utpm
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status != 200)"
CMD ["uvicorn", "--factory", "service.main:create_app", "--host", "0.0.0.0", "--port", "8000", "--no-access-log"]

# -- CPU (the default target: last) ------------------------------------------------------------
FROM python:3.11-slim AS serve
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app \
    PYTHONUNBUFFERED=1 \
    UTPM_BUNDLE=/bundle \
    UTPM_DEVICE=cpu \
    NUMBA_CACHE_DIR=/app/.numba
COPY --from=deps /opt/venv /opt/venv
COPY --from=code /app /app
COPY --from=code /bundle /bundle
RUN python -c "import service.main, sys; assert 'torch' not in sys.modules and 'pandas' not in sys.modules" \
    && python -c "from utpm.features.history import compile_kernel; compile_kernel()" \
    && useradd --system --uid 10001 --home /nonexistent --shell /usr/sbin/nologin utpm \
    && chown -R utpm /bundle /app/.numba
USER utpm
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status != 200)"
CMD ["uvicorn", "--factory", "service.main:create_app", "--host", "0.0.0.0", "--port", "8000", "--no-access-log"]
