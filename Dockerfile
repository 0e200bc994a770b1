# clusterdns: a static-ish release binary on a small base image.
# Build:  docker build -t clusterdns .
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY src ./src
COPY manifests ./manifests
RUN cargo build --release --locked && strip target/release/clusterdns
# Port 53 as a non-root user: a file capability, as CoreDNS's image does (COPY keeps it).
RUN apt-get update && apt-get install -y --no-install-recommends libcap2-bin \
    && setcap cap_net_bind_service=+ep target/release/clusterdns

# distroless/cc has glibc and CA certificates (the API client uses TLS) and nothing else.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/clusterdns /clusterdns
# 53 needs CAP_NET_BIND_SERVICE (granted in the Deployment); 9153 metrics, 8080 health, 8181 ready.
EXPOSE 53/udp 53/tcp 9153/tcp 8080/tcp 8181/tcp
ENTRYPOINT ["/clusterdns"]
CMD ["serve", "--corefile", "/etc/coredns/Corefile"]
