# The image deploy/telemetry-gateway-deployment.yaml runs:
#   docker build -t tao-metrics-exporter:1.0.0 .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY *.py ./
RUN pip install .
WORKDIR /

# An unprivileged user; the filesystem may be mounted read-only.
USER 65532:65532
EXPOSE 9877
ENTRYPOINT ["tao-metrics-exporter"]
