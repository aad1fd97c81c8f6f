# syntax=docker/dockerfile:1
# concurrency-injector: the admission webhook server.
# Stage 1 builds the wheel (with build tools); stage 2 installs only that wheel and its
# dependencies into a clean slim image that runs as a non-root numeric user.

ARG PYTHON_IMAGE=python:3.12-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY webhook ./webhook
RUN pip wheel --no-deps --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --from=build /wheels /wheels
# Install the wheel and its dependencies, then drop the wheel and pip itself: nothing in the
# final image builds or installs anything.
RUN pip install /wheels/*.whl \
    && rm -rf /wheels \
    && (pip uninstall -y pip setuptools wheel || true)
USER 65532:65532
WORKDIR /tmp
# The server writes only to the certificate directory and /tmp, both emptyDir volumes in the
# chart; the root filesystem can be read-only.
EXPOSE 8443
ENTRYPOINT ["concurrency-injector"]
CMD ["serve"]
