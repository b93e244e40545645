# One image for both roles: `conveyor gateway` (the default) and `conveyor worker`.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies first, from pyproject.toml alone, so a code change does not reinstall them.
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt

COPY schemas schemas
COPY producer producer
COPY consumers consumers
COPY gateway gateway
COPY conveyor conveyor
RUN pip install --no-deps . \
    && useradd --create-home --uid 10001 conveyor

USER conveyor
EXPOSE 8000
CMD ["conveyor", "gateway"]
