# adahop training image: the project installed (editable) on top of a CUDA build of PyTorch.
#   docker build -t adahop .                       (GPU: torch 2.11 + CUDA 13.0 wheels)
#   docker build -t adahop-cpu --build-arg TORCH_VERSION=2.13.0 \
#       --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu .
# Run it with ./launch_docker.sh (mounts the repository and the GPUs, runs ./run_train.sh).
ARG PYTHON_VERSION=3.12
FROM python:${PYTHON_VERSION}-slim

ARG TORCH_VERSION=2.11.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu130

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN apt-get update && apt-get install -y --no-install-recommends git procps \
    && rm -rf /var/lib/apt/lists/*

# torch first, from the index that matches the hardware, so that `pip install -e .` keeps it.
RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"

WORKDIR /workspace/adahop
COPY . /workspace/adahop
RUN pip install -e ".[test]"

CMD ["./run_train.sh"]
