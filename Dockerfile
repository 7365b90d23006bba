# Builds the ingest and worker binaries in one image (compose runs each as its own service).

FROM rust:1-bookworm AS build
# librdkafka is built from source by rdkafka-sys: it needs a C toolchain, make and zlib.
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential zlib1g-dev pkg-config \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin ingest --bin worker

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/wxpipe wxpipe \
    && mkdir -p /var/lib/wxpipe/spool && chown -R wxpipe /var/lib/wxpipe
COPY --from=build /src/target/release/ingest /src/target/release/worker /usr/local/bin/
USER wxpipe
WORKDIR /var/lib/wxpipe
ENV LOG_FORMAT=json
EXPOSE 8080 9091
CMD ["ingest"]
