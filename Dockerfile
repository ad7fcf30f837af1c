# Salvage pipeline image: `docker build -t salvage .`, then `docker run salvage run --help`.
# Used by docker-compose.yml (service `salvage`); the same image runs every `salvage` command
# (replay, record, explain, review) and `python -m bytewax.run salvage.flows.recovery:flow` (docs/kubernetes.md).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Only what `pip install .` needs (see .dockerignore); the source tree is removed afterwards.
COPY . /tmp/src
RUN pip install /tmp/src && rm -rf /tmp/src

# Non-root. /var/lib/salvage/recovery is created here, owned by the user, so a fresh named volume
# mounted over it inherits that ownership (docker-compose.yml: volume salvage-recovery).
RUN groupadd --system --gid 10001 salvage \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/salvage --create-home \
        --shell /usr/sbin/nologin salvage \
    && mkdir -p /var/lib/salvage/recovery \
    && chown -R salvage:salvage /var/lib/salvage
USER 10001:10001
WORKDIR /var/lib/salvage
VOLUME ["/var/lib/salvage/recovery"]

# Prometheus /metrics (SALVAGE_METRICS_PORT).
EXPOSE 9464

ENTRYPOINT ["salvage"]
CMD ["run", "--follow", "--recovery-dir", "/var/lib/salvage/recovery"]
