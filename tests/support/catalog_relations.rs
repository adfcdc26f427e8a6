//! Catalog tests of what relations read and write: views (nested, volatile, over
//! non-cacheable relations), partition and inheritance trees, FK action chains, rewrite
//! rules, user triggers and column defaults.

use pgmemo::catalog::{EpochReason, NotCacheable, RelKind, Volatility};

use crate::fixture::{DB, Fixture, sorted};

#[tokio::test]
async fn views_expand_to_what_they_read_and_evaluate() {
    let f = Fixture::start().await;
    f.exec(
        "CREATE TABLE base(id int, ts timestamptz); CREATE TABLE other(id int); \
         CREATE UNLOGGED TABLE scratch(id int); \
         CREATE VIEW v AS SELECT b.id FROM base b JOIN other o USING (id) WHERE b.id > 1; \
         CREATE VIEW vv AS SELECT id FROM v; \
         CREATE VIEW v_now AS SELECT id, now() AS at FROM base; \
         CREATE VIEW v_current AS SELECT id, CURRENT_TIMESTAMP AS at FROM base; \
         CREATE VIEW v_ts_text AS SELECT ts::text AS t FROM base; \
         CREATE VIEW v_int_text AS SELECT id::text AS t FROM base; \
         CREATE FUNCTION noisy() RETURNS int VOLATILE LANGUAGE sql AS 'SELECT 1'; \
         CREATE VIEW v_noisy AS SELECT id, noisy() FROM base; \
         CREATE VIEW v_catalog AS SELECT count(*) FROM pg_class; \
         CREATE VIEW v_scratch AS SELECT id FROM scratch; \
         CREATE VIEW v_locking AS SELECT id FROM base FOR UPDATE;",
    )
    .await;
    let oid = |name: &'static str| f.oid(name);
    let (base, other, v, vv) = (
        oid("base").await,
        oid("other").await,
        oid("v").await,
        oid("vv").await,
    );

    let src = f.catalog.view_sources(DB, v).await.unwrap();
    let rels: Vec<_> = src.relations.iter().map(|r| r.oid).collect();
    assert_eq!(rels, sorted(vec![base, other]));
    assert_eq!(src.volatility, Volatility::Immutable);
    assert!(src.complete && !src.locking);

    // A view over a view reads both, transitively.
    let src = f.catalog.view_sources(DB, vv).await.unwrap();
    let rels: Vec<_> = src.relations.iter().map(|r| r.oid).collect();
    assert_eq!(rels, sorted(vec![base, other, v]));
    assert_eq!(
        src.relations.iter().find(|r| r.oid == v).unwrap().kind,
        RelKind::View
    );
    let reads = f.catalog.reads(DB, &[vv]).await.unwrap();
    assert_eq!(reads.tags, sorted(vec![base, other, v, vv]));
    assert_eq!(reads.check(false, false), Ok(()));

    let check = |name: &'static str| {
        let f = &f;
        async move {
            let view = f.oid(name).await;
            let reads = f.catalog.reads(DB, &[view]).await.unwrap();
            (
                reads.volatility,
                reads.check(false, false),
                reads.check(true, false),
            )
        }
    };
    use Volatility::*;
    let stable = (Stable, Err(NotCacheable::Volatility(Stable)), Ok(()));
    assert_eq!(check("v_now").await, stable, "now()");
    assert_eq!(check("v_current").await, stable, "CURRENT_TIMESTAMP");
    assert_eq!(
        check("v_ts_text").await,
        stable,
        "timestamptz output depends on settings"
    );
    assert_eq!(check("v_int_text").await, (Immutable, Ok(()), Ok(())));
    let volatile = Err(NotCacheable::Volatility(Volatile));
    assert_eq!(check("v_noisy").await, (Volatile, volatile, volatile));
    // pg_class is pinned (absent from pg_depend) and still found.
    let (_, verdict, _) = check("v_catalog").await;
    assert_eq!(verdict, Err(NotCacheable::System));
    let (_, verdict, _) = check("v_scratch").await;
    assert_eq!(verdict, Err(NotCacheable::Unlogged));
    let (_, verdict, _) = check("v_locking").await;
    assert_eq!(verdict, Err(NotCacheable::Locking));
}

#[tokio::test]
async fn partition_trees_give_ancestors_and_descendants() {
    let f = Fixture::start().await;
    f.exec(
        "CREATE TABLE root(k int, v int) PARTITION BY RANGE (k); \
         CREATE TABLE mid PARTITION OF root FOR VALUES FROM (0) TO (100) PARTITION BY RANGE (k); \
         CREATE TABLE leaf_a PARTITION OF mid FOR VALUES FROM (0) TO (50); \
         CREATE TABLE leaf_b PARTITION OF mid FOR VALUES FROM (50) TO (100); \
         CREATE TABLE leaf_c PARTITION OF root FOR VALUES FROM (100) TO (200);",
    )
    .await;
    let mut o = Vec::new();
    for name in ["root", "mid", "leaf_a", "leaf_b", "leaf_c"] {
        o.push(f.oid(name).await);
    }
    let [root, mid, leaf_a, leaf_b, leaf_c] = o[..] else {
        unreachable!()
    };
    let leaf = f.catalog.inheritance(DB, leaf_a).await.unwrap();
    assert_eq!(leaf.ancestors, sorted(vec![root, mid]));
    assert!(leaf.descendants.is_empty());
    let top = f.catalog.inheritance(DB, root).await.unwrap();
    assert!(top.ancestors.is_empty());
    assert_eq!(top.descendants, sorted(vec![mid, leaf_a, leaf_b, leaf_c]));
    // A write to a leaf bumps it and its ancestors, not its siblings.
    let w = f.catalog.writes(DB, &[leaf_a]).await.unwrap();
    assert_eq!(w.tags, sorted(vec![root, mid, leaf_a]));
    assert!(w.epoch.is_empty());
    let w = f.catalog.writes(DB, &[root]).await.unwrap();
    assert_eq!(w.tags, sorted(vec![root, mid, leaf_a, leaf_b, leaf_c]));
    let leaf_facts = f.catalog.relation_facts(DB, &[leaf_a]).await.unwrap();
    assert!(leaf_facts[0].is_partition);
}

#[tokio::test]
async fn multi_level_and_multiple_inheritance() {
    let f = Fixture::start().await;
    f.exec(
        "CREATE TABLE a(x int); CREATE TABLE b(y int) INHERITS (a); \
         CREATE TABLE c(z int) INHERITS (b); CREATE TABLE side(w int); \
         CREATE TABLE d() INHERITS (a, side);",
    )
    .await;
    let (a, b, c, side, d) = (
        f.oid("a").await,
        f.oid("b").await,
        f.oid("c").await,
        f.oid("side").await,
        f.oid("d").await,
    );
    let tree = f.catalog.inheritance(DB, c).await.unwrap();
    assert_eq!(tree.ancestors, sorted(vec![a, b]));
    let tree = f.catalog.inheritance(DB, a).await.unwrap();
    assert_eq!(tree.descendants, sorted(vec![b, c, d]));
    // UPDATE a also changes d's rows, which `side` shows.
    let w = f.catalog.writes(DB, &[a]).await.unwrap();
    assert_eq!(w.tags, sorted(vec![a, b, c, d, side]));
    let w = f.catalog.writes(DB, &[b]).await.unwrap();
    assert_eq!(w.tags, sorted(vec![a, b, c]));
}

#[tokio::test]
async fn fk_actions_reach_cascade_and_set_null_but_not_restrict() {
    let f = Fixture::start().await;
    f.exec(
        "CREATE TABLE ta(id int PRIMARY KEY); \
         CREATE TABLE tb(id int PRIMARY KEY, a_id int REFERENCES ta ON DELETE CASCADE); \
         CREATE TABLE tc(id int, b_id int REFERENCES tb ON DELETE SET NULL); \
         CREATE TABLE td(a_id int REFERENCES ta ON DELETE RESTRICT); \
         CREATE TABLE te(b_id int REFERENCES tb); \
         CREATE TABLE tf(b_id int DEFAULT 0 REFERENCES tb ON UPDATE SET DEFAULT);",
    )
    .await;
    let mut o = Vec::new();
    for name in ["ta", "tb", "tc", "td", "te", "tf"] {
        o.push(f.oid(name).await);
    }
    let [ta, tb, tc, _td, _te, tf] = o[..] else {
        unreachable!()
    };
    assert_eq!(
        f.catalog.fk_action_targets(DB, ta).await.unwrap(),
        sorted(vec![tb, tc, tf])
    );
    assert_eq!(
        f.catalog.fk_action_targets(DB, tb).await.unwrap(),
        sorted(vec![tc, tf])
    );
    assert!(
        f.catalog
            .fk_action_targets(DB, tc)
            .await
            .unwrap()
            .is_empty()
    );
    let w = f.catalog.writes(DB, &[ta]).await.unwrap();
    assert_eq!(w.tags, sorted(vec![ta, tb, tc, tf]));
    // FK enforcement triggers are internal, not user triggers.
    assert!(w.epoch.is_empty(), "{:?}", w.epoch);
    assert!(f.catalog.user_triggers(DB, tb).await.unwrap().is_empty());
}

#[tokio::test]
async fn rules_add_their_targets_and_side_effects() {
    let f = Fixture::start().await;
    f.exec(
        "CREATE TABLE t(id int); CREATE TABLE log(id int, at timestamptz); \
         CREATE RULE t_log AS ON INSERT TO t DO ALSO INSERT INTO log VALUES (new.id, now()); \
         CREATE TABLE u(id int); \
         CREATE FUNCTION audit(int) RETURNS int VOLATILE LANGUAGE sql AS 'SELECT $1'; \
         CREATE RULE u_audit AS ON DELETE TO u DO ALSO SELECT audit(old.id); \
         CREATE TABLE quiet(id int);",
    )
    .await;
    let (t, log, u, quiet) = (
        f.oid("t").await,
        f.oid("log").await,
        f.oid("u").await,
        f.oid("quiet").await,
    );
    assert_eq!(f.catalog.rule_targets(DB, t).await.unwrap(), vec![log]);
    assert!(f.catalog.rule_targets(DB, quiet).await.unwrap().is_empty());
    let w = f.catalog.writes(DB, &[t]).await.unwrap();
    assert_eq!(w.tags, sorted(vec![t, log]));
    // now() in the rule is a pg_catalog function: no invisible effect.
    assert!(w.epoch.is_empty(), "{:?}", w.epoch);
    let w = f.catalog.writes(DB, &[u]).await.unwrap();
    assert_eq!(
        w.epoch,
        vec![EpochReason::Rule {
            relation: u,
            function: "public.audit".into()
        }]
    );
}

#[tokio::test]
async fn user_triggers_and_defaults_bump_the_epoch() {
    let f = Fixture::start().await;
    f.exec(
        "CREATE TABLE t(id int); CREATE TABLE plain(id serial, at timestamptz DEFAULT now()); \
         CREATE FUNCTION trg() RETURNS trigger LANGUAGE plpgsql AS \
           'BEGIN RETURN NEW; END'; \
         CREATE TRIGGER t_trg BEFORE INSERT ON t FOR EACH ROW EXECUTE FUNCTION trg(); \
         CREATE FUNCTION next_code() RETURNS int VOLATILE LANGUAGE sql AS 'SELECT 1'; \
         CREATE TABLE coded(id int DEFAULT next_code());",
    )
    .await;
    let (t, plain, coded) = (f.oid("t").await, f.oid("plain").await, f.oid("coded").await);
    let triggers = f.catalog.user_triggers(DB, t).await.unwrap();
    assert_eq!(triggers.len(), 1);
    assert_eq!(
        (triggers[0].name.as_str(), triggers[0].function.as_str()),
        ("t_trg", "public.trg")
    );
    let w = f.catalog.writes(DB, &[t]).await.unwrap();
    assert_eq!(
        w.epoch,
        vec![EpochReason::Trigger {
            relation: t,
            trigger: "t_trg".into(),
            function: "public.trg".into()
        }]
    );
    assert_eq!(w.epoch[0].function(), Some("public.trg"));
    // serial (nextval) and now() defaults are pg_catalog functions.
    let w = f.catalog.writes(DB, &[plain]).await.unwrap();
    assert!(w.epoch.is_empty(), "{:?}", w.epoch);
    let w = f.catalog.writes(DB, &[coded]).await.unwrap();
    assert_eq!(
        w.epoch,
        vec![EpochReason::Default {
            relation: coded,
            function: "public.next_code".into()
        }]
    );
    // A written view writes its base table, whose trigger then counts.
    f.exec("CREATE VIEW tv AS SELECT id FROM t").await;
    let tv = f.oid("tv").await;
    let w = f.catalog.writes(DB, &[tv]).await.unwrap();
    assert_eq!(w.tags, sorted(vec![t, tv]));
    assert_eq!(w.epoch.len(), 1);
}
