# One image for every PortLLM process: migrate, bot, workers and flower differ only by command.
FROM python:3.11-slim

# CPU wheels by default; build the GPU worker image with
#   --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    HF_HUB_DISABLE_TELEMETRY=1 \
    PORTLLM_DATA_DIR=/data

WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY bot ./bot
COPY portllm_core ./portllm_core
COPY portllm_cli ./portllm_cli
COPY workers ./workers
COPY registry ./registry
COPY portllm_engine ./portllm_engine
COPY migrations ./migrations
COPY slack ./slack

RUN pip install --index-url "${TORCH_INDEX_URL}" torch==2.13.0 \
    && pip install ".[ops]" \
    && useradd --create-home --uid 10001 portllm \
    && mkdir -p /data && chown portllm /data

# The vLLM serve worker's image (compose profile `vllm`) adds vLLM in an environment of its own:
#   --build-arg VLLM_PACKAGE=vllm   (its transformers pin is below ours; text models need no
#   torchvision, torchaudio or torchcodec, whose wheels may not match its torch)
ARG VLLM_PACKAGE=
RUN if [ -n "${VLLM_PACKAGE}" ]; then \
        python -m venv /opt/vllm && /opt/vllm/bin/pip install "${VLLM_PACKAGE}" \
        && /opt/vllm/bin/pip uninstall -y torchvision torchaudio torchcodec; \
    fi

USER portllm
VOLUME ["/data"]
CMD ["portllm", "--help"]
