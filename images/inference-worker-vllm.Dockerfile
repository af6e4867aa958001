# The inference worker for GPU serving: vLLM's image with the worker binary as its
# entrypoint. The worker starts `vllm serve` inside the container on 127.0.0.1:8001,
# supervises it, and is what clients and the operator talk to (API keys, limits, request
# audit, verified weights). It still carries the built-in CPU engine.
#
# The binary is copied from the CPU image built by images/inference-worker.Dockerfile, so
# both images carry the very same, once-built and once-reviewed executable:
#
#   docker build -f images/inference-worker.Dockerfile -t registry.local/taimatsu/inference-worker:0.1.0 .
#   docker build -f images/inference-worker-vllm.Dockerfile \
#     --build-arg WORKER_IMAGE=registry.local/taimatsu/inference-worker:0.1.0 \
#     -t registry.local/taimatsu/inference-worker-vllm:0.1.0 .
#
# Use it for engine.type vllm deployments, as the operator's --worker-image or per
# ModelDeployment in spec.engine.image. It is many GB (CUDA, PyTorch, vLLM); CPU-only
# deployments are better served by the small image.
#
# No "# syntax=" line: see images/operator.Dockerfile.

ARG WORKER_IMAGE=registry.local/taimatsu/inference-worker:0.1.0
ARG VLLM_IMAGE=vllm/vllm-openai:v0.11.0

FROM ${WORKER_IMAGE} AS worker

FROM ${VLLM_IMAGE}
ARG VERSION=0.1.0
# Optional: an in-house Ubuntu mirror replacing http://archive.ubuntu.com/ubuntu and
# http://security.ubuntu.com/ubuntu, used only if libgomp1 must be installed below.
ARG UBUNTU_MIRROR=
LABEL org.opencontainers.image.title="taimatsu-inference-worker-vllm" \
      org.opencontainers.image.description="Taimatsu inference worker supervising vLLM" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}"
COPY --from=worker /usr/local/bin/inference-worker /usr/local/bin/inference-worker
# The binary was linked on Debian 12; vLLM's image is Ubuntu (22.04, glibc 2.35, when
# this was written). A build of this tree needs at most GLIBC_2.34 and GLIBCXX_3.4.29
# (objdump -T), and libgomp for llama.cpp's threads. Install libgomp1 if the base lacks it, then run the binary once:
# if a later toolchain or base ever breaks that, the image build fails here rather than
# the pod at start.
RUN set -eu; \
    if ! ldconfig -p | grep -q 'libgomp\.so\.1 '; then \
      if [ -n "$UBUNTU_MIRROR" ]; then \
        for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.sources; do \
          [ -f "$f" ] || continue; \
          sed -i -e "s|http://archive.ubuntu.com/ubuntu|${UBUNTU_MIRROR}|g" \
                 -e "s|http://security.ubuntu.com/ubuntu|${UBUNTU_MIRROR}|g" "$f"; \
        done; \
      fi; \
      apt-get update -qq; \
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends libgomp1; \
      rm -rf /var/lib/apt/lists/*; \
    fi; \
    /usr/local/bin/inference-worker --version
# The operator runs worker pods as 65532 with a read-only root filesystem and a writable
# /tmp (emptyDir); vLLM, PyTorch, Triton and Hugging Face libraries write caches under
# $HOME by default, so everything points into /tmp. The weights are the verified files
# in /models: nothing may be looked up on, or reported to, a public hub.
ENV HOME=/tmp \
    XDG_CACHE_HOME=/tmp/.cache \
    XDG_CONFIG_HOME=/tmp/.config \
    VLLM_CACHE_ROOT=/tmp/vllm \
    VLLM_CONFIG_ROOT=/tmp/vllm-config \
    TRITON_CACHE_DIR=/tmp/triton \
    TORCHINDUCTOR_CACHE_DIR=/tmp/torchinductor \
    HF_HOME=/tmp/huggingface \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    VLLM_NO_USAGE_STATS=1 \
    DO_NOT_TRACK=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 65532:65532
EXPOSE 8000 9090
# Replaces vLLM's own ENTRYPOINT (vllm serve): the operator passes `fetch ...` or
# `serve --engine=vllm ... -- <vLLM flags>` as arguments.
ENTRYPOINT ["/usr/local/bin/inference-worker"]
CMD []
