# One image for every tmpq service: the API (`tmpq serve`), the job runner (`tmpq runner`) and the Ray head and
# workers (`ray start`). See docker-compose.yml.
#
#   docker build -t tmpq .
#
# torch is installed first, pinned like constraints.txt. The default is the CPU build from PyTorch's CPU index.
# For a CUDA build, pick the index matching the host's driver, e.g.
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 -t tmpq:cuda .
# (or TORCH_INDEX_URL=https://pypi.org/simple for PyPI's default build, which bundles CUDA libraries on x86-64).
FROM python:3.11-slim

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    RAY_USAGE_STATS_ENABLED=0 \
    MPLCONFIGDIR=/tmp/matplotlib

RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"

WORKDIR /opt/tmpq
COPY pyproject.toml README.md constraints.txt ./
COPY search ./search
COPY supernet ./supernet
COPY server ./server
COPY workers ./workers
# constraints.txt pins torch to the version installed above, so pip keeps that build.
RUN pip install -c constraints.txt .

# The shipped testbed models. docker-compose mounts a named volume on /models: Docker seeds an empty named volume
# with this directory's content, so the testbed is there on first start; add your own models next to it.
COPY models /models
# tmpq looks for the shipped testbed and its FDD feature extractor in <site-packages>/models (the repository's
# models/ in a checkout): point that at /models, so jobs on /models/digits-ddpm-16 can use FDD and re-scoring.
RUN ln -s /models "$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/models"

RUN useradd --create-home --uid 1000 tmpq \
    && mkdir -p /data \
    && chown -R tmpq:tmpq /data /models
USER tmpq
WORKDIR /home/tmpq

ENV TMPQ_MODEL_ROOT=/models \
    TMPQ_DATA_DIR=/data

EXPOSE 8000
CMD ["tmpq", "serve", "--host", "0.0.0.0", "--port", "8000"]
