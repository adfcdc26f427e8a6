//! Catalog poller tests: direct DDL, privileges, policies, function redefinitions, role
//! settings and name shadowing are reported (each once, with the generation bumped), and
//! nothing is reported when nothing changed — not even after VACUUM/ANALYZE.

use pgmemo::catalog::{Aspect, Change, EpochCause, FuncArgs, FuncRef, Oid, Poller, Volatility};

use crate::fixture::{DB, Fixture};

/// The first relation change reported for `oid`.
fn aspects_of(changes: &[Change], oid: Oid) -> Vec<Aspect> {
    changes
        .iter()
        .find_map(|c| match c {
            Change::Relation {
                oid: o, aspects, ..
            } if *o == oid => Some(aspects.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

fn epoch_causes(changes: &[Change]) -> Vec<EpochCause> {
    changes
        .iter()
        .filter_map(|c| match c {
            Change::Epoch { cause, .. } => Some(cause.clone()),
            Change::Relation { .. } => None,
        })
        .collect()
}

async fn setup() -> (Fixture, Poller, Oid) {
    let f = Fixture::start().await;
    f.exec(
        "CREATE TABLE t(id int); INSERT INTO t SELECT generate_series(1, 100); CREATE ROLE reader;",
    )
    .await;
    let t = f.resolved_oid("t", "public").await;
    let poller = Poller::new(f.catalog.clone());
    (f, poller, t)
}

#[tokio::test]
async fn nothing_changed_reports_nothing() {
    let (f, poller, t) = setup().await;
    f.exec(
        "CREATE FUNCTION pure(int) RETURNS int IMMUTABLE LANGUAGE sql AS 'SELECT $1'; \
         CREATE VIEW v AS SELECT id FROM t;",
    )
    .await;
    let v = f.oid("v").await;
    let func = FuncRef::new(None, "pure", FuncArgs::Count(1));
    f.catalog
        .volatility(DB, &[func], "public", "postgres")
        .await
        .unwrap();
    f.catalog.reads(DB, &[v]).await.unwrap();
    f.catalog.writes(DB, &[t]).await.unwrap();
    let generation = f.catalog.generation();
    assert!(poller.poll_once().await.is_empty());
    // Data and statistics are not catalog definitions.
    for sql in [
        "INSERT INTO t VALUES (101)",
        "VACUUM ANALYZE t",
        "ANALYZE",
        "VACUUM FULL t",
    ] {
        f.exec(sql).await;
    }
    assert!(poller.poll_once().await.is_empty());
    assert_eq!(f.catalog.generation(), generation);
    let (relations, functions) = f.catalog.tracked();
    assert!(relations >= 2 && functions >= 1, "{relations} {functions}");
}

#[tokio::test]
async fn add_column_is_reported_once_even_before_the_first_poll() {
    let (f, poller, t) = setup().await;
    let generation = f.catalog.generation();
    // The baseline was taken when `t` was resolved, so this counts as a change.
    f.exec("ALTER TABLE t ADD COLUMN extra text").await;
    let changes = poller.poll_once().await;
    assert_eq!(
        aspects_of(&changes, t),
        vec![Aspect::Columns],
        "{changes:?}"
    );
    assert!(f.catalog.generation() > generation);
    assert!(poller.poll_once().await.is_empty());
    f.exec("ALTER TABLE t DROP COLUMN extra").await;
    assert_eq!(
        aspects_of(&poller.poll_once().await, t),
        vec![Aspect::Columns]
    );
}

#[tokio::test]
async fn grant_revoke_and_policies_are_reported() {
    let (f, poller, t) = setup().await;
    f.exec("GRANT SELECT ON t TO reader").await;
    assert_eq!(aspects_of(&poller.poll_once().await, t), vec![Aspect::Acl]);
    f.exec("REVOKE SELECT ON t FROM reader").await;
    assert_eq!(aspects_of(&poller.poll_once().await, t), vec![Aspect::Acl]);
    f.exec("GRANT SELECT (id) ON t TO reader").await;
    assert_eq!(aspects_of(&poller.poll_once().await, t), vec![Aspect::Acl]);
    f.exec("CREATE POLICY only_small ON t USING (id < 10)")
        .await;
    assert_eq!(
        aspects_of(&poller.poll_once().await, t),
        vec![Aspect::Policies]
    );
    f.exec("ALTER TABLE t ENABLE ROW LEVEL SECURITY").await;
    assert_eq!(
        aspects_of(&poller.poll_once().await, t),
        vec![Aspect::Definition]
    );
    f.exec("CREATE TRIGGER noop BEFORE INSERT ON t FOR EACH ROW EXECUTE FUNCTION suppress_redundant_updates_trigger()")
        .await;
    assert_eq!(
        aspects_of(&poller.poll_once().await, t),
        vec![Aspect::Triggers]
    );
    f.exec("DROP TABLE t").await;
    assert_eq!(
        aspects_of(&poller.poll_once().await, t),
        vec![Aspect::Dropped]
    );
    assert!(poller.poll_once().await.is_empty());
}

#[tokio::test]
async fn function_redefinition_bumps_the_epoch() {
    let (f, poller, _) = setup().await;
    f.exec("CREATE FUNCTION tenant() RETURNS int IMMUTABLE LANGUAGE sql AS 'SELECT 1'")
        .await;
    let func = FuncRef::new(None, "tenant", FuncArgs::Count(0));
    let v = f
        .catalog
        .volatility(DB, std::slice::from_ref(&func), "public", "postgres")
        .await
        .unwrap();
    assert_eq!(v[0], Volatility::Immutable);
    let oid = f.func_oid("tenant()").await;
    f.exec("CREATE OR REPLACE FUNCTION tenant() RETURNS int VOLATILE LANGUAGE sql AS 'SELECT 1'")
        .await;
    let causes = epoch_causes(&poller.poll_once().await);
    assert!(
        causes.contains(&EpochCause::Function {
            oid,
            name: Some("tenant".into())
        }),
        "{causes:?}"
    );
    // The new generation empties the memo: the new volatility is seen.
    let v = f
        .catalog
        .volatility(DB, std::slice::from_ref(&func), "public", "postgres")
        .await
        .unwrap();
    assert_eq!(v[0], Volatility::Volatile);
    assert!(poller.poll_once().await.is_empty());
    // A new overload that calls could reach is a name change.
    f.exec("CREATE FUNCTION tenant(int) RETURNS int IMMUTABLE LANGUAGE sql AS 'SELECT 1'")
        .await;
    let causes = epoch_causes(&poller.poll_once().await);
    assert_eq!(
        causes,
        vec![EpochCause::FunctionNames(vec!["tenant".into()])]
    );
}

#[tokio::test]
async fn role_settings_and_membership_bump_the_epoch() {
    let (f, poller, _) = setup().await;
    f.exec("ALTER ROLE reader SET search_path = other").await;
    assert_eq!(
        epoch_causes(&poller.poll_once().await),
        vec![EpochCause::Settings]
    );
    f.exec("ALTER DATABASE app SET work_mem = '8MB'").await;
    assert_eq!(
        epoch_causes(&poller.poll_once().await),
        vec![EpochCause::Settings]
    );
    f.exec("CREATE ROLE writer; GRANT reader TO writer").await;
    let causes = epoch_causes(&poller.poll_once().await);
    assert!(
        causes.contains(&EpochCause::Roles) && causes.contains(&EpochCause::RoleMembership),
        "{causes:?}"
    );
    assert!(poller.poll_once().await.is_empty());
}

#[tokio::test]
async fn a_shadowing_table_is_seen_and_memoised_answers_refresh() {
    let (f, poller, t) = setup().await;
    // A new schema alone changes no answer.
    f.exec("CREATE SCHEMA early").await;
    assert!(poller.poll_once().await.is_empty());
    assert_eq!(f.resolved_oid("t", "early, public").await, t);
    f.exec("CREATE TABLE early.t(id int)").await;
    let shadow = f.oid("early.t").await;
    // Memoised until the poller sees the change.
    assert_eq!(f.resolved_oid("t", "early, public").await, t);
    let causes = epoch_causes(&poller.poll_once().await);
    assert_eq!(causes, vec![EpochCause::RelationNames(vec!["t".into()])]);
    assert_eq!(f.resolved_oid("t", "early, public").await, shadow);
    // A schema renamed or re-granted changes what names mean and who may read them.
    f.exec("REVOKE USAGE ON SCHEMA public FROM PUBLIC").await;
    assert_eq!(
        epoch_causes(&poller.poll_once().await),
        vec![EpochCause::Schemas]
    );
    f.exec("ALTER SCHEMA early RENAME TO later").await;
    assert_eq!(
        epoch_causes(&poller.poll_once().await),
        vec![EpochCause::Schemas]
    );
}

#[tokio::test]
async fn names_that_did_not_exist_are_watched_too() {
    let (f, poller, _) = setup().await;
    assert_eq!(f.resolve("created_later", "public").await.relation, None);
    let func = FuncRef::new(None, "made_later", FuncArgs::Count(0));
    let list = f
        .catalog
        .volatility(DB, std::slice::from_ref(&func), "public", "postgres")
        .await
        .unwrap();
    assert_eq!(list[0], Volatility::Unknown);
    assert!(poller.poll_once().await.is_empty());
    f.exec(
        "CREATE TABLE created_later(id int); \
         CREATE FUNCTION made_later() RETURNS int IMMUTABLE LANGUAGE sql AS 'SELECT 1';",
    )
    .await;
    let causes = epoch_causes(&poller.poll_once().await);
    assert_eq!(
        causes,
        vec![
            EpochCause::RelationNames(vec!["created_later".into()]),
            EpochCause::FunctionNames(vec!["made_later".into()])
        ]
    );
    assert!(
        f.resolve("created_later", "public")
            .await
            .relation
            .is_some()
    );
    let list = f
        .catalog
        .volatility(DB, &[func], "public", "postgres")
        .await
        .unwrap();
    assert_eq!(list[0], Volatility::Immutable);
}

#[tokio::test]
async fn a_function_redefined_under_a_view_is_seen() {
    let (f, poller, _) = setup().await;
    f.exec(
        "CREATE FUNCTION label(int) RETURNS text IMMUTABLE LANGUAGE sql AS 'SELECT $1::text'; \
         CREATE VIEW labelled AS SELECT label(id) FROM t;",
    )
    .await;
    let view = f.oid("labelled").await;
    let reads = f.catalog.reads(DB, &[view]).await.unwrap();
    assert_eq!(reads.volatility, Volatility::Immutable);
    assert!(poller.poll_once().await.is_empty());
    f.exec(
        "CREATE OR REPLACE FUNCTION label(int) RETURNS text STABLE LANGUAGE sql \
         AS 'SELECT $1::text'",
    )
    .await;
    let causes = epoch_causes(&poller.poll_once().await);
    assert!(
        matches!(&causes[..], [EpochCause::Function { name: Some(n), .. }] if n == "label"),
        "{causes:?}"
    );
    let reads = f.catalog.reads(DB, &[view]).await.unwrap();
    assert_eq!(reads.volatility, Volatility::Stable);
}

#[tokio::test]
async fn a_failed_poll_bumps_the_epoch_and_recovers() {
    let (mut f, poller, t) = setup().await;
    f.pg.stop();
    let changes = poller.poll_once().await;
    assert!(
        matches!(epoch_causes(&changes)[..], [EpochCause::PollFailed(_)]),
        "{changes:?}"
    );
    f.pg.start_again();
    // Changes made while pgmemo could not look are still caught.
    let sql = f.pg.connect("postgres", "", DB).await;
    sql.batch_execute("ALTER TABLE t ADD COLUMN late int")
        .await
        .unwrap();
    assert_eq!(
        aspects_of(&poller.poll_once().await, t),
        vec![Aspect::Columns]
    );
    assert!(poller.poll_once().await.is_empty());
}

#[tokio::test]
async fn run_hands_changes_to_the_sink() {
    let (f, poller, t) = setup().await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let runner = tokio::spawn(poller.run(std::time::Duration::from_millis(50), move |c| {
        let _ = tx.send(c);
    }));
    f.exec("ALTER TABLE t ADD COLUMN extra int").await;
    let changes = tokio::time::timeout(std::time::Duration::from_secs(10), rx.recv())
        .await
        .expect("a change within 10 s")
        .unwrap();
    assert_eq!(aspects_of(&changes, t), vec![Aspect::Columns]);
    runner.abort();
}
