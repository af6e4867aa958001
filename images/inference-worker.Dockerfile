# The Taimatsu inference worker (binary `inference-worker`, package
# taimatsu-inference-worker) with its built-in CPU engine: llama.cpp for GGUF text
# models, candle for embeddings. The operator runs this image twice per pod: as the
# `fetch` init step and as the `serve` container. Build from the repository root:
#
#   docker build -f images/inference-worker.Dockerfile -t registry.local/taimatsu/inference-worker:0.1.0 .
#
# CPU baseline: x86-64-v3 by default (AVX2, FMA, F16C, BMI2: Intel Haswell / AMD Zen and
# later). Override with --build-arg TARGET_CPU=x86-64-v2 for older or AVX-less (some
# virtualised) CPUs, at a large cost in llama.cpp speed. The image is linux/amd64 only.
# Why and how: images/README.md. GPU serving (vLLM) is images/inference-worker-vllm.Dockerfile,
# which reuses the binary built here.
#
# No "# syntax=" line: see images/operator.Dockerfile.

ARG RUST_IMAGE=rust:1.95-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM ${RUST_IMAGE} AS build
ARG TARGETARCH
ARG TARGET_CPU=x86-64-v3
# Optional: an in-house Debian mirror replacing http://deb.debian.org/debian (and
# .../debian-security) for the compilers below, e.g. https://apt.internal.example/debian.
ARG DEBIAN_MIRROR=
# llama-cpp-sys-2 compiles llama.cpp's C++ with CMake and generates its bindings with
# bindgen, which needs libclang. The Rust image already has gcc/g++ and make.
RUN set -eu; \
    if [ -n "$DEBIAN_MIRROR" ]; then \
      sed -i "s|http://deb.debian.org/debian|${DEBIAN_MIRROR}|g" /etc/apt/sources.list.d/debian.sources; \
    fi; \
    apt-get update -qq; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends cmake clang libclang-dev; \
    rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# -C target-cpu sets the baseline for the Rust code and, through llama-cpp-sys-2's build
# script, for llama.cpp: it turns GGML_NATIVE off (no tuning for whatever CPU the build
# machine has), passes -march=$TARGET_CPU to the C/C++ compiler and enables the ggml
# kernels for exactly the features the target implies (GGML_AVX, _AVX2, _FMA, _F16C,
# _BMI2, _SSE42 for x86-64-v3). Without it the baseline is plain x86-64 (SSE2) and
# llama.cpp has no AVX kernels at all.
# --target is explicit so that these flags apply to the shipped binary only, not to build
# scripts and proc macros, which run on the build machine whatever its CPU.
RUN --mount=type=cache,id=taimatsu-cargo-registry,target=/usr/local/cargo/registry \
    --mount=type=cache,id=taimatsu-worker-target,target=/src/target \
    --mount=type=secret,id=cargo-config,target=/run/secrets/cargo-config.toml \
    set -eu; \
    if [ "${TARGETARCH:-amd64}" != amd64 ]; then \
      echo "this image is built for linux/amd64 only (TARGET_CPU=${TARGET_CPU} is an x86-64 level)" >&2; exit 1; \
    fi; \
    set --; \
    if [ -s /run/secrets/cargo-config.toml ]; then set -- --config /run/secrets/cargo-config.toml; fi; \
    RUSTFLAGS="-C target-cpu=${TARGET_CPU}" \
      cargo "$@" build --release --locked --target x86_64-unknown-linux-gnu -p taimatsu-inference-worker; \
    install -D -m 0755 target/x86_64-unknown-linux-gnu/release/inference-worker /out/inference-worker

# Debian 12 like the builder. distroless/cc has exactly the shared libraries the worker
# links: glibc, libstdc++ and libgcc_s (llama.cpp is C++) and libgomp (its OpenMP
# threads); plus CA certificates for the fetch step's HTTPS. No shell, no package manager.
FROM ${RUNTIME_IMAGE}
ARG VERSION=0.1.0
ARG TARGET_CPU=x86-64-v3
LABEL org.opencontainers.image.title="taimatsu-inference-worker" \
      org.opencontainers.image.description="OpenAI-compatible inference worker: verified models, request audit, built-in CPU engine" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      dev.taimatsu.cpu-baseline="${TARGET_CPU}"
COPY --from=build /out/inference-worker /usr/local/bin/inference-worker
# The operator's pods run it as 65532 with a read-only root filesystem; it writes only to
# the volumes the operator mounts (/models for the fetch step, /tmp), and its termination
# message to /dev/termination-log.
USER 65532:65532
# OpenAI API (--listen) and Prometheus metrics (--metrics-listen).
EXPOSE 8000 9090
ENTRYPOINT ["/usr/local/bin/inference-worker"]
