# syntax=docker/dockerfile:1
# lxmert-pipeline: raw images -> bottom-up-attention regions -> LXMERT answers, on GPU or CPU.
#
#   docker build -t lxmert-pipeline .
#   docker run --rm --gpus all -v "$PWD/images:/data" -v lxmert-weights:/weights \
#       lxmert-pipeline /data --out /data/features.h5
#
# Base image: plain Debian-slim Python, not nvidia/cuda. The pinned torch wheel (2.14.1+cu130)
# carries its own CUDA 13 runtime, cuDNN, cuBLAS and NCCL as pip packages; the only GPU library
# it needs from outside is the driver's libcuda.so.1, which the NVIDIA container toolkit mounts
# into the container at `docker run --gpus ...` time. A CUDA base would add ~2 GB of libraries
# that would then sit unused next to pip's copies. The remaining system dependencies of the
# wheels (glibc, libstdc++, libgcc_s) are in every Debian image. Host needs NVIDIA driver >= 580
# (CUDA 13) and the NVIDIA container toolkit.
# Python 3.11: the version the project is developed and tested with (setup.py: >=3.10).
# Pinned by tag; for byte-for-byte rebuilds pin the digest as well
# (python:3.11-slim-bookworm@sha256:...), which we cannot look up from our offline machines.
FROM python:3.11-slim-bookworm

LABEL org.opencontainers.image.title="lxmert-pipeline" \
      org.opencontainers.image.description="Bottom-up-attention Faster R-CNN features and LXMERT answers from raw images" \
      org.opencontainers.image.licenses="MIT"

# Weights live in the /weights volume: LXMERT_PIPELINE_WEIGHTS is the registry's directory of
# named checkpoints (/weights/<name>/<files>), HF_HOME puts the Hugging Face cache beside it.
# HF_HUB_OFFLINE=1: a cluster job never reaches for the network behind the user's back; a missing
# checkpoint is one clear error. Fetching is explicit: -e HF_HUB_OFFLINE=0 ... python -m weights fetch.
# NVIDIA_DRIVER_CAPABILITIES asks the toolkit for the compute libraries; NVIDIA_VISIBLE_DEVICES is
# deliberately not set, so GPUs are exposed only when the user asks with --gpus.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    LXMERT_PIPELINE_WEIGHTS=/weights \
    HF_HOME=/weights/hf \
    HF_HUB_OFFLINE=1 \
    HF_HUB_DISABLE_TELEMETRY=1 \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    TORCHINDUCTOR_CACHE_DIR=/tmp/torchinductor \
    TRITON_HOME=/tmp/triton \
    TRITON_CACHE_DIR=/tmp/triton/cache

# --compile: Inductor writes C++ (CPU) and Triton builds a C launcher (CUDA) at run time, so the
# image needs a C/C++ compiler, which -slim leaves out (~200 MB with it). The compile caches above
# are under /tmp, writable for any --user: the defaults are /tmp/torchinductor_<login name>,
# which fails for a numeric --user without a passwd entry, and ~/.triton, not writable for it.
# Versions pinned to bookworm's; libc6-dev must match the base image's libc6, whose +deb12uN
# suffix moves with Debian point releases, hence the wildcard.
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc=4:12.2.0-3 g++=4:12.2.0-3 \
        'libc6-dev=2.36-9+deb12u*' \
    && rm -rf /var/lib/apt/lists/*

# Same two steps as tasks.py (the README's setup): the pinned requirements first (its own layer, so code changes
# do not re-download torch), then the project itself with --no-deps, so nothing but the
# requirement files decides a version. The [ray] and [web] extras are in the image (a Ray cluster
# runs from it; `--entrypoint lxmert-demo` serves the page), installed in the same single pip call
# as requirements.txt so the resolver sees every pin at once. Not editable here, so the shipped
# shapes-world weights (package data under weights/shipped/) land in site-packages, no volume.
COPY requirements.txt requirements-ray.txt requirements-web.txt /tmp/lxmert-pipeline/
RUN python -m pip install --no-cache-dir -r /tmp/lxmert-pipeline/requirements.txt \
        -r /tmp/lxmert-pipeline/requirements-ray.txt -r /tmp/lxmert-pipeline/requirements-web.txt

COPY . /tmp/lxmert-pipeline/
# Build isolation stays on (unlike tasks.py's offline-friendly --no-build-isolation): the
# build has network, and pip then provides the setuptools pyproject.toml asks for.
# The import check fails the build, not the first job, if a system library is missing.
RUN python -m pip install --no-cache-dir --no-deps /tmp/lxmert-pipeline \
    && rm -rf /tmp/lxmert-pipeline \
    && python -c "import cv2, h5py, torch, torchvision, transformers, ray.data, gradio, detector, encoder, pipeline, weights"

# Non-root user. UID 1000 is the usual first user on a workstation, so bind-mounted folders are
# often writable as they are; otherwise run with --user "$(id -u):$(id -g)". USER is numeric so
# that Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
RUN useradd --create-home --uid 1000 --user-group lxmert \
    && mkdir -p /weights/hf /data \
    && chown -R lxmert:lxmert /weights /data
USER 1000:1000
WORKDIR /data

# Optional: bake named checkpoints into the image, e.g.
#   docker build --build-arg BAKE_WEIGHTS="vg-r101-c4-attr lxmert-vqa" -t lxmert-pipeline:vqa .
# Space-separated registry names (python -m weights list). Fetched before VOLUME is declared,
# because changes to a declared volume path during the build are discarded. A named volume
# mounted on /weights starts as a copy of them; a bind mount hides them.
ARG BAKE_WEIGHTS=""
RUN for name in ${BAKE_WEIGHTS}; do \
        HF_HUB_OFFLINE=0 python -m weights fetch "${name}" || exit 1; \
    done
VOLUME ["/weights"]

ENTRYPOINT ["extract_features"]
CMD ["--help"]
