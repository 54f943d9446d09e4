# The serving image: the `serve` extra only (ONNX Runtime, FAISS, FastAPI, Redis client) - no torch,
# no pandas. Build:   docker build -t utpm-serve .
# Run with a bundle mounted read-only (made by `make demo`, or `utpm export` + `utpm index build`):
#   docker run -p 8000:8000 -v "$PWD/artifacts/demo/bundle:/bundle:ro" utpm-serve
# or bake one in:     docker build --build-arg BUNDLE=artifacts/demo/bundle -t utpm-serve .
# Settings are UTPM_* environment variables (service/config.py), e.g. -e UTPM_REDIS_URL=redis://redis:6379/0.

FROM python:3.11-slim AS build
WORKDIR /src
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY pyproject.toml README.md ./
COPY utpm ./utpm
COPY service ./service
COPY model_export ./model_export
COPY index ./index
COPY loadtest ./loadtest
RUN pip install --no-cache-dir '.[serve]' && python -c "import service.main, sys; assert 'torch' not in sys.modules"

FROM python:3.11-slim
ARG BUNDLE=""
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    UTPM_BUNDLE=/bundle
COPY --from=build /opt/venv /opt/venv
RUN useradd --system --uid 10001 --home /nonexistent --shell /usr/sbin/nologin utpm && mkdir /bundle \
    && chown utpm /bundle
# Optional baked-in bundle (empty by default: mount one at /bundle instead).
COPY --chown=utpm ${BUNDLE:-pyproject.toml} /tmp/bundle-src
RUN if [ -d /tmp/bundle-src ]; then cp -r /tmp/bundle-src/. /bundle/; fi && rm -rf /tmp/bundle-src
USER utpm
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status != 200)"
CMD ["uvicorn", "--factory", "service.main:create_app", "--host", "0.0.0.0", "--port", "8000", "--no-access-log"]
