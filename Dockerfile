# One image for every component: `docker run bookstore-image books` (the component is the command).
# docs/DEPLOY.md. Build: docker build -t bookstore .
#
# Builder: compile the dependencies first from the manifests alone (a layer cached until a
# Cargo.toml/Cargo.lock changes), then the sources.
FROM rust:1.95-bookworm AS builder
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin bookstore \
 && cp target/release/bookstore /usr/local/bin/bookstore

# Runtime: Debian slim plus the PostgreSQL 15 client tools `bookstore backup`/`restore` call
# (pg_dump, pg_restore, psql): bookworm ships PostgreSQL 15, the version of the cluster.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates postgresql-client-15 curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/bookstore --create-home bookstore
COPY --from=builder /usr/local/bin/bookstore /usr/local/bin/bookstore
COPY deploy/postgres/accounts.toml /etc/bookstore/accounts.toml
USER bookstore
WORKDIR /var/lib/bookstore
# Containers listen on every interface; the registration then advertises this container's address
# (registry.advertise_address overrides it).
ENV BOOKSTORE_HTTP__LISTEN=0.0.0.0:8080 \
    PATH="/usr/lib/postgresql/15/bin:${PATH}"
EXPOSE 8080
ENTRYPOINT ["bookstore"]
CMD ["--help"]
