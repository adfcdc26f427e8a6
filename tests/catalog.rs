//! The catalog module against a throwaway PostgreSQL: name resolution under search_path
//! (schemas, "$user", USAGE, pg_temp shadowing), relation kinds and RLS, views, partition
//! and inheritance trees, FK actions, rules, triggers, function volatility, and failures
//! (unreachable server, timeouts, restarts). Poller tests live in `support/catalog_poller.rs`.

mod common;
#[path = "support/catalog_fixture.rs"]
mod fixture;
#[path = "support/catalog_poller.rs"]
mod poller;
#[path = "support/catalog_relations.rs"]
mod relations;

use std::sync::Arc;
use std::time::{Duration, Instant};

use fixture::{DB, Fixture, rel};
use pgmemo::catalog::{
    Catalog, CatalogConfig, CatalogError, FuncArgs, FuncRef, NotCacheable, Persistence, RelKind,
    Volatility,
};

#[tokio::test]
async fn same_name_in_two_schemas_follows_the_search_path() {
    let f = Fixture::start().await;
    f.exec("CREATE SCHEMA a; CREATE SCHEMA b; CREATE TABLE a.t(x int); CREATE TABLE b.t(x int);")
        .await;
    let (a, b) = (f.oid("a.t").await, f.oid("b.t").await);
    assert_eq!(f.resolved_oid("t", "a, b").await, a);
    assert_eq!(f.resolved_oid("t", "b, a").await, b);
    assert_eq!(f.resolved_oid("t", r#""B", b, a"#).await, b);
    // Qualified names ignore the path.
    assert_eq!(f.resolved_oid("a.t", "b").await, a);
    // Not on the path at all.
    assert_eq!(f.resolve("t", "public").await.relation, None);
    assert_eq!(f.resolve("nosuch.t", "a").await.relation, None);
    // Both answers side by side, in one call.
    let both = f
        .catalog
        .resolve(DB, &[rel("a.t"), rel("t")], "b", "postgres")
        .await
        .unwrap();
    let oids: Vec<_> = both
        .iter()
        .map(|r| r.relation.as_ref().unwrap().oid)
        .collect();
    assert_eq!(oids, vec![a, b]);
}

#[tokio::test]
async fn dollar_user_and_schema_usage_follow_the_current_role() {
    let f = Fixture::start().await;
    f.exec(
        "CREATE ROLE alice; CREATE ROLE bob; \
         CREATE SCHEMA alice AUTHORIZATION alice; CREATE TABLE alice.t(x int); \
         CREATE TABLE public.t(x int); \
         CREATE SCHEMA hidden; CREATE TABLE hidden.t(x int);",
    )
    .await;
    let (alice_t, public_t, hidden_t) = (
        f.oid("alice.t").await,
        f.oid("public.t").await,
        f.oid("hidden.t").await,
    );
    let path = r#""$user", public"#;
    let oid_as = |user: &'static str, path: &'static str| {
        let f = &f;
        async move { f.resolve_as("t", path, user).await.relation.map(|r| r.oid) }
    };
    assert_eq!(oid_as("alice", path).await, Some(alice_t));
    assert_eq!(oid_as("bob", path).await, Some(public_t));
    // A schema the role may not use is skipped, as PostgreSQL does.
    assert_eq!(oid_as("bob", "hidden, public").await, Some(public_t));
    assert_eq!(oid_as("postgres", "hidden, public").await, Some(hidden_t));
    f.exec("GRANT USAGE ON SCHEMA hidden TO bob").await;
    // (A new path string: the memo of the old answer is keyed by path and role.)
    assert_eq!(oid_as("bob", "hidden,public").await, Some(hidden_t));
    match f.catalog.resolve(DB, &[rel("t")], path, "nosuchrole").await {
        Err(CatalogError::UnknownRole(role)) => assert_eq!(role, "nosuchrole"),
        other => panic!("expected UnknownRole, got {other:?}"),
    }
    match f.catalog.resolve(DB, &[rel("t")], "a,,b", "bob").await {
        Err(CatalogError::SearchPath { .. }) => {}
        other => panic!("expected SearchPath error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_possible_temp_shadow_is_flagged() {
    let f = Fixture::start().await;
    f.exec("CREATE TABLE public.t(x int)").await;
    let t = f.oid("public.t").await;
    // pg_temp is searched first unless listed: any session temp table could shadow it.
    for path in [
        r#""$user", public"#,
        "pg_temp, public",
        "public, pg_catalog",
    ] {
        let r = f.resolve("t", path).await;
        assert_eq!(r.relation.map(|r| r.oid), Some(t), "{path}");
        assert!(r.temp_shadow, "{path}: temp schema comes first");
    }
    let r = f.resolve("t", "public, pg_temp").await;
    assert_eq!(r.relation.map(|r| r.oid), Some(t));
    assert!(!r.temp_shadow, "pg_temp listed after public");
    // Explicitly the session's temp schema: invisible from a side connection.
    let r = f.resolve("pg_temp.t", "public").await;
    assert!(r.relation.is_none() && r.temp_shadow);
    // Not found anywhere permanent: may be a temp relation of the session.
    let r = f.resolve("only_temp", "public").await;
    assert!(r.relation.is_none() && r.temp_shadow);
    let r = f.resolve("only_temp", "public, pg_temp").await;
    assert!(r.relation.is_none() && r.temp_shadow);
}

#[tokio::test]
async fn relation_kinds_decide_cacheability() {
    let f = Fixture::start().await;
    f.exec(
        "CREATE TABLE plain(id int); CREATE UNLOGGED TABLE unlogged(id int); \
         CREATE SEQUENCE seq; CREATE MATERIALIZED VIEW mv AS SELECT 1 AS x; \
         CREATE VIEW v AS SELECT id FROM plain; \
         CREATE TABLE parted(id int) PARTITION BY RANGE (id); \
         CREATE TYPE composite AS (a int); \
         CREATE FOREIGN DATA WRAPPER dummy; CREATE SERVER dummy_srv FOREIGN DATA WRAPPER dummy; \
         CREATE FOREIGN TABLE foreign_t(id int) SERVER dummy_srv;",
    )
    .await;
    // A temp table of another session: visible through its pg_temp_N schema name.
    let session = f.pg.connect("postgres", "", DB).await;
    session
        .batch_execute("CREATE TEMP TABLE tmp(id int)")
        .await
        .unwrap();
    let temp_schema: String = session
        .query_one("SELECT pg_my_temp_schema()::regnamespace::text", &[])
        .await
        .unwrap()
        .get(0);

    let path = "public";
    let facts = |name: String| {
        let f = &f;
        async move {
            f.resolve(&name, path)
                .await
                .relation
                .unwrap_or_else(|| panic!("{name} did not resolve"))
        }
    };
    let plain = facts("plain".into()).await;
    assert_eq!(
        (plain.kind, plain.persistence),
        (RelKind::Ordinary, Persistence::Permanent)
    );
    assert!(!plain.system && plain.cacheable_kind().is_ok());
    assert_eq!(facts("parted".into()).await.kind, RelKind::Partitioned);
    assert!(facts("parted".into()).await.cacheable_kind().is_ok());
    assert!(facts("v".into()).await.cacheable_kind().is_ok());

    let tmp = facts(format!("{temp_schema}.tmp")).await;
    assert_eq!(tmp.persistence, Persistence::Temporary);
    assert_eq!(tmp.cacheable_kind(), Err(NotCacheable::Temporary));
    let unlogged = facts("unlogged".into()).await;
    assert_eq!(unlogged.cacheable_kind(), Err(NotCacheable::Unlogged));
    for (name, kind) in [
        ("seq", RelKind::Sequence),
        ("mv", RelKind::MaterializedView),
        ("foreign_t", RelKind::Foreign),
        ("composite", RelKind::CompositeType),
    ] {
        let r = facts(name.into()).await;
        assert_eq!(r.kind, kind, "{name}");
        assert_eq!(r.cacheable_kind(), Err(NotCacheable::Kind(kind)), "{name}");
    }
    // pg_catalog is searched implicitly; information_schema is system too.
    let pg_class = facts("pg_class".into()).await;
    assert!(pg_class.system && pg_class.schema == "pg_catalog");
    assert_eq!(pg_class.cacheable_kind(), Err(NotCacheable::System));
    let tables = facts("information_schema.tables".into()).await;
    assert_eq!(tables.cacheable_kind(), Err(NotCacheable::System));
    drop(session);
}

#[tokio::test]
async fn row_level_security_flags() {
    let f = Fixture::start().await;
    f.exec(
        "CREATE TABLE open_t(id int); \
         CREATE TABLE rls_t(id int); ALTER TABLE rls_t ENABLE ROW LEVEL SECURITY; \
         CREATE TABLE forced_t(id int); ALTER TABLE forced_t ENABLE ROW LEVEL SECURITY; \
         ALTER TABLE forced_t FORCE ROW LEVEL SECURITY; \
         CREATE VIEW over_rls AS SELECT id FROM rls_t;",
    )
    .await;
    let open = f.resolve("open_t", "public").await.relation.unwrap();
    let rls = f.resolve("rls_t", "public").await.relation.unwrap();
    let forced = f.resolve("forced_t", "public").await.relation.unwrap();
    assert!(!open.rls_enabled && !open.rls_forced);
    assert!(rls.rls_enabled && !rls.rls_forced);
    assert!(forced.rls_enabled && forced.rls_forced);
    // RLS is for rules to allow, not a kind problem; a view over an RLS table carries it.
    assert!(rls.cacheable_kind().is_ok());
    let view = f.oid("over_rls").await;
    let reads = f.catalog.reads(DB, &[view]).await.unwrap();
    assert!(reads.rls);
    assert_eq!(reads.check(false, false), Err(NotCacheable::RowSecurity));
    assert_eq!(reads.check(false, true), Ok(()));
    let reads = f.catalog.reads(DB, &[open.oid]).await.unwrap();
    assert!(!reads.rls && reads.check(false, false).is_ok());
}

async fn volatility(f: &Fixture, func: FuncRef, path: &str) -> Volatility {
    let list = f
        .catalog
        .volatility(DB, std::slice::from_ref(&func), path, "postgres")
        .await
        .unwrap_or_else(|e| panic!("{func:?}: {e}"));
    list[0]
}

fn call(name: &str, n: usize) -> FuncRef {
    match name.split_once('.') {
        Some((s, name)) => FuncRef::new(Some(s), name, FuncArgs::Count(n)),
        None => FuncRef::new(None, name, FuncArgs::Count(n)),
    }
}

#[tokio::test]
async fn function_volatility_under_the_search_path() {
    let f = Fixture::start().await;
    use Volatility::*;
    assert_eq!(volatility(&f, call("abs", 1), "public").await, Immutable);
    assert_eq!(volatility(&f, call("now", 0), "public").await, Stable);
    assert_eq!(volatility(&f, call("random", 0), "public").await, Volatile);
    assert_eq!(volatility(&f, call("nosuch", 0), "public").await, Unknown);
    assert_eq!(volatility(&f, call("abs", 3), "public").await, Unknown);
    assert_eq!(
        volatility(&f, call("pg_catalog.lower", 1), "public").await,
        Immutable
    );
    // concat(VARIADIC "any") is stable; needs at least one argument.
    assert_eq!(volatility(&f, call("concat", 4), "public").await, Stable);
    assert_eq!(volatility(&f, call("concat", 0), "public").await, Unknown);

    f.exec(
        "CREATE SCHEMA s1; CREATE SCHEMA s2; CREATE SCHEMA s3; CREATE SCHEMA s4; \
         CREATE FUNCTION s1.f(int) RETURNS int IMMUTABLE LANGUAGE sql AS 'SELECT $1'; \
         CREATE FUNCTION s2.f(int) RETURNS int VOLATILE LANGUAGE sql AS 'SELECT $1'; \
         CREATE FUNCTION s2.lower(text) RETURNS text VOLATILE LANGUAGE sql AS 'SELECT $1'; \
         CREATE FUNCTION s3.g(int) RETURNS int IMMUTABLE LANGUAGE sql AS 'SELECT $1'; \
         CREATE FUNCTION s4.g(bigint) RETURNS bigint VOLATILE LANGUAGE sql AS 'SELECT $1'; \
         CREATE FUNCTION s1.h(a int, b int DEFAULT 0) RETURNS int IMMUTABLE LANGUAGE sql \
           AS 'SELECT $1 + $2';",
    )
    .await;
    // The same signature in two schemas: the first on the path hides the other.
    assert_eq!(volatility(&f, call("f", 1), "s1, s2").await, Immutable);
    assert_eq!(volatility(&f, call("f", 1), "s2, s1").await, Volatile);
    // A schema overload of a built-in only wins when listed before pg_catalog.
    assert_eq!(volatility(&f, call("lower", 1), "s2").await, Immutable);
    assert_eq!(
        volatility(&f, call("lower", 1), "s2, pg_catalog").await,
        Volatile
    );
    assert_eq!(
        volatility(&f, call("s2.lower", 1), "public").await,
        Volatile
    );
    // A different-type overload in another schema may be chosen: counted unless the
    // argument types are known.
    assert_eq!(volatility(&f, call("g", 1), "s3, s4").await, Volatile);
    let typed = |types: Vec<u32>| FuncRef::new(None, "g", FuncArgs::Types(types));
    assert_eq!(volatility(&f, typed(vec![23]), "s3, s4").await, Immutable);
    assert_eq!(volatility(&f, typed(vec![20]), "s3, s4").await, Volatile);
    assert_eq!(volatility(&f, call("g", 1), "s3").await, Immutable);
    // Defaults make a shorter call match.
    assert_eq!(volatility(&f, call("h", 1), "s1").await, Immutable);
    assert_eq!(volatility(&f, call("h", 3), "s1").await, Unknown);
    // Functions are never found unqualified in pg_temp.
    assert_eq!(volatility(&f, call("pg_temp.f", 1), "s1").await, Unknown);
    let any = FuncRef::new(None, "f", FuncArgs::Any);
    assert_eq!(volatility(&f, any, "s1").await, Immutable);
}

#[tokio::test]
async fn an_unreachable_server_is_an_error_not_a_panic() {
    let f = Fixture::start().await;
    let nowhere = std::net::SocketAddr::from(([127, 0, 0, 1], common::ports::free_port()));
    let mut config = CatalogConfig::new(common::pg_config(nowhere, "postgres", "", DB));
    config.connect_timeout = Duration::from_secs(2);
    let catalog = Catalog::new(config);
    let err = catalog
        .resolve(DB, &[rel("t")], "public", "postgres")
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            CatalogError::Connect { .. } | CatalogError::ConnectTimeout { .. }
        ),
        "{err:?}"
    );
    // A database that does not exist.
    let err = f.catalog.reads("nosuchdb", &[1]).await.unwrap_err();
    assert_eq!(err.kind(), "connect", "{err:?}");
}

#[tokio::test]
async fn a_blocked_catalog_query_times_out_and_the_next_call_recovers() {
    let f = Fixture::start_with(|c| c.call_timeout = Duration::from_millis(700)).await;
    f.exec("CREATE TABLE parent(id int); CREATE TABLE child() INHERITS (parent);")
        .await;
    let (parent, child) = (f.oid("parent").await, f.oid("child").await);
    // Warm the side connection, then hold a lock its next query needs.
    assert_eq!(
        f.catalog.inheritance(DB, child).await.unwrap().ancestors,
        vec![parent]
    );
    let locker = f.pg.connect("postgres", "", DB).await;
    locker
        .batch_execute("BEGIN; LOCK TABLE pg_catalog.pg_inherits IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let started = Instant::now();
    let err = f.catalog.inheritance(DB, child).await.unwrap_err();
    assert!(
        matches!(err, CatalogError::Timeout { .. } | CatalogError::Query(_)),
        "{err:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    locker.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(
        f.catalog.inheritance(DB, child).await.unwrap().ancestors,
        vec![parent]
    );
}

#[tokio::test]
async fn calls_survive_a_server_restart_and_run_from_spawned_tasks() {
    let mut f = Fixture::start().await;
    f.exec("CREATE TABLE t(id int)").await;
    let t = f.oid("t").await;
    assert_eq!(f.resolved_oid("t", "public").await, t);
    f.pg.stop();
    let err = f.catalog.reads(DB, &[t]).await.unwrap_err();
    assert!(!err.kind().is_empty());
    f.pg.start_again();
    // Futures are Send: the server will call the catalog from session tasks.
    let mut tasks = Vec::new();
    for i in 0..6 {
        let catalog: Arc<Catalog> = f.catalog.clone();
        tasks.push(tokio::spawn(async move {
            let path = if i % 2 == 0 {
                "public"
            } else {
                "public, pg_catalog"
            };
            catalog.resolve(DB, &[rel("t")], path, "postgres").await
        }));
    }
    for task in tasks {
        let list = task.await.unwrap().unwrap();
        assert_eq!(list[0].relation.as_ref().map(|r| r.oid), Some(t));
    }
}
