//! Helpers for the catalog tests: a throwaway Postgres with a superuser client for setup,
//! and a `Catalog` whose side connections go to its `app` database.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use pgmemo::catalog::{Catalog, CatalogConfig, Oid, RelName, Resolved};
use tokio_postgres::Client;

use crate::common::{PgOptions, PgServer, pg_config};

pub const DB: &str = "app";

pub struct Fixture {
    pub pg: PgServer,
    pub sql: Client,
    pub catalog: Arc<Catalog>,
}

impl Fixture {
    pub async fn start() -> Fixture {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tune: impl FnOnce(&mut CatalogConfig)) -> Fixture {
        let pg = PgServer::start(PgOptions::default());
        let sql = pg.connect("postgres", "", DB).await;
        let mut config = CatalogConfig::new(pg_config(pg.addr(), "postgres", "", DB));
        config.connect_timeout = Duration::from_secs(10);
        tune(&mut config);
        let catalog = Arc::new(Catalog::new(config));
        Fixture { pg, sql, catalog }
    }

    pub async fn exec(&self, sql: &str) {
        self.sql
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    }

    /// The OID of a relation named as in SQL (`schema.name`).
    pub async fn oid(&self, name: &str) -> Oid {
        self.sql
            .query_one("SELECT $1::text::regclass::oid", &[&name])
            .await
            .unwrap_or_else(|e| panic!("{name}: {e:?}"))
            .get(0)
    }

    pub async fn func_oid(&self, signature: &str) -> Oid {
        self.sql
            .query_one("SELECT $1::text::regprocedure::oid", &[&signature])
            .await
            .unwrap_or_else(|e| panic!("{signature}: {e:?}"))
            .get(0)
    }

    /// Resolves one name (`name` or `schema.name`) as `user` under `path`.
    pub async fn resolve_as(&self, name: &str, path: &str, user: &str) -> Resolved {
        let list = self
            .catalog
            .resolve(DB, &[rel(name)], path, user)
            .await
            .unwrap_or_else(|e| panic!("resolve {name} under {path:?}: {e}"));
        list[0].clone()
    }

    pub async fn resolve(&self, name: &str, path: &str) -> Resolved {
        self.resolve_as(name, path, "postgres").await
    }

    /// The OID `name` resolves to (panics if it does not resolve).
    pub async fn resolved_oid(&self, name: &str, path: &str) -> Oid {
        match self.resolve(name, path).await.relation {
            Some(facts) => facts.oid,
            None => panic!("{name} did not resolve under {path:?}"),
        }
    }
}

/// `"s.t"` or `"t"` as a `RelName`.
pub fn rel(name: &str) -> RelName {
    match name.split_once('.') {
        Some((schema, name)) => RelName::new(Some(schema), name),
        None => RelName::new(None, name),
    }
}

pub fn sorted(mut list: Vec<Oid>) -> Vec<Oid> {
    list.sort_unstable();
    list
}
