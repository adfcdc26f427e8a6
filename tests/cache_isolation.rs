//! Result cache isolation (issue 3): a cached result is served only to a session with the same
//! database, role, search_path and every result-affecting setting. Each test runs sessions
//! whose identical SQL means different rows, and asserts that every session always gets its
//! own rows, and (through `pg_stat_statements`) when a read was a hit: two schemas under two
//! search_paths, tenants chosen through `set_config` with row-level security (not cached by
//! default, cached per tenant when a rule opts in), SET LOCAL and rolled-back SET, startup
//! options, ALTER ROLE ... SET, temp tables, SET ROLE, and per-role RLS policies.

mod common;
#[path = "support/cache_probe.rs"]
mod probe;

use std::time::{Duration, Instant};

use common::SUPERUSER;
use common::compare::SimpleMsg;
use probe::{CacheStack, POLL_BOUND, REESTABLISH_BOUND, column, config, simple, simple_err};
use tokio_postgres::error::SqlState;

const SETUP: &str = "
CREATE SCHEMA a;
CREATE SCHEMA b;
CREATE TABLE public.t(v text);
INSERT INTO public.t VALUES ('p1');
CREATE TABLE a.t(v text);
INSERT INTO a.t VALUES ('a1');
CREATE TABLE b.t(v text);
INSERT INTO b.t VALUES ('b1');
CREATE ROLE r_path LOGIN;
GRANT USAGE ON SCHEMA a, b TO r_path;
GRANT SELECT ON public.t, a.t, b.t TO r_path;

CREATE ROLE app_user LOGIN;
CREATE TABLE plain(id int);
INSERT INTO plain VALUES (1);
CREATE TABLE docs(tenant text, body text);
CREATE TABLE docs_optin(tenant text, body text);
INSERT INTO docs VALUES ('t1', 'd1-a'), ('t1', 'd1-b'), ('t2', 'd2-a');
INSERT INTO docs_optin SELECT * FROM docs;
ALTER TABLE docs ENABLE ROW LEVEL SECURITY;
ALTER TABLE docs_optin ENABLE ROW LEVEL SECURITY;
CREATE POLICY by_tenant ON docs USING (tenant = current_setting('app.tenant', true));
CREATE POLICY by_tenant ON docs_optin USING (tenant = current_setting('app.tenant', true));
GRANT SELECT ON plain, docs, docs_optin TO app_user;
CREATE FUNCTION set_tenant(t text) RETURNS text LANGUAGE plpgsql
    AS $$ BEGIN PERFORM set_config('app.tenant', t, false); RETURN t; END $$;

CREATE ROLE switcher LOGIN NOINHERIT;
CREATE ROLE reader;
CREATE ROLE noread;
GRANT reader, noread TO switcher;
CREATE TABLE secret(v text);
INSERT INTO secret VALUES ('s1');
GRANT SELECT ON secret TO reader;

CREATE ROLE alice LOGIN;
CREATE ROLE bob LOGIN;
CREATE ROLE carol LOGIN;
CREATE TABLE notes(owner text, body text);
INSERT INTO notes VALUES ('alice', 'a-note1'), ('alice', 'a-note2'), ('bob', 'b-note');
ALTER TABLE notes ENABLE ROW LEVEL SECURITY;
CREATE POLICY alice_own ON notes TO alice USING (owner = 'alice');
CREATE POLICY bob_own ON notes TO bob USING (owner = 'bob');
GRANT SELECT ON notes TO alice, bob, carol;
";

/// RLS tables are cached only where a rule opts in.
const RULES: &str = "
[[rules]]
table = \"public.docs_optin\"
allow_rls = true
ttl = \"30s\"

[[rules]]
table = \"public.notes\"
allow_rls = true
ttl = \"30s\"
";

async fn stack() -> CacheStack {
    CacheStack::start(SETUP, &config("", RULES)).await
}

fn v(value: &str) -> Vec<SimpleMsg> {
    column("v", &[value])
}

fn bodies(values: &[&str]) -> Vec<SimpleMsg> {
    column("body", values)
}

const T_SQL: &str = "SELECT v FROM t";

#[tokio::test]
async fn same_name_in_two_schemas_follows_each_sessions_search_path() {
    let s = stack().await;
    let (sa, sb, w) = (
        s.session(SUPERUSER).await,
        s.session(SUPERUSER).await,
        s.session(SUPERUSER).await,
    );
    simple(&sa, "SET search_path = a").await;
    simple(&sb, "SET search_path = b").await;
    let qa = s.probe.q(T_SQL, Some("a")).await;
    let qb = s.probe.q(T_SQL, Some("b")).await;

    s.probe.assert_upstream(&sa, &qa, &v("a1")).await;
    s.probe.assert_hit(&sa, &qa, &v("a1")).await;
    // Same SQL bytes, other schema: a miss with the other rows.
    s.probe.assert_upstream(&sb, &qb, &v("b1")).await;
    s.probe.assert_hit(&sb, &qb, &v("b1")).await;

    // A schema-qualified write invalidates that schema's table only.
    simple(&w, "UPDATE a.t SET v = 'a2'").await;
    s.probe.assert_upstream(&sa, &qa, &v("a2")).await;
    s.probe.assert_hit(&sb, &qb, &v("b1")).await;
    simple(&w, "UPDATE b.t SET v = 'b2'").await;
    s.probe.assert_hit(&sa, &qa, &v("a2")).await;
    s.probe.assert_upstream(&sb, &qb, &v("b2")).await;

    // Another path naming the same schema first sees that schema's rows.
    let sba = s.session(SUPERUSER).await;
    simple(&sba, "SET search_path = b, a").await;
    assert_eq!(simple(&sba, T_SQL).await, v("b2"));
    // The default path reads public.t.
    assert_eq!(simple(&w, T_SQL).await, v("p1"));
}

#[tokio::test]
async fn rls_tables_are_not_cached_without_an_opt_in() {
    let s = stack().await;
    let (s1, s2) = (s.session("app_user").await, s.session("app_user").await);
    // Control: these sessions do use the cache for a table without RLS.
    let ctl = s.probe.q("SELECT id FROM plain", None).await;
    s.probe
        .assert_upstream(&s1, &ctl, &column("id", &["1"]))
        .await;
    s.probe.assert_hit(&s1, &ctl, &column("id", &["1"])).await;

    simple(&s1, "SET app.tenant = 't1'").await;
    simple(&s2, "SET app.tenant = 't2'").await;
    let q = s.probe.q("SELECT body FROM docs ORDER BY body", None).await;
    for _ in 0..3 {
        s.probe
            .assert_upstream(&s1, &q, &bodies(&["d1-a", "d1-b"]))
            .await;
        s.probe.assert_upstream(&s2, &q, &bodies(&["d2-a"])).await;
    }
    // Tenant switched through a PL/pgSQL function calling set_config.
    assert_eq!(
        simple(&s1, "SELECT set_tenant('t2')").await,
        column("set_tenant", &["t2"])
    );
    for _ in 0..2 {
        s.probe.assert_upstream(&s1, &q, &bodies(&["d2-a"])).await;
    }
}

#[tokio::test]
async fn opted_in_rls_table_is_cached_per_tenant_and_never_across() {
    let s = stack().await;
    let (s1, s2, s3) = (
        s.session("app_user").await,
        s.session("app_user").await,
        s.session("app_user").await,
    );
    let q = s
        .probe
        .q("SELECT body FROM docs_optin ORDER BY body", None)
        .await;
    let (t1, t2) = (bodies(&["d1-a", "d1-b"]), bodies(&["d2-a"]));

    // The tenant is chosen inside a function: pgmemo cannot see the set_config.
    simple(&s1, "SELECT set_tenant('t1')").await;
    simple(&s2, "SELECT set_tenant('t2')").await;
    let took = s
        .probe
        .eventually_hit(&s1, &q, &t1, REESTABLISH_BOUND)
        .await;
    eprintln!("tenant t1 served from cache after {took:?}");
    // The other tenant's first read must not get t1's entry.
    s.probe.assert_upstream(&s2, &q, &t2).await;
    s.probe
        .eventually_hit(&s2, &q, &t2, REESTABLISH_BOUND)
        .await;
    for _ in 0..5 {
        s.probe.assert_hit(&s1, &q, &t1).await;
        s.probe.assert_hit(&s2, &q, &t2).await;
    }
    // A session that never chose a tenant sees nothing.
    for _ in 0..2 {
        assert_eq!(simple(&s3, &q.sql).await, bodies(&[]));
    }

    // A set_config pgmemo sees in the statement: s1 becomes tenant t2.
    simple(&s1, "SELECT set_config('app.tenant', 't2', false)").await;
    for _ in 0..3 {
        assert_eq!(simple(&s1, &q.sql).await, t2, "s1 after set_config t2");
    }
    // And back through the function.
    simple(&s1, "SELECT set_tenant('t1')").await;
    s.probe
        .eventually_hit(&s1, &q, &t1, REESTABLISH_BOUND)
        .await;
    assert_eq!(simple(&s2, &q.sql).await, t2);
    assert_eq!(simple(&s3, &q.sql).await, bodies(&[]));
    // A plain SET of the tenant.
    simple(&s3, "SET app.tenant = 't1'").await;
    assert_eq!(simple(&s3, &q.sql).await, t1);
}

#[tokio::test]
async fn set_local_and_rolled_back_set_leave_the_session_settings_as_postgres_has_them() {
    let s = stack().await;
    let (sa, sb) = (s.session(SUPERUSER).await, s.session(SUPERUSER).await);
    simple(&sa, "SET search_path = a").await;
    simple(&sb, "SET search_path = b").await;
    let qa = s.probe.q(T_SQL, Some("a")).await;
    let qb = s.probe.q(T_SQL, Some("b")).await;
    // Both schemas' entries are cached, so a session mistaken about its path would get the
    // other schema's rows from the cache.
    s.probe.assert_upstream(&sa, &qa, &v("a1")).await;
    s.probe.assert_hit(&sa, &qa, &v("a1")).await;
    s.probe.assert_upstream(&sb, &qb, &v("b1")).await;
    s.probe.assert_hit(&sb, &qb, &v("b1")).await;

    // SET LOCAL lasts until the end of the block.
    simple(&sa, "BEGIN").await;
    simple(&sa, "SET LOCAL search_path = b").await;
    s.probe.assert_upstream(&sa, &qb, &v("b1")).await;
    simple(&sa, "COMMIT").await;
    s.probe
        .eventually_hit(&sa, &qa, &v("a1"), REESTABLISH_BOUND)
        .await;

    // SET then ROLLBACK: the SET is undone.
    simple(&sa, "BEGIN").await;
    simple(&sa, "SET search_path = b").await;
    s.probe.assert_upstream(&sa, &qb, &v("b1")).await;
    simple(&sa, "ROLLBACK").await;
    s.probe
        .eventually_hit(&sa, &qa, &v("a1"), REESTABLISH_BOUND)
        .await;

    // SET in a block that fails is undone by the ROLLBACK.
    simple(&sa, "BEGIN").await;
    simple(&sa, "SET search_path = b").await;
    assert_eq!(
        simple_err(&sa, "SELECT 1 / 0").await,
        SqlState::DIVISION_BY_ZERO
    );
    simple(&sa, "ROLLBACK").await;
    assert_eq!(simple(&sa, T_SQL).await, v("a1"));

    // SET in a committed block stays; the session now shares b's entry.
    simple(&sa, "BEGIN").await;
    simple(&sa, "SET search_path = b").await;
    simple(&sa, "COMMIT").await;
    s.probe
        .eventually_hit(&sa, &qb, &v("b1"), REESTABLISH_BOUND)
        .await;

    // ROLLBACK TO SAVEPOINT undoes a SET made after the savepoint ...
    simple(&sa, "BEGIN").await;
    simple(&sa, "SAVEPOINT sp").await;
    simple(&sa, "SET search_path = a").await;
    simple(&sa, "ROLLBACK TO SAVEPOINT sp").await;
    simple(&sa, "COMMIT").await;
    assert_eq!(simple(&sa, T_SQL).await, v("b1"));
    // ... RELEASE keeps it.
    simple(&sa, "BEGIN").await;
    simple(&sa, "SAVEPOINT sp").await;
    simple(&sa, "SET search_path = a").await;
    simple(&sa, "RELEASE SAVEPOINT sp").await;
    simple(&sa, "COMMIT").await;
    assert_eq!(simple(&sa, T_SQL).await, v("a1"));
    // The other session was never affected.
    s.probe.assert_hit(&sb, &qb, &v("b1")).await;
}

#[tokio::test]
async fn startup_options_search_path_is_part_of_the_session() {
    let s = stack().await;
    let d = s.session(SUPERUSER).await;
    let ob = s.session_with_options(SUPERUSER, "-c search_path=b").await;
    let oa = s.session_with_options(SUPERUSER, "-c search_path=a").await;
    let qp = s.probe.q(T_SQL, None).await;
    let qa = s.probe.q(T_SQL, Some("a")).await;
    let qb = s.probe.q(T_SQL, Some("b")).await;

    s.probe.assert_upstream(&d, &qp, &v("p1")).await;
    s.probe.assert_hit(&d, &qp, &v("p1")).await;
    s.probe.assert_upstream(&ob, &qb, &v("b1")).await;
    s.probe.assert_hit(&ob, &qb, &v("b1")).await;
    s.probe.assert_upstream(&oa, &qa, &v("a1")).await;
    s.probe.assert_hit(&oa, &qa, &v("a1")).await;
    // A new session with the same options shares its schema's entry.
    let ob2 = s.session_with_options(SUPERUSER, "-c search_path=b").await;
    s.probe.assert_hit(&ob2, &qb, &v("b1")).await;
    // Other option spellings: whatever pgmemo does with them, the rows are the path's.
    let oba = s
        .session_with_options(SUPERUSER, "-c search_path=b,a -c work_mem=8MB")
        .await;
    assert_eq!(simple(&oba, T_SQL).await, v("b1"));
    let oa2 = s.session_with_options(SUPERUSER, "--search_path=a").await;
    assert_eq!(simple(&oa2, T_SQL).await, v("a1"));
    assert_eq!(simple(&d, T_SQL).await, v("p1"));
}

#[tokio::test]
async fn alter_role_set_search_path_reaches_new_sessions() {
    let s = stack().await;
    let qp = s.probe.q(T_SQL, None).await;
    let old = s.session("r_path").await;
    s.probe.assert_upstream(&old, &qp, &v("p1")).await;
    s.probe.assert_hit(&old, &qp, &v("p1")).await;

    // Through pgmemo: the next new session sees the new path at once.
    let admin = s.session(SUPERUSER).await;
    simple(&admin, "ALTER ROLE r_path SET search_path = a").await;
    let new1 = s.session("r_path").await;
    assert_eq!(simple(&new1, T_SQL).await, v("a1"));
    assert_eq!(simple(&new1, T_SQL).await, v("a1"));
    // A session started before keeps the path it started with.
    assert_eq!(simple(&old, T_SQL).await, v("p1"));

    // Directly on Postgres: bounded by the catalog poller.
    s.direct_sql("ALTER ROLE r_path SET search_path = b");
    let started = Instant::now();
    loop {
        let c = s.session("r_path").await;
        let got = simple(&c, T_SQL).await;
        if got == v("b1") {
            break;
        }
        assert_eq!(got, v("a1"), "a new r_path session read neither path");
        assert!(
            started.elapsed() < POLL_BOUND,
            "new sessions still read the old path {POLL_BOUND:?} after ALTER ROLE"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("ALTER ROLE SET seen after {:?}", started.elapsed());
    for _ in 0..5 {
        let c = s.session("r_path").await;
        assert_eq!(simple(&c, T_SQL).await, v("b1"));
        assert_eq!(simple(&c, T_SQL).await, v("b1"));
    }
    assert_eq!(simple(&new1, T_SQL).await, v("a1"));
    assert_eq!(simple(&old, T_SQL).await, v("p1"));
}

#[tokio::test]
async fn temp_table_shadows_the_permanent_one_in_its_own_session_only() {
    let s = stack().await;
    let (tmp, p) = (s.session(SUPERUSER).await, s.session(SUPERUSER).await);
    let qp = s.probe.q(T_SQL, None).await;

    simple(&tmp, "CREATE TEMP TABLE t(v text)").await;
    simple(&tmp, "INSERT INTO t VALUES ('temp1')").await;
    for _ in 0..2 {
        assert_eq!(simple(&tmp, T_SQL).await, v("temp1"));
    }
    // The temp rows were not stored where another session finds them.
    s.probe.assert_upstream(&p, &qp, &v("p1")).await;
    s.probe.assert_hit(&p, &qp, &v("p1")).await;
    // With the permanent rows cached, the temp session still reads its temp table.
    for _ in 0..3 {
        assert_eq!(simple(&tmp, T_SQL).await, v("temp1"));
    }
    // pg_temp after public: the permanent table wins; back to the default: the temp one.
    simple(&tmp, "SET search_path = public, pg_temp").await;
    assert_eq!(simple(&tmp, T_SQL).await, v("p1"));
    simple(&tmp, "RESET search_path").await;
    assert_eq!(simple(&tmp, T_SQL).await, v("temp1"));

    // Vice versa: a session whose permanent read is cached creates its own temp table.
    simple(&p, "CREATE TEMP TABLE t(v text)").await;
    simple(&p, "INSERT INTO t VALUES ('temp2')").await;
    for _ in 0..3 {
        assert_eq!(simple(&p, T_SQL).await, v("temp2"));
    }
    assert_eq!(simple(&tmp, T_SQL).await, v("temp1"));

    // Dropping the temp table brings the permanent rows back.
    simple(&tmp, "DROP TABLE pg_temp.t").await;
    assert_eq!(simple(&tmp, T_SQL).await, v("p1"));
    assert_eq!(simple(&p, T_SQL).await, v("temp2"));
    let fresh = s.session(SUPERUSER).await;
    assert_eq!(simple(&fresh, T_SQL).await, v("p1"));
}

#[tokio::test]
async fn set_role_and_reset_role_follow_the_roles_privileges() {
    let s = stack().await;
    let sw = s.session("switcher").await;
    let q = s.probe.q("SELECT v FROM secret", None).await;
    let s1 = v("s1");

    simple(&sw, "SET ROLE reader").await;
    s.probe.assert_upstream(&sw, &q, &s1).await;
    s.probe.assert_hit(&sw, &q, &s1).await;

    simple(&sw, "SET ROLE noread").await;
    for _ in 0..2 {
        assert_eq!(
            simple_err(&sw, &q.sql).await,
            SqlState::INSUFFICIENT_PRIVILEGE
        );
    }
    simple(&sw, "RESET ROLE").await;
    for _ in 0..2 {
        assert_eq!(
            simple_err(&sw, &q.sql).await,
            SqlState::INSUFFICIENT_PRIVILEGE
        );
    }
    simple(&sw, "SET ROLE reader").await;
    s.probe
        .eventually_hit(&sw, &q, &s1, REESTABLISH_BOUND)
        .await;

    // SET ROLE undone by ROLLBACK; SET LOCAL ROLE undone at the end of the block.
    simple(&sw, "BEGIN").await;
    simple(&sw, "SET ROLE noread").await;
    simple(&sw, "ROLLBACK").await;
    assert_eq!(simple(&sw, &q.sql).await, s1);
    simple(&sw, "BEGIN").await;
    simple(&sw, "SET LOCAL ROLE noread").await;
    simple(&sw, "COMMIT").await;
    assert_eq!(simple(&sw, &q.sql).await, s1);
    simple(&sw, "BEGIN").await;
    simple(&sw, "SET ROLE noread").await;
    simple(&sw, "COMMIT").await;
    assert_eq!(
        simple_err(&sw, &q.sql).await,
        SqlState::INSUFFICIENT_PRIVILEGE
    );

    // A new session of the login role (no SET ROLE) has no privilege.
    let sw2 = s.session("switcher").await;
    assert_eq!(
        simple_err(&sw2, &q.sql).await,
        SqlState::INSUFFICIENT_PRIVILEGE
    );
    // The superuser reads it, and is denied after SET ROLE noread.
    let su = s.session(SUPERUSER).await;
    assert_eq!(simple(&su, &q.sql).await, s1);
    simple(&su, "SET ROLE noread").await;
    assert_eq!(
        simple_err(&su, &q.sql).await,
        SqlState::INSUFFICIENT_PRIVILEGE
    );
    simple(&su, "RESET ROLE").await;
    assert_eq!(simple(&su, &q.sql).await, s1);
}

#[tokio::test]
async fn two_roles_with_different_rls_policies_never_share_rows() {
    let s = stack().await;
    let (al, bo, ca) = (
        s.session("alice").await,
        s.session("bob").await,
        s.session("carol").await,
    );
    let q = s
        .probe
        .q("SELECT body FROM notes ORDER BY body", None)
        .await;
    let alice = bodies(&["a-note1", "a-note2"]);
    let bob = bodies(&["b-note"]);
    let none = bodies(&[]);

    s.probe.assert_upstream(&al, &q, &alice).await;
    s.probe.assert_hit(&al, &q, &alice).await;
    s.probe.assert_upstream(&bo, &q, &bob).await;
    s.probe.assert_hit(&bo, &q, &bob).await;
    // No policy for carol: RLS denies every row.
    s.probe.assert_upstream(&ca, &q, &none).await;
    for _ in 0..3 {
        s.probe.assert_hit(&al, &q, &alice).await;
        s.probe.assert_hit(&bo, &q, &bob).await;
        s.probe.assert_hit(&ca, &q, &none).await;
    }

    // A write through pgmemo refreshes every role's view of the table.
    let su = s.session(SUPERUSER).await;
    simple(&su, "INSERT INTO notes VALUES ('bob', 'b-note2')").await;
    s.probe.assert_upstream(&al, &q, &alice).await;
    s.probe
        .assert_upstream(&bo, &q, &bodies(&["b-note", "b-note2"]))
        .await;

    // The superuser after SET ROLE gets the role's rows, and its own (all) after RESET.
    simple(&su, "SET ROLE alice").await;
    assert_eq!(simple(&su, &q.sql).await, alice);
    simple(&su, "RESET ROLE").await;
    assert_eq!(
        simple(&su, &q.sql).await,
        bodies(&["a-note1", "a-note2", "b-note", "b-note2"])
    );
    simple(&su, "SET ROLE bob").await;
    assert_eq!(simple(&su, &q.sql).await, bodies(&["b-note", "b-note2"]));
}
