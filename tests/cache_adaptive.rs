//! Adaptive bypass (issue 4): a statement whose table is written between nearly every two
//! reads stops using the cache (no lookup, capture or store) once its sampled hit ratio stays
//! below `cache.min_hit_ratio`, counted in metrics; reads stay exact throughout, and a
//! statement that does hit keeps hitting.

mod common;
#[path = "support/cache_probe.rs"]
mod probe;

use common::SUPERUSER;
use probe::{CacheStack, column, config, simple};

const SETUP: &str = "
CREATE TABLE hot(id int PRIMARY KEY, v int NOT NULL);
INSERT INTO hot VALUES (1, 0);
CREATE TABLE calm(id int PRIMARY KEY, v text NOT NULL);
INSERT INTO calm VALUES (1, 'steady');
";

#[tokio::test]
async fn a_statement_that_never_hits_stops_using_the_cache() {
    let s = CacheStack::start(SETUP, &config("min_hit_ratio = 0.5", "")).await;
    let c = s.session(SUPERUSER).await;
    let calm = s.probe.q("SELECT v FROM calm WHERE id = 1", None).await;
    simple(&c, &calm.sql).await;
    // Every read of `hot` follows a write of it: never a hit. 16 lookups make a sample and
    // 64 samples a window, so about 1,100 rounds end the first window.
    for i in 1..=1_200 {
        c.simple_query(&format!("UPDATE hot SET v = {i} WHERE id = 1"))
            .await
            .unwrap();
        assert_eq!(
            simple(&c, "SELECT v FROM hot WHERE id = 1").await,
            column("v", &[&i.to_string()]),
            "round {i}"
        );
        if i % 100 == 0 {
            // The calm statement hits whatever happens to `hot`.
            s.probe
                .assert_hit(&c, &calm, &column("v", &["steady"]))
                .await;
        }
    }
    assert!(
        s.metric("pgmemo_cache_adaptive_bypasses_total") >= 1.0,
        "the hot statement never switched to bypass"
    );
    let skipped = s.metric("pgmemo_cache_bypasses_total{reason=\"low_hit_ratio\"}");
    assert!(
        skipped >= 50.0,
        "only {skipped} executions skipped the cache"
    );
    s.probe
        .assert_hit(&c, &calm, &column("v", &["steady"]))
        .await;
}
