# dns-guard image: build with the same Debian 12 packages and cargo command as
# scripts/setup.sh (integration/test_manifests.py checks they stay the same),
# then ship only the binary: the XDP object is compiled into it.
#
#   docker build -t ghcr.io/dns-guard/dns-guard:0.1.0 .

# ---- build: clang compiles the BPF C, bindgen needs libclang -----------------
FROM rust:1.95-bookworm AS build
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      build-essential pkg-config clang llvm libclang-dev libbpf-dev bpftool linux-libc-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release \
 && cp target/release/dns-guard /dns-guard

# ---- runtime: glibc and libgcc only, no shell, no package manager ------------
FROM gcr.io/distroless/cc-debian12
COPY --from=build /dns-guard /usr/local/bin/dns-guard
# uid 0 with every capability dropped except BPF, NET_ADMIN and PERFMON (see
# manifests/dns-guard/sidecar.yaml): Kubernetes gives added capabilities only to uid 0.
USER 0
EXPOSE 9253
ENTRYPOINT ["/usr/local/bin/dns-guard"]
CMD ["run", "--config", "/etc/dns-guard/guard.yaml"]
