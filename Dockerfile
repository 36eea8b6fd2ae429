# The nixgitops controller image: Python, git, Nix (for nix-instantiate), the package; runs as a non-root user.
# Build: docker build -t nixgitops .   (not built in CI: the development machines have no Docker engine)
FROM python:3.11-slim-bookworm

RUN apt-get update \
 && apt-get install -y --no-install-recommends git openssh-client gnupg nix-bin ca-certificates \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY pyproject.toml README.md ./
COPY controller ./controller
COPY webhooks ./webhooks
RUN pip install --no-cache-dir . && rm -rf /src

# Evaluation needs no Nix daemon and writes nothing to the store (see docs/decisions.md).
ENV NIXGITOPS_NIX_STORE=dummy:// \
    HOME=/tmp \
    PYTHONUNBUFFERED=1

RUN useradd --uid 10001 --user-group --home-dir /var/lib/nixgitops --create-home nixgitops
USER 10001:10001
WORKDIR /var/lib/nixgitops
EXPOSE 8080
ENTRYPOINT ["nixgitops"]
CMD ["run", "--config", "/etc/nixgitops/config/nixgitops.toml"]
