# cleftgan-hpc: the image every stage runs in (Docker, or Apptainer via containers/cleftgan.def).
#
#   GPU (default):  docker build -t cleftgan-hpc .
#   CPU only:       docker build --build-arg BASE_IMAGE=debian:bookworm-slim \
#                                --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu -t cleftgan-hpc:cpu .
#
# What it holds: a venv (/opt/venv) with torch (the CUDA 12.8 build, or the CPU one), the project
# with its `sweep` extra (ray[tune], for sweep stages), submitit (the Slurm backend) and jobs/;
# every Python package at the version in containers/constraints.txt (containers/pin.py). Nothing
# is downloaded or compiled at run time.
#
# No compiled StyleGAN3 kernels: this version's networks run on PyTorch ops (correct; slower on
# GPUs than the CUDA kernels would be), so `cleftgan-hpc doctor` reporting "kernels FALLBACK" is
# expected in this image. The CUDA *devel* base (nvcc), g++, ninja and TORCH_CUDA_ARCH_LIST are
# kept for kernels compiled at build time later; today g++ and python3-dev only serve pip should
# a pinned package have no wheel for the base's Python.
#
# Left out on purpose: the `detect` extra (dlib-bin, face-recognition-models: face landmarks for
# photos without a landmarks file). dlib is C++ and builds from source with a compiler toolchain
# and cmake where no wheel fits, and its 68-point landmark model was trained on data whose licence
# excludes commercial use. In this image a preprocess stage needs the landmarks file you pass
# (its `landmarks:` CSV) or `fallback: center_crop`; or detect outside it with the extra.
ARG BASE_IMAGE=nvidia/cuda:12.8.1-cudnn-devel-ubuntu24.04
FROM ${BASE_IMAGE}

# torch comes from its own index: the CUDA 12.8 build by default, the CPU build with .../whl/cpu.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
# For compiled kernels to come (torch.utils.cpp_extension reads it); nothing uses it yet.
ARG TORCH_CUDA_ARCH_LIST="7.0;7.5;8.0;8.6;8.9;9.0+PTX"
# Offline builds: put every wheel in containers/wheels/ and pass --build-arg PIP_NO_INDEX=1.
ARG PIP_NO_INDEX

LABEL org.opencontainers.image.title="cleftgan-hpc" \
      org.opencontainers.image.description="CleftGAN (StyleGAN3-t + ADA transfer learning) as batch jobs" \
      org.opencontainers.image.licenses="MIT"

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST}

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# Versions of OS packages follow the base image's release; Python packages are pinned below.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-dev g++ ninja-build ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/venv

WORKDIR /opt/cleftgan-hpc

# Dependencies first (a layer that changes only with the pins), then the project. ray[tune] is
# the `sweep` extra of pyproject.toml (and IMAGE_EXTRAS in containers/pin.py): keep them in step.
COPY containers/constraints.txt containers/constraints.txt
COPY containers/wheels/ /tmp/wheels/
RUN pip install --no-cache-dir --find-links /tmp/wheels --extra-index-url "${TORCH_INDEX_URL}" \
      --constraint containers/constraints.txt torch submitit "ray[tune]"

COPY pyproject.toml README.md ./
COPY cleftgan_hpc/ cleftgan_hpc/
COPY jobs/ jobs/
RUN pip install --no-cache-dir --find-links /tmp/wheels --constraint containers/constraints.txt ".[sweep]" \
 && pip check \
 && rm -rf /tmp/wheels

RUN useradd --create-home --uid 1000 --shell /bin/bash cleftgan
USER 1000:1000
WORKDIR /home/cleftgan

ENTRYPOINT ["cleftgan-hpc"]
CMD ["--help"]
