//! The usual fixture: a throwaway Postgres with pgmemo in front of it, and superuser
//! connections to the `app` database both directly and through the proxy, so a test
//! can compare what a client sees each way.

use tokio_postgres::Client;

use super::{PgOptions, PgServer, Proxy, ProxyArgs, SUPERUSER};

/// The database the fixture's connections use.
pub const APP_DB: &str = "app";

pub struct Stack {
    // The proxy is dropped (killed) before its upstream.
    pub proxy: Proxy,
    pub pg: PgServer,
}

impl Stack {
    /// Default Postgres, pgmemo with no config file pointed at it.
    pub fn start() -> Stack {
        Stack::start_with(PgOptions::default(), |args| args)
    }

    /// Custom Postgres options; `proxy_args` may add config, env or flags.
    pub fn start_with(opts: PgOptions, proxy_args: impl FnOnce(ProxyArgs) -> ProxyArgs) -> Stack {
        let pg = PgServer::start(opts);
        let proxy = Proxy::start(proxy_args(ProxyArgs::new(pg.url(SUPERUSER, "postgres"))));
        Stack { proxy, pg }
    }

    /// A direct superuser connection to `app`.
    pub async fn direct(&self) -> Client {
        self.pg.connect(SUPERUSER, "", APP_DB).await
    }

    /// A superuser connection to `app` through pgmemo.
    pub async fn proxied(&self) -> Client {
        self.proxy.connect(SUPERUSER, "", APP_DB).await
    }
}
