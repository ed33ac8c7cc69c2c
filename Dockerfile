# tsunagu container image: built with the ScyllaDB backend (`--features scylla`) and the
# default prompts (spoken by espeak-ng at build time, compiled into the binary), run as
# a non-root user on debian:bookworm-slim. Used by deploy/compose.yaml.
#
#   docker build -t tsunagu .
#   docker run --rm tsunagu check-config /etc/tsunagu/node.toml

FROM rust:1.89-bookworm AS build
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends espeak-ng \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p tsunagu --features scylla \
    && install -m 0755 target/release/tsunagu /usr/local/bin/tsunagu

FROM debian:bookworm-slim
# A dedicated user; the data directory is its own (0700), as the node expects.
RUN groupadd --system --gid 10001 tsunagu \
    && useradd --system --uid 10001 --gid tsunagu --home-dir /var/lib/tsunagu \
       --shell /usr/sbin/nologin tsunagu \
    && install -d -m 0700 -o tsunagu -g tsunagu /var/lib/tsunagu \
    && install -d -m 0755 /etc/tsunagu
COPY --from=build /usr/local/bin/tsunagu /usr/local/bin/tsunagu
USER tsunagu:tsunagu
WORKDIR /var/lib/tsunagu
VOLUME ["/var/lib/tsunagu"]
# SIP (UDP and TCP), the API, the cluster's mutual-TLS port. RTP uses media.ports.
EXPOSE 5060/udp 5060/tcp 8080/tcp 7000/tcp
# SIGTERM drains the node (node.drain_seconds); give `docker stop` longer than that.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/tsunagu"]
CMD ["serve", "--config", "/etc/tsunagu/node.toml"]
