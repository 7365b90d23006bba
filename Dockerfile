# Builds the ingest and worker binaries in one image (compose runs each as its own service;
# Kubernetes, one StatefulSet and a Deployment per role).

FROM rust:1-bookworm AS build
# librdkafka is built from source by rdkafka-sys: it needs a C toolchain, make and zlib.
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential zlib1g-dev pkg-config \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src

# The dependencies first, librdkafka among them, in a layer of their own: the manifests and an
# empty crate for each member of the workspace. Only a change of a Cargo.toml or Cargo.lock
# builds them again; a change of our code starts below.
COPY Cargo.toml Cargo.lock ./
COPY ingest/Cargo.toml ingest/
COPY worker/Cargo.toml worker/
COPY wechat/Cargo.toml wechat/
COPY schemas/Cargo.toml schemas/
COPY store/Cargo.toml store/
COPY ops/Cargo.toml ops/
COPY testkit/Cargo.toml testkit/
COPY wxload/Cargo.toml wxload/
COPY deploy/docker/stub-crates.sh /usr/local/bin/
RUN sh /usr/local/bin/stub-crates.sh \
    && cargo build --release --locked --bin ingest --bin worker \
    && rm -rf ingest/src worker/src wechat/src wechat/benches schemas/src store/src ops/src testkit/src wxload/src

# Our code. Its files keep the build context's times, which may be older than the empty
# crates' build: touched, so cargo builds them again.
COPY . .
RUN find . -path ./target -prune -o -name '*.rs' -exec touch {} + \
    && cargo build --release --locked --bin ingest --bin worker

FROM debian:bookworm-slim
# No network tool: the HEALTHCHECK speaks HTTP with bash alone (wxpipe-healthcheck).
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/wxpipe wxpipe \
    && mkdir -p /var/lib/wxpipe/spool /etc/wxpipe && chown -R wxpipe /var/lib/wxpipe
COPY --from=build /src/target/release/ingest /src/target/release/worker /usr/local/bin/
COPY deploy/docker/wxpipe-healthcheck /usr/local/bin/
USER wxpipe
WORKDIR /var/lib/wxpipe
ENV LOG_FORMAT=json
# 8080: WeChat's pushes (ingest). 9090: the ingress's admin port, 9091: a worker's
# (/healthz, /readyz, /metrics): keep those two off the internet.
EXPOSE 8080 9090 9091
# Alive: /healthz on the admin port of whichever binary runs (see wxpipe-healthcheck).
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["/usr/local/bin/wxpipe-healthcheck"]
CMD ["ingest"]
