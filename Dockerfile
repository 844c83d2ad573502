# cleftgan-hpc: the image every stage runs in (Docker, or Apptainer via containers/cleftgan.def).
#
#   GPU (default):  docker build -t cleftgan-hpc .
#   CPU only:       docker build --build-arg BASE_IMAGE=debian:bookworm-slim \
#                                --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu -t cleftgan-hpc:cpu .
#
# What it holds: a venv (/opt/venv) with torch (the CUDA 12.8 build, or the CPU one), the project
# with its `sweep` extra (ray[tune], for sweep stages) and `triton` extra (the compiled kernels),
# submitit (the Slurm backend) and jobs/; every Python package at the version in
# containers/constraints.txt (containers/pin.py). Nothing is downloaded at run time.
#
# Compiled kernels: Triton kernels for the filtered leaky ReLU (docs/networks.md). Triton compiles
# per GPU architecture; `python -m cleftgan_hpc.model.ops.warm` below compiles every kernel the
# StyleGAN3-T/R configurations use, for each architecture in TRITON_ARCHS, without a GPU
# (Triton's own compiler and bundled ptxas; about 2-3 minutes per architecture on 2 cores), into
# /opt/triton-cache, which the image reads at run time. Where the build also sees a GPU (a Docker
# daemon whose default runtime is nvidia, or `apptainer build --nv` through
# containers/cleftgan.def) it compiles for that GPU too and runs the self-checks. Any other GPU
# architecture compiles at first use on a node into TRITON_CACHE_DIR (~/.triton/cache), with
# the image's gcc and Python headers (also Triton's small CUDA helper module, once per cache).
# At first use in every job each kernel checks itself against the PyTorch ops; where one fails
# (or there is no GPU) the networks run on their PyTorch ops, and on a GPU node
# `cleftgan-hpc doctor` prints its "kernels FALLBACK" line. The CUDA *devel* base (nvcc), g++ and
# TORCH_CUDA_ARCH_LIST stay for extensions built with torch.utils.cpp_extension (none today).
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
# For C++/CUDA extensions (torch.utils.cpp_extension reads it); the Triton kernels do not need it.
ARG TORCH_CUDA_ARCH_LIST="7.0;7.5;8.0;8.6;8.9;9.0+PTX"
# GPU architectures (compute capability x10) the Triton kernels are compiled for at build time,
# without a GPU: 80 A100, 86 A40/RTX 30, 89 L40/RTX 40, 90 H100/H200. "" compiles none.
ARG TRITON_ARCHS="80;90"
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
    TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST} \
    CLEFTGAN_TRITON_PREBUILT=/opt/triton-cache \
    TRITON_CACHE_MANAGER=cleftgan_hpc.model.ops.triton_cache:PrebuiltFirstCache

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# Versions of OS packages follow the base image's release; Python packages are pinned below.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-dev g++ ninja-build ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/venv

WORKDIR /opt/cleftgan-hpc

# Dependencies first (a layer that changes only with the pins), then the project. ray[tune] and
# triton are the `sweep` and `triton` extras of pyproject.toml (and IMAGE_EXTRAS in
# containers/pin.py): keep them in step.
COPY containers/constraints.txt containers/constraints.txt
COPY containers/wheels/ /tmp/wheels/
RUN pip install --no-cache-dir --find-links /tmp/wheels --extra-index-url "${TORCH_INDEX_URL}" \
      --constraint containers/constraints.txt torch submitit "ray[tune]" triton

COPY pyproject.toml README.md ./
COPY cleftgan_hpc/ cleftgan_hpc/
COPY jobs/ jobs/
RUN pip install --no-cache-dir --find-links /tmp/wheels --constraint containers/constraints.txt ".[sweep,triton]" \
 && pip check \
 && rm -rf /tmp/wheels

# Prebuild the Triton kernels for TRITON_ARCHS (and self-check them where this build sees a GPU);
# read-only at run time, read through TRITON_CACHE_MANAGER, misses compile into TRITON_CACHE_DIR.
RUN python -m cleftgan_hpc.model.ops.warm --cache /opt/triton-cache --archs "${TRITON_ARCHS}" \
 && chmod -R a+rX,go-w /opt/triton-cache

RUN useradd --create-home --uid 1000 --shell /bin/bash cleftgan
USER 1000:1000
WORKDIR /home/cleftgan

ENTRYPOINT ["cleftgan-hpc"]
CMD ["--help"]
