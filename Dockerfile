# syntax=docker/dockerfile:1
# osprov controller image: a release build with every adapter (the libvirt one links libvirt) in a
# Rust image, copied into a slim Debian base with only libvirt's client library added, running as
# the unprivileged user 65532 (the chart's runAsUser).
#   docker build -t osprov:0.1.0 .
# Not built in this project's CI (its machines have no container engine); see docs/helm.md.

ARG RUST_VERSION=1.89

FROM rust:${RUST_VERSION}-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends libvirt-dev pkg-config \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY crates ./crates
COPY crds ./crds
# Cache the registry and the target directory between builds (BuildKit).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --features libvirt --bin osprov \
    && install -D -m 0755 target/release/osprov /out/osprov

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends libvirt0 ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/osprov /usr/local/bin/osprov
USER 65532:65532
EXPOSE 9090
ENTRYPOINT ["/usr/local/bin/osprov"]
CMD ["controller"]
