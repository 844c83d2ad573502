# cleftgan-hpc: the image every stage runs in (Docker, or Apptainer via containers/cleftgan.def).
#
#   GPU (default):  docker build -t cleftgan-hpc .
#   CPU only:       docker build --build-arg BASE_IMAGE=debian:bookworm-slim \
#                                --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu -t cleftgan-hpc:cpu .
#
# The CUDA *devel* base has nvcc, so the StyleGAN3 kernels compile at build time for the
# architectures in TORCH_CUDA_ARCH_LIST; at run time nothing is downloaded or compiled.
ARG BASE_IMAGE=nvidia/cuda:12.8.1-cudnn-devel-ubuntu24.04
FROM ${BASE_IMAGE}

# torch comes from its own index: the CUDA 12.8 build by default, the CPU build with .../whl/cpu.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
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

# Dependencies first (a layer that changes only with the pins), then the project.
COPY containers/constraints.txt containers/constraints.txt
COPY containers/wheels/ /tmp/wheels/
RUN pip install --no-cache-dir --find-links /tmp/wheels --extra-index-url "${TORCH_INDEX_URL}" \
      --constraint containers/constraints.txt torch submitit

COPY pyproject.toml README.md ./
COPY cleftgan_hpc/ cleftgan_hpc/
COPY jobs/ jobs/
RUN pip install --no-cache-dir --find-links /tmp/wheels --constraint containers/constraints.txt . \
 && pip check \
 && rm -rf /tmp/wheels

# Compile the StyleGAN3 kernels ahead of time (the CUDA base has nvcc). The build module
# arrives with the CUDA kernels; until then, and on a CPU base, the reference ops are used
# and `cleftgan-hpc doctor` says so.
RUN if python -c "import cleftgan_hpc.model.ops.build" 2>/dev/null; then \
      python -m cleftgan_hpc.model.ops.build --arch "${TORCH_CUDA_ARCH_LIST}"; \
    else \
      echo "no compiled kernels in this version: the reference ops will be used"; \
    fi

RUN useradd --create-home --uid 1000 --shell /bin/bash cleftgan
USER 1000:1000
WORKDIR /home/cleftgan

ENTRYPOINT ["cleftgan-hpc"]
CMD ["--help"]
