# The Taimatsu operator (taimatsu-operator). Build from the repository root:
#
#   docker build -f images/operator.Dockerfile -t registry.local/taimatsu/operator:0.1.0 .
#
# No "# syntax=" line on purpose: it makes BuildKit pull a Dockerfile frontend image from
# Docker Hub, which an air-gapped builder cannot reach. The frontend built into Docker
# >= 23 (and buildah/podman) supports everything used here. Base images and the crates.io
# mirror are build arguments and a build secret: see images/README.md.

ARG RUST_IMAGE=rust:1.95-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY . .
# Cache mounts keep the registry and target/ between builds without putting them in a
# layer. The optional secret "cargo-config" is a Cargo config file (crates.io source
# replacement for an in-house mirror); it is read from a tmpfs and never stored in the
# image. --locked: exactly the dependency versions in Cargo.lock, or the build fails.
RUN --mount=type=cache,id=taimatsu-cargo-registry,target=/usr/local/cargo/registry \
    --mount=type=cache,id=taimatsu-operator-target,target=/src/target \
    --mount=type=secret,id=cargo-config,target=/run/secrets/cargo-config.toml \
    set -eu; \
    set --; \
    if [ -s /run/secrets/cargo-config.toml ]; then set -- --config /run/secrets/cargo-config.toml; fi; \
    cargo "$@" build --release --locked -p taimatsu-operator; \
    install -D -m 0755 target/release/taimatsu-operator /out/taimatsu-operator; \
    mkdir -p /out/var/lib/taimatsu/audit

# Debian 12 like the builder, so the glibc the binary was linked against is the one it
# runs on. Nothing but the binary: no shell, no package manager.
FROM ${RUNTIME_IMAGE}
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="taimatsu-operator" \
      org.opencontainers.image.description="Reconciles ModelDeployments into inference-worker workloads" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}"
COPY --from=build /out/taimatsu-operator /usr/local/bin/taimatsu-operator
# The one file the operator writes is its hash-chained control-plane audit log
# (--audit-log, default /var/lib/taimatsu/audit/control-plane.jsonl). In a cluster that
# directory is a mounted persistent volume and the root filesystem stays read-only; the
# empty directory here, owned by the runtime user, only serves `docker run` without one.
COPY --from=build --chown=65532:65532 /out/var/lib/taimatsu /var/lib/taimatsu
# distroless "nonroot" (65532), numerically so that runAsNonRoot can verify it.
USER 65532:65532
# /healthz, /readyz and /metrics (--http-addr, default 0.0.0.0:8080).
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/taimatsu-operator"]
