# remind2reg: ReMIND2Reg registration container (CUDA when a GPU is there, CPU otherwise).
#
#   docker build -t remind2reg:latest .
#   docker run --rm --gpus all -v "$PWD/input":/input:ro -v "$PWD/output":/output remind2reg:latest
#
# Stage 1 builds the wheels (the project and NiftyReg from its PyPI sdist, which needs a
# compiler); stage 2 is the runtime image without compilers, running as a non-root user.
# Versions: torch 2.5.1 + CUDA 12.4 (base image, Python 3.11) satisfy pyproject's
# requires-python >= 3.11 and torch >= 2.2; NIFTYREG_VERSION matches scripts/install_niftyreg.sh.
ARG TORCH_IMAGE=pytorch/pytorch:2.5.1-cuda12.4-cudnn9

FROM ${TORCH_IMAGE}-devel AS build
ARG NIFTYREG_VERSION=1.5.70rc1
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY remind2reg/ remind2reg/
COPY inference/ inference/
COPY evaluation/ evaluation/
COPY synthesis/ synthesis/
COPY training/ training/
# CMAKE_POLICY_VERSION_MINIMUM: the sdist asks for CMake 3.2, which CMake >= 4 refuses without it.
RUN pip wheel --no-deps --wheel-dir /wheels . \
    && CMAKE_POLICY_VERSION_MINIMUM=3.5 pip wheel --no-deps --wheel-dir /wheels "niftyreg==${NIFTYREG_VERSION}"

FROM ${TORCH_IMAGE}-runtime
LABEL org.opencontainers.image.title="remind2reg" \
      org.opencontainers.image.description="Brain MRI to intra-operative ultrasound registration (Learn2Reg ReMIND2Reg)"
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    REMIND2REG_MODALITIES=both \
    REMIND2REG_DEVICE=auto \
    REMIND2REG_ON_ERROR=identity \
    REMIND2REG_ALLOW_FAILURES=1
COPY --from=build /wheels /tmp/wheels
# torch comes with the base image; pip keeps it (pyproject asks for torch >= 2.2).
RUN pip install /tmp/wheels/*.whl && rm -rf /tmp/wheels \
    && useradd --create-home --uid 1000 --shell /usr/sbin/nologin reg \
    && mkdir -p /input /output && chown reg:reg /output
COPY weights/ /opt/remind2reg/weights/
USER 1000:1000
WORKDIR /home/reg
ENTRYPOINT ["remind2reg", "register", "--input", "/input", "--output", "/output"]
