# gischat: slim Python image, locked dependencies, unprivileged user.
ARG PYTHON_VERSION=3.12

FROM python:${PYTHON_VERSION}-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    POETRY_NO_INTERACTION=1 \
    POETRY_VIRTUALENVS_IN_PROJECT=true
WORKDIR /app
RUN pip install --no-cache-dir "poetry==2.5.1"
# Dependencies first, from the lock file, so code changes reuse this layer.
COPY pyproject.toml poetry.lock README.md ./
RUN poetry install --only main --no-root --no-directory
COPY gischat ./gischat
RUN poetry install --only main

FROM python:${PYTHON_VERSION}-slim
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin gischat
WORKDIR /app
COPY --from=build /app/.venv /app/.venv
COPY gischat ./gischat
ENV PATH="/app/.venv/bin:${PATH}" \
    PYTHONUNBUFFERED=1 \
    HOST=0.0.0.0 \
    PORT=8000
USER 10001
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('PORT', '8000') + '/status', timeout=4)"]
CMD ["gischat"]
