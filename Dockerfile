# syntax=docker/dockerfile:1
# clusterdns: one statically linked binary in an image with nothing else (21 MB, 8 MB compressed).
#
#   docker build -t REGISTRY/clusterdns:TAG .          # or: podman build / buildah bud
#   docker buildx build --platform linux/amd64,linux/arm64 -t REGISTRY/clusterdns:TAG --push .
#
# then set the image in your overlay (README, "Deploying"). CI builds the same layout without a
# registry (.ci/build-image) and runs it from the image's root filesystem (tests/image.rs).

FROM rust:1-bookworm AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends libcap2-bin ca-certificates \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY src ./src
COPY benches ./benches
# The linker wrapper and the functions it places first (.ci/build-image says why).
COPY build ./build
# The embedded demo cluster is compiled in.
COPY manifests/examples/demo-cluster.yaml ./manifests/examples/
# glibc linked statically: the final image needs no libc. The build runs on the image's own
# platform (buildx emulates), so `uname -m` names the target (x86_64 or aarch64 for Graviton).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    target="$(uname -m)-unknown-linux-gnu" \
    # getrandom(2) directly: a static binary cannot look the libc function up (dlsym).
    # v0 mangling and build/link-ordered: the code clusterdns runs placed together, so each
    # process keeps less of it resident (lld links only: x86_64; elsewhere it links as usual).
    # Profile `image`, as CI's (the list is profiled from it): laid out, it is as fast as
    # `release` (thin LTO) and keeps 3-4 MiB less resident (bench/RESULTS.md, session 7).
    && RUSTFLAGS="-C target-feature=+crt-static --cfg getrandom_backend=\"linux_getrandom\" -C link-arg=-Wl,-z,pack-relative-relocs -C symbol-mangling-version=v0 -C linker=/src/build/link-ordered" \
       cargo build --locked --profile image --target "$target" --bin clusterdns \
    && mkdir -p /rootfs/etc/ssl/certs /rootfs/etc/coredns \
    && cp "target/$target/image/clusterdns" /rootfs/clusterdns \
    && strip /rootfs/clusterdns \
    # Port 53 as a non-root user: a file capability, as CoreDNS's image does (COPY keeps it);
    # the Deployment drops every other capability.
    && setcap cap_net_bind_service=+ep /rootfs/clusterdns \
    && cp /etc/ssl/certs/ca-certificates.crt /rootfs/etc/ssl/certs/ \
    && printf 'root:x:0:0:root:/:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/:/sbin/nologin\n' >/rootfs/etc/passwd \
    && printf 'root:x:0:\nnonroot:x:65532:\n' >/rootfs/etc/group

# Nothing but the binary, CA certificates (for `forward . tls://...`) and the user: no shell,
# no package manager, nothing to patch.
FROM scratch
COPY --from=build /rootfs/ /
USER 65532:65532
# 53 DNS (needs the file capability above); 9153 metrics, 8080 health, 8181 ready.
EXPOSE 53/udp 53/tcp 9153/tcp 8080/tcp 8181/tcp
ENTRYPOINT ["/clusterdns"]
CMD ["serve", "--corefile", "/etc/coredns/Corefile"]
