# One image for both roles: `conveyor gateway` (the default) and `conveyor worker`.
#
# Slim on purpose: a virtual environment built in a first stage and copied alone into a
# fresh python slim image, so no compiler, pip cache or source tree is left; no embedded
# Redis or S3 either (the `conveyor[embedded]` extra is for `conveyor run` on a laptop, a
# deployment brings its own). It runs as the unprivileged user `conveyor`.
#
#   docker build -t conveyor:0.1.0 .
#
# Your own handlers: a derived image that copies your module into /app (the working
# directory, which is importable, as `--handlers` finds ./myjobs.py) and names it, e.g.
#
#   FROM conveyor:0.1.0
#   COPY requirements.txt /tmp/   # what your handlers import, if anything
#   USER root
#   RUN pip install --no-cache-dir -r /tmp/requirements.txt   # into /opt/venv
#   USER conveyor
#   COPY myjobs.py /app/
#   ENV CONVEYOR_HANDLERS=myjobs
#
# and run that image for the gateway and for every worker: the gateway reads the same module
# to learn the job types it accepts (it never runs them).

ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
WORKDIR /src
# Dependencies first, from pyproject.toml alone, so a code change does not reinstall them.
# Only the required ones: no optional extra (embedded, dev) goes into the image.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > requirements.txt \
    && /opt/venv/bin/pip install -r requirements.txt
COPY README.md LICENSE ./
COPY schemas schemas
COPY producer producer
COPY consumers consumers
COPY gateway gateway
COPY conveyor conveyor
RUN /opt/venv/bin/pip install --no-deps . \
    && /opt/venv/bin/conveyor --version

FROM ${PYTHON_IMAGE}
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH
COPY --from=build /opt/venv /opt/venv
RUN useradd --create-home --uid 10001 conveyor
WORKDIR /app
USER conveyor
EXPOSE 8000
CMD ["conveyor", "gateway"]
