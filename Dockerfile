# syntax=docker/dockerfile:1.7
# One image, both binaries: /usr/local/bin/seshn-segment-operator and
# /usr/local/bin/seshn-segment-forwarder. The Helm chart runs the operator from it, and the
# operator runs forwarder pods from the same image by default (chart value forwarderImage).
#
#   docker build -t ghcr.io/seshn-segment/seshn-segment:0.1.0 .
#
# Runtime: distroless cc (glibc + libgcc, CA certificates, no shell, no package manager),
# user nonroot (65532:65532), matching the chart's runAsUser and readOnlyRootFilesystem.

# The toolchain the repository is built and tested with (rust-version in Cargo.toml is the minimum).
ARG RUST_VERSION=1.95

FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS builder
WORKDIR /src
# Dependencies first, so source edits do not rebuild the whole dependency tree.
COPY Cargo.toml Cargo.lock ./
COPY crates ./crates
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p operator -p forwarder \
    && mkdir -p /out \
    && cp target/release/seshn-segment-operator target/release/seshn-segment-forwarder /out/ \
    && /out/seshn-segment-operator --help >/dev/null \
    && /out/seshn-segment-forwarder --help >/dev/null

# bookworm builder + debian12 runtime: the same glibc the binaries were linked against.
FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="seshn-segment" \
      org.opencontainers.image.description="Seshn booking webhooks into Segment: Kubernetes operator and forwarder" \
      org.opencontainers.image.source="https://github.com/seshn-segment/seshn-segment" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder --chown=0:0 --chmod=0755 /out/seshn-segment-operator /out/seshn-segment-forwarder /usr/local/bin/
# Distroless "nonroot" is 65532:65532; stated numerically so runAsNonRoot can verify it.
USER 65532:65532
# The forwarder listens on 8080 inside pods; the operator serves metrics/health on 8080 too.
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/seshn-segment-operator"]
CMD ["run"]
