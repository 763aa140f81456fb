# remind2reg: ReMIND2Reg registration container (CUDA when a GPU is there, CPU otherwise).
#
#   docker build -t remind2reg:latest .
#   docker run --rm --gpus all -v "$PWD/input":/input:ro -v "$PWD/output":/output remind2reg:latest
#
# Stage 1 builds the wheels (the project and NiftyReg from its PyPI sdist, which needs a
# compiler); stage 2 is the runtime image without compilers, running as uid 1000.
# Versions: torch 2.5.1 + CUDA 12.4 (base image, Python 3.11) satisfy pyproject's
# requires-python >= 3.11 and torch >= 2.2; NIFTYREG_VERSION matches scripts/install_niftyreg.sh;
# build-constraints.txt pins the build tools, constraints.txt every runtime dependency (the
# same files `make install` uses). TORCH_IMAGE may name another pair of images
# (<TORCH_IMAGE>-devel, <TORCH_IMAGE>-runtime) with Python and torch at /opt/conda, as the
# container test does (docs/container.md). Only classic-builder syntax (compose v1 builds it).
ARG TORCH_IMAGE=pytorch/pytorch:2.5.1-cuda12.4-cudnn9

FROM ${TORCH_IMAGE}-devel AS build
ARG NIFTYREG_VERSION=1.5.70rc1
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_CONSTRAINT=/src/build-constraints.txt
WORKDIR /src
COPY build-constraints.txt ./
# NiftyReg first: the slow step (minutes) stays cached while the project's code changes.
# CMAKE_POLICY_VERSION_MINIMUM: the sdist asks for CMake 3.2, which CMake >= 4 refuses without it.
RUN CMAKE_POLICY_VERSION_MINIMUM=3.5 pip wheel --no-deps --wheel-dir /wheels "niftyreg==${NIFTYREG_VERSION}"
COPY pyproject.toml README.md ./
COPY remind2reg/ remind2reg/
COPY inference/ inference/
COPY evaluation/ evaluation/
COPY synthesis/ synthesis/
COPY training/ training/
# The project's wheel, and its run-time requirements (no extras) as a requirements file, so
# that the runtime stage installs them in a layer that a code change does not invalidate.
RUN pip wheel --no-deps --wheel-dir /wheels . \
    && python -c "import email, pathlib, zipfile; \
whl = zipfile.ZipFile(next(pathlib.Path('/wheels').glob('remind2reg-*.whl'))); \
meta = email.message_from_bytes(whl.read(next(n for n in whl.namelist() if n.endswith('.dist-info/METADATA')))); \
print(*(r for r in meta.get_all('Requires-Dist', []) if 'extra ==' not in r), sep='\\n')" \
        > /src/requirements.txt \
    && cat /src/requirements.txt

FROM ${TORCH_IMAGE}-runtime
LABEL org.opencontainers.image.title="remind2reg" \
      org.opencontainers.image.description="Brain MRI to intra-operative ultrasound registration (Learn2Reg ReMIND2Reg)"
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    REMIND2REG_MODALITIES=both \
    REMIND2REG_DEVICE=auto \
    REMIND2REG_ON_ERROR=identity \
    REMIND2REG_ALLOW_FAILURES=1
# NiftyReg's tools (reg_aladin, ...) are built with OpenMP and need the system libgomp.so.1,
# which the runtime base image does not ship: without it every case fails (exit 127).
# Not version-pinned: the package's version is the base image's distribution's (its tag pins it).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/*
# Dependencies first (cached while pyproject.toml and constraints.txt do not change); torch
# comes with the base image and pip keeps it (pyproject asks for torch >= 2.2).
COPY constraints.txt /tmp/constraints.txt
COPY --from=build /src/requirements.txt /tmp/requirements.txt
RUN pip install -c /tmp/constraints.txt -r /tmp/requirements.txt \
    && rm -f /tmp/requirements.txt
COPY --from=build /wheels /tmp/wheels
# The wheels, then the checks that fail the build rather than the first case: NiftyReg runs
# (libgomp found) and the command line starts.
RUN pip install --no-deps /tmp/wheels/*.whl \
    && rm -rf /tmp/wheels /tmp/constraints.txt \
    && python -c "import subprocess, niftyreg; subprocess.run([str(niftyreg.bin_path / 'reg_aladin'), '-v'], check=True)" \
    && remind2reg --version \
    && useradd --create-home --uid 1000 --shell /usr/sbin/nologin reg \
    && mkdir -p /input /output && chown reg:reg /output
COPY weights/ /opt/remind2reg/weights/
USER 1000:1000
WORKDIR /home/reg
ENTRYPOINT ["remind2reg", "register", "--input", "/input", "--output", "/output"]
