# BEST gateway image: a slim Python base, the locked dependencies installed by uv in a build
# stage, and a runtime stage with no build tools that runs as a non-root user.

FROM python:3.12-slim AS build
# uv from PyPI (the same client the project uses for development).
RUN pip install --no-cache-dir uv==0.13.9
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/opt/venv
WORKDIR /src
# Dependencies first, so a code change does not reinstall them.
COPY pyproject.toml uv.lock ./
RUN uv sync --frozen --no-dev --no-install-project
COPY README.md ./
COPY service ./service
# --no-editable installs the project into the venv: the runtime stage needs no source tree.
RUN uv sync --frozen --no-dev --no-editable

FROM python:3.12-slim
RUN useradd --system --uid 10001 --user-group --home-dir /app --no-create-home best \
    && mkdir -p /app/data \
    && chown best:best /app/data
COPY --from=build /opt/venv /opt/venv
COPY config /app/config
WORKDIR /app
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HOST=0.0.0.0 \
    PORT=12345 \
    CONFIG_DIR=/app/config \
    DATA_DIR=/app/data
USER 10001:10001
EXPOSE 12345
# Liveness only: readiness (/ready) is for the load balancer, not for restarting the container.
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(f'http://127.0.0.1:{os.environ.get(\"PORT\", \"12345\")}/health', timeout=2)"]
# Exec form: the gateway is PID 1 and receives SIGTERM itself to drain.
CMD ["best", "serve"]
