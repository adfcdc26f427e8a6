# syntax=docker/dockerfile:1
# pgmemo container image: builds the release binary, then ships it alone on a slim Debian.
#
#   docker build -t pgmemo .
#   docker run --rm -p 6432:6432 -p 9187:9187 -e PGMEMO_ADMIN_TOKEN=$(openssl rand -hex 16) \
#     pgmemo --upstream postgres://db.example:5432
#
# The admin address listens on all interfaces in the container, so pgmemo refuses to start
# without an admin token (PGMEMO_ADMIN_TOKEN): every POST to it must carry the token.
#
# Note: command-line flags beat environment variables, so when overriding the listen
# addresses through PGMEMO_LISTEN / PGMEMO_ADMIN_LISTEN also replace the default CMD.

FROM rust:1-bookworm AS builder
WORKDIR /build
COPY . .
# The registry and target directories are BuildKit cache mounts: dependencies are downloaded
# and compiled once and reused by later builds, whichever source file changed. (A stub-source
# "deps only" layer would break as soon as Cargo.toml names explicit bench or test targets.)
# The binary is copied out in the same step because the cache mount is not part of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/build/target \
    cargo build --release --locked --bin pgmemo \
    && install -m 0755 target/release/pgmemo /usr/local/bin/pgmemo

FROM debian:bookworm-slim
# ca-certificates for upstream TLS (sslmode=verify-*); curl for the health check. Not pinned
# to exact versions: bookworm's security updates should flow in on rebuild.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 pgmemo \
    && useradd --system --uid 10001 --gid pgmemo --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin pgmemo
COPY --from=builder /usr/local/bin/pgmemo /usr/local/bin/pgmemo
# Numeric so orchestrators can verify "runAsNonRoot" without reading /etc/passwd.
USER 10001:10001
EXPOSE 6432 9187
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
    CMD ["curl", "-fsS", "http://127.0.0.1:9187/readyz"]
ENTRYPOINT ["pgmemo"]
CMD ["--listen", "0.0.0.0:6432", "--admin-listen", "0.0.0.0:9187"]
