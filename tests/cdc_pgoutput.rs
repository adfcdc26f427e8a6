//! The `pgoutput` decoder against a real PostgreSQL (issue 5 groundwork): a server with
//! `wal_level = logical`, a publication and a logical slot; writes of each kind (INSERT,
//! UPDATE, DELETE, TRUNCATE, an FK cascade, a partitioned table written through its leaf, a
//! rolled-back transaction); the slot's binary changes read back with
//! `pg_logical_slot_get_binary_changes` and decoded by pgmemo's codec must name exactly the
//! relations each committed transaction changed, with increasing commit LSNs.

mod common;

use std::collections::BTreeSet;

use common::{PgOptions, PgServer, SUPERUSER};
use pgmemo::cdc::pgoutput::{CommittedTxn, TxnCollector, decode};

const DB: &str = common::stack::APP_DB;

async fn oid(client: &tokio_postgres::Client, rel: &str) -> u32 {
    client
        .query_one("SELECT $1::text::regclass::oid", &[&rel])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn pgoutput_changes_decode_to_the_relations_each_transaction_wrote() {
    let pg = PgServer::start(PgOptions::default().setting("wal_level", "logical"));
    let c = pg.connect(SUPERUSER, "", DB).await;
    c.batch_execute(
        "CREATE TABLE plain(id int PRIMARY KEY, v int);
         CREATE TABLE parent(id int PRIMARY KEY);
         CREATE TABLE child(id int PRIMARY KEY, p int REFERENCES parent ON DELETE CASCADE);
         CREATE TABLE part(k int, v int) PARTITION BY RANGE (k);
         CREATE TABLE part_1 PARTITION OF part FOR VALUES FROM (0) TO (100);
         INSERT INTO parent VALUES (1); INSERT INTO child VALUES (1, 1);
         CREATE PUBLICATION allpub FOR ALL TABLES;",
    )
    .await
    .unwrap();
    // A slot must be created in a transaction of its own.
    c.batch_execute("SELECT pg_create_logical_replication_slot('t', 'pgoutput')")
        .await
        .unwrap();
    let (plain, parent, child, part_1) = (
        oid(&c, "plain").await,
        oid(&c, "parent").await,
        oid(&c, "child").await,
        oid(&c, "part_1").await,
    );
    // Each in a transaction of its own (a multi-statement Query would be one).
    for sql in [
        "INSERT INTO plain VALUES (1, 1)",
        "UPDATE plain SET v = 2 WHERE id = 1",
        "BEGIN; DELETE FROM plain; INSERT INTO part VALUES (5, 5); COMMIT",
        "DELETE FROM parent WHERE id = 1",
        "BEGIN; INSERT INTO plain VALUES (9, 9); ROLLBACK",
        "TRUNCATE plain",
    ] {
        c.batch_execute(sql).await.unwrap();
    }
    let rows = c
        .query(
            "SELECT data FROM pg_logical_slot_get_binary_changes('t', NULL, NULL, \
             'proto_version', '1', 'publication_names', 'allpub')",
            &[],
        )
        .await
        .unwrap();
    let mut collector = TxnCollector::default();
    let mut txns: Vec<CommittedTxn> = Vec::new();
    for row in &rows {
        let data: Vec<u8> = row.get(0);
        let message = decode(&data).unwrap_or_else(|e| panic!("{e}: {data:?}"));
        txns.extend(collector.feed(&message));
    }
    let sets: Vec<BTreeSet<u32>> = txns.iter().map(|t| t.relations.clone()).collect();
    let want: Vec<BTreeSet<u32>> = vec![
        [plain].into(),
        [plain].into(),
        [plain, part_1].into(),
        [parent, child].into(),
        [plain].into(),
    ];
    assert_eq!(sets, want, "relations per committed transaction");
    assert!(txns.iter().all(|t| !t.overflowed));
    assert!(
        txns.windows(2).all(|w| w[0].commit_lsn < w[1].commit_lsn),
        "commit LSNs increase"
    );
    assert!(txns.iter().all(|t| t.end_lsn > t.commit_lsn));
    c.batch_execute("SELECT pg_drop_replication_slot('t')")
        .await
        .unwrap();
}
