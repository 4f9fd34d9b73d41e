# The Concord node daemon as a container image.
#
#   scripts/docker-build.sh                     # picks the base, builds wheels, tags concord:local
#   docker build -t concord:local .             # where python:3.12-slim can be pulled
#   docker build --build-arg BASE_IMAGE=concord-base:bookworm -t concord:local .
#
# BASE_IMAGE is any Debian-like image with python3 (>= 3.11) and its venv module: the
# official python:3.12-slim, or concord-base:bookworm made by scripts/build-base-image.sh
# (Debian's python3 at /usr/bin/python3, no pip outside a venv). When build/wheels/ holds
# wheels for Concord and its dependencies (scripts/docker-build.sh puts them there for the
# length of its build), the build installs from them only and needs no network; otherwise
# it installs from PyPI.
ARG BASE_IMAGE=python:3.12-slim

FROM ${BASE_IMAGE} AS builder
LABEL org.concord.stage="builder"
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore
RUN python3 -m venv /opt/concord
COPY . /src
RUN set -eu; \
    if ls /src/build/wheels/concord-*.whl >/dev/null 2>&1; then \
        echo "installing from build/wheels (no network)"; \
        /opt/concord/bin/pip install --no-index --find-links /src/build/wheels concord; \
    else \
        echo "no build/wheels: installing from PyPI"; \
        /opt/concord/bin/pip install /src; \
    fi; \
    /opt/concord/bin/pip uninstall --yes --quiet pip; \
    /opt/concord/bin/python -c 'import concord.cli, uvloop, aiohttp, msgpack'

# The container's paths and ports; the node id and members come from whoever runs it
# (CONCORD_NODE_ID, CONCORD_MEMBERS, ...: see docs/containers.md).
FROM ${BASE_IMAGE}
LABEL org.concord.stage="runtime"
ENV PATH=/opt/concord/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8 \
    PYTHONUNBUFFERED=1 \
    CONCORD_DATA_DIR=/var/lib/concord \
    CONCORD_CLIENT_LISTEN=0.0.0.0:7000 \
    CONCORD_PEER_LISTEN=0.0.0.0:7100 \
    CONCORD_LOG_FORMAT=json
RUN groupadd --gid 10001 concord \
 && useradd --uid 10001 --gid concord --home-dir /var/lib/concord --no-create-home \
        --shell /usr/sbin/nologin concord \
 && mkdir -p /var/lib/concord \
 && chown concord:concord /var/lib/concord \
 && chmod 0700 /var/lib/concord
USER concord:concord
WORKDIR /var/lib/concord
VOLUME ["/var/lib/concord"]
# 7000: client API (HTTP), 7100: peer RPC
EXPOSE 7000 7100
# Liveness only (/health answers while the process runs): a node is "ready" only when a
# quorum is up, which would make a starting cluster wait on itself.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; port = os.environ.get('CONCORD_CLIENT_LISTEN', ':7000').rpartition(':')[2]; urllib.request.urlopen(f'http://127.0.0.1:{port}/health', timeout=2)"]
ENTRYPOINT ["concord"]
CMD ["serve"]
# Last, so that the metadata layers above stay cached when only Concord changes. The files
# stay owned by root: the concord user can run them, not change them.
COPY --from=builder /opt/concord /opt/concord
