# syntax=docker/dockerfile:1
#
# handoff: multi-stage build. The builder compiles the dependencies once against stub sources (cached as long
# as Cargo.toml and Cargo.lock do not change), then the real sources. The runtime image holds the binary, CA
# certificates and a non-root user; port 8080; data dir /var/lib/handoff (embedded store, unused in Azure).
#
# Build:  docker build -t handoff .        (azd builds it on `azd deploy`)
# Run:    docker run --rm -p 8080:8080 handoff

ARG RUST_VERSION=1.95.0
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS builder

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# cmake: aws-lc-sys (rustls' crypto provider) may need it to build its C sources.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends cmake \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /build

# 1. Dependencies only. Stub every target declared in Cargo.toml ([lib], [[bin]], [[bench]], [[test]],
#    [[example]]) so the manifest loads even though benches/ and tests/ are not copied, then build.
COPY Cargo.toml Cargo.lock ./
RUN set -eux; \
    awk ' \
      function flush() { \
        if (kind == "") return; \
        if (path == "" && name != "") { \
          if (kind == "bench") path = "benches/" name ".rs"; \
          else if (kind == "test") path = "tests/" name ".rs"; \
          else if (kind == "example") path = "examples/" name ".rs"; \
        } \
        if (path != "") print path; \
      } \
      /^\[/ { flush(); kind = ""; name = ""; path = ""; \
              if ($0 ~ /^\[lib\]/) kind = "lib"; \
              else if ($0 ~ /^\[\[(bin|bench|test|example)\]\]/) { kind = $0; gsub(/[][ ]/, "", kind) } \
              next } \
      kind != "" && /^name *=/ { v = $0; sub(/^name *= *"/, "", v); sub(/".*/, "", v); name = v } \
      kind != "" && /^path *=/ { v = $0; sub(/^path *= *"/, "", v); sub(/".*/, "", v); path = v } \
      END { flush() }' Cargo.toml > /tmp/targets; \
    printf 'src/main.rs\nsrc/lib.rs\n' >> /tmp/targets; \
    sort -u /tmp/targets | while read -r target; do \
      mkdir -p "$(dirname "$target")"; \
      echo 'fn main() {}' > "$target"; \
    done; \
    cargo build --release --locked --bin handoff; \
    rm -rf src

# 2. The real sources. Remove the stub build of this crate so cargo cannot reuse it (mtimes of copied files
#    may be older than the stub artefacts).
COPY src ./src
RUN set -eux; \
    rm -rf target/release/.fingerprint/handoff-* target/release/deps/handoff-* target/release/deps/libhandoff-*; \
    touch src/main.rs src/lib.rs; \
    cargo build --release --locked --bin handoff; \
    cp target/release/handoff /usr/local/bin/handoff

FROM debian:${DEBIAN_RELEASE}-slim AS runtime

# Debian's security updates replace package versions within a release, so versions are not pinned here;
# the base image tag pins the release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 handoff \
    && useradd --system --uid 10001 --gid handoff --home-dir /var/lib/handoff --shell /usr/sbin/nologin handoff \
    && mkdir -p /var/lib/handoff \
    && chown handoff:handoff /var/lib/handoff

COPY --from=builder /usr/local/bin/handoff /usr/local/bin/handoff

ENV HANDOFF_DATA_DIR=/var/lib/handoff \
    PORT=8080

USER 10001:10001
WORKDIR /var/lib/handoff
EXPOSE 8080

# No HEALTHCHECK: the image has no HTTP client, and Azure Container Apps probes /healthz and /readyz itself.
ENTRYPOINT ["/usr/local/bin/handoff"]
CMD ["serve"]
