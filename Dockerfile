# One image for every platform-tasks process: the command picks it.
#
#   docker build -t platform-tasks .
#   docker run platform-tasks                              # worker --queue default (the CMD)
#   docker run platform-tasks worker --queue payments
#   docker run platform-tasks beat
#   docker run platform-tasks monitor
#
# Runs as UID/GID 10001 with a read-only root filesystem: the only writable path it needs is
# /tmp (mount an emptyDir there; the metrics multiprocess directory lives under it), plus the
# media volume at PLATFORM_TASKS_MEDIA_ROOT for the media queue. See docs/image.md.
# tests/image/test_dockerfile.py lints this file, replays the builder stage into a venv and
# runs the image's commands from it.

# The base, pinned by digest (the multi-arch index digest of the tag, so arm64 builds too).
# The tag is there for people; Docker pulls by the digest. To move to a newer patch release:
#   docker buildx imagetools inspect python:3.11-slim-bookworm   (the "Digest:" line)
# replace the digest below with it, rebuild, and run the image test.
FROM python:3.11-slim-bookworm@sha256:a36c24f9cbdf4fd0f52d67f0823eeac19c2028c637cecc392d97f980d4fec56b AS base

# ---------------------------------------------------------------------------------------------
# builder: a venv at /opt/venv with the dependencies, then the project's own wheel.
FROM base AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

WORKDIR /build

# Dependencies first, from pyproject.toml alone: this layer is rebuilt only when the
# dependencies change, not on every edit to the code.
COPY scripts/image_install.py scripts/
COPY pyproject.toml ./
RUN --mount=type=cache,target=/root/.cache/pip ["python", "scripts/image_install.py", "dependencies", "/opt/venv"]

# Then the code: build the wheel and install it, without dependencies, into the same venv.
COPY README.md ./
COPY src/ src/
RUN --mount=type=cache,target=/root/.cache/pip ["python", "scripts/image_install.py", "project", "/opt/venv", "/wheels"]

# ---------------------------------------------------------------------------------------------
# runtime: the base plus the finished venv; no build tools, no sources, no wheels.
FROM base AS runtime

LABEL org.opencontainers.image.title="platform-tasks" \
      org.opencontainers.image.description="Celery workers, beat and monitor of the platform-tasks background-job platform"

# No .pyc written at run time (the venv was compiled at install time, and the root filesystem
# is read-only); logs leave the process as they are written. HOME points at the one writable
# directory, for any library that wants a cache there.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    HOME=/tmp

# A fixed numeric user, so Kubernetes' runAsNonRoot can verify it without a passwd lookup.
RUN groupadd --gid 10001 platform-tasks \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
            --shell /usr/sbin/nologin platform-tasks

# Owned by root and not writable by the user that runs it.
COPY --from=builder /opt/venv /opt/venv

# An empty, read-only working directory: a relative path in a setting fails loudly instead of
# writing somewhere unexpected.
WORKDIR /app
USER 10001:10001

# Worker /metrics and the monitor's /metrics (PLATFORM_TASKS_METRICS_PORT, _MONITOR_PORT).
EXPOSE 9808 9809

# Exec form, no shell: the process is PID 1 and receives SIGTERM itself (a worker's warm
# shutdown). The command picks the role; Kubernetes sets args for each Deployment.
ENTRYPOINT ["platform-tasks"]
CMD ["worker", "--queue", "default"]
