# syntax=docker/dockerfile:1
# Images of the s3files-csi driver.
#   docker build --target production -t s3files-csi-driver .   # EKS: our binary + amazon-efs-utils
#   docker build --target local -t s3files-csi-driver-local .   # kind/CI: our binary as mount.s3files
#
# TODO(#7): pin the base images by digest: run hack/pin-images.sh where a registry is reachable
# (it rewrites each ARG *_IMAGE to tag@sha256:...) and commit the result. The machines this was
# written on reach no container registry, so the tags below are not pinned yet.
ARG RUST_IMAGE=docker.io/library/rust:1.95-slim-bookworm
ARG BASE_IMAGE=docker.io/library/debian:bookworm-slim
# amazon-efs-utils release whose source is built (3.x: mount.s3files, efs-proxy).
ARG EFS_UTILS_VERSION=v3.2.0

FROM ${RUST_IMAGE} AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential pkg-config \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto proto
COPY src src
COPY benches benches
COPY tests tests
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin s3files-csi \
 && install -D target/release/s3files-csi /out/s3files-csi

# amazon-efs-utils built from its published source into a .deb, as the Go EFS driver's image
# does (its efs-proxy is Rust; the helper is Python). build-deb.sh runs under `set -ex` and
# writes the package's control file with envsubst (gettext-base); aws-lc needs cmake, perl, Go.
FROM ${RUST_IMAGE} AS efs-utils
ARG EFS_UTILS_VERSION
RUN apt-get update \
 && apt-get install -y --no-install-recommends git binutils build-essential pkg-config \
      libssl-dev ca-certificates golang-go cmake perl gettext-base \
 && rm -rf /var/lib/apt/lists/*
RUN git clone --depth 1 --branch "${EFS_UTILS_VERSION}" https://github.com/aws/efs-utils /efs-utils
WORKDIR /efs-utils
RUN ./build-deb.sh && cp build/amazon-efs-utils*.deb /amazon-efs-utils.deb

# The production image. botocore is what efs-utils' CloudWatch logging imports. The package's
# /etc/amazon/efs (configs, CA bundle) is kept aside: on a node that directory is a host path
# of ours (the TLS private key must survive restarts), and the node plugin fills it from this
# copy plus the chart's settings at start (--efs-utils-static-dir).
FROM ${BASE_IMAGE} AS production
COPY --from=efs-utils /amazon-efs-utils.deb /tmp/
RUN apt-get update \
 && apt-get install -y --no-install-recommends /tmp/amazon-efs-utils.deb ca-certificates \
      python3-botocore \
 && rm -rf /var/lib/apt/lists/* /tmp/amazon-efs-utils.deb \
 && mkdir -p /usr/share/s3files-csi \
 && cp -a /etc/amazon/efs /usr/share/s3files-csi/efs-utils-static
COPY --from=build /out/s3files-csi /usr/local/bin/s3files-csi
ENTRYPOINT ["/usr/local/bin/s3files-csi"]

# The local image: no AWS helper; this binary answers `mount -t s3files` itself (FUSE over an
# S3-compatible store, through the emulator).
FROM ${BASE_IMAGE} AS local
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates fuse3 mount \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/s3files-csi /usr/local/bin/s3files-csi
RUN ln -s /usr/local/bin/s3files-csi /sbin/mount.s3files
ENTRYPOINT ["/usr/local/bin/s3files-csi"]
