//! One checker client: its connections through the proxy, the operation loop (weighted
//! random mix, per-operation timeout, reconnect after a failure) and the statement helpers
//! the read and write operations share.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio_postgres::types::Type;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage, Statement};

use super::schema::{GID_PREFIX, Shape};
use super::state::{Pick, Rng, Shared};
use super::targets::{Fam, ReadTarget, Rows, Slot, Violation, WriteStyle, WriteTarget};
use super::targets::{extended_rows, inline_ints, simple_rows, single_value};
use super::{CheckerConfig, CheckerError, Fault};

/// How long establishing one connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Between reconnect attempts while `CheckerConfig::reconnect_for` lasts.
const RECONNECT_PAUSE: Duration = Duration::from_millis(250);

/// Opens a connection and spawns its driver task.
pub(crate) async fn connect(cfg: &CheckerConfig, addr: SocketAddr) -> Result<Client, CheckerError> {
    let mut config = tokio_postgres::Config::new();
    config
        .host(addr.ip().to_string())
        .port(addr.port())
        .user(&cfg.user)
        .dbname(&cfg.dbname)
        .connect_timeout(CONNECT_TIMEOUT);
    if !cfg.password.is_empty() {
        config.password(&cfg.password);
    }
    let what = format!("connecting to {addr}");
    let (client, connection) = tokio::time::timeout(cfg.op_timeout, config.connect(NoTls))
        .await
        .map_err(|_| CheckerError::Timeout(what.clone(), cfg.op_timeout))?
        .map_err(|e| CheckerError::db(what, &e))?;
    // A broken connection surfaces as an error on the client's next call.
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// How a statement is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Proto {
    /// Simple Query with the key inlined.
    Simple,
    /// A named statement prepared once per connection, then Bind/Execute/Sync.
    Prepared,
    /// `query_typed`: unnamed statement, Parse/Bind/Describe/Execute/Sync in one go.
    Typed,
    /// `query(&str)`: a fresh named statement per call (Parse+Describe, Bind+Execute, Close).
    OneShot,
}

/// A `Proto` resolved on one connection (the prepared statement looked up).
pub(crate) enum How {
    Simple,
    Prepared(Statement),
    Typed,
    OneShot,
}

/// A connection plus its prepared statements (keyed by SQL; bounded by construction: the
/// targets have a fixed set of parameterised texts).
pub(crate) struct Conn {
    pub client: Client,
    stmts: HashMap<String, Statement>,
    /// The state the switching reader last switched this connection to; `None` until its
    /// SQL prepared statements exist here.
    pub switched: Option<super::switch::Target>,
}

impl Conn {
    pub async fn open(cfg: &CheckerConfig, addr: SocketAddr) -> Result<Conn, CheckerError> {
        Ok(Conn {
            client: connect(cfg, addr).await?,
            stmts: HashMap::new(),
            switched: None,
        })
    }

    pub async fn how(&mut self, proto: Proto, param_sql: &str) -> Result<How, CheckerError> {
        Ok(match proto {
            Proto::Simple => How::Simple,
            Proto::Typed => How::Typed,
            Proto::OneShot => How::OneShot,
            Proto::Prepared => match self.stmts.get(param_sql) {
                Some(st) => How::Prepared(st.clone()),
                None => {
                    let st = self
                        .client
                        .prepare(param_sql)
                        .await
                        .map_err(|e| CheckerError::db(format!("prepare {param_sql}"), &e))?;
                    self.stmts.insert(param_sql.to_owned(), st.clone());
                    How::Prepared(st)
                }
            },
        })
    }

    pub async fn simple(&self, sql: &str) -> Result<Vec<SimpleQueryMessage>, CheckerError> {
        self.client
            .simple_query(sql)
            .await
            .map_err(|e| CheckerError::db(sql, &e))
    }
}

/// Runs a read on `client` the way `how` says.
pub(crate) async fn read(
    client: &Client,
    how: &How,
    t: &ReadTarget,
    shape: &Shape,
) -> Result<Rows, CheckerError> {
    let param = t.param();
    match how {
        How::Simple => {
            let sql = t.simple_sql(shape);
            let messages = client.simple_query(&sql).await;
            simple_rows(&messages.map_err(|e| CheckerError::db(sql, &e))?)
        }
        How::Prepared(st) => {
            let rows = client.query(st, &param.refs()).await;
            extended_rows(&rows.map_err(|e| CheckerError::db(format!("{t:?}"), &e))?)
        }
        How::Typed => {
            let sql = t.param_sql(shape);
            let rows = client.query_typed(&sql, &param.typed()).await;
            extended_rows(&rows.map_err(|e| CheckerError::db(sql, &e))?)
        }
        How::OneShot => {
            let sql = t.param_sql(shape);
            let rows = client.query(sql.as_str(), &param.refs()).await;
            extended_rows(&rows.map_err(|e| CheckerError::db(sql, &e))?)
        }
    }
}

/// Runs one increment and returns the value it produced (`RETURNING v`).
pub(crate) async fn update(
    client: &Client,
    how: &How,
    t: &WriteTarget,
    delta: i64,
    shape: &Shape,
) -> Result<i64, CheckerError> {
    let key = t.key_param();
    let rows = match how {
        How::Simple => {
            let sql = t.simple_sql(shape, delta);
            let messages = client.simple_query(&sql).await;
            simple_rows(&messages.map_err(|e| CheckerError::db(sql, &e))?)?
        }
        How::Prepared(st) => {
            let rows = client.query(st, &[&key, &delta]).await;
            extended_rows(&rows.map_err(|e| CheckerError::db(format!("{t:?}"), &e))?)?
        }
        How::Typed => {
            let sql = t.param_sql(shape);
            let params = [(&key as _, Type::INT4), (&delta as _, Type::INT8)];
            let rows = client.query_typed(&sql, &params).await;
            extended_rows(&rows.map_err(|e| CheckerError::db(sql, &e))?)?
        }
        How::OneShot => {
            let sql = t.param_sql(shape);
            let rows = client.query(sql.as_str(), &[&key, &delta]).await;
            extended_rows(&rows.map_err(|e| CheckerError::db(sql, &e))?)?
        }
    };
    single_value(&rows).ok_or_else(|| CheckerError::Shape(format!("{t:?} returned {rows:?}")))
}

/// The kinds of operation, each counted as one op.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    ReadOne,
    ReadTxn,
    ReadMulti,
    ReadPipelined,
    ReadSwitched,
    AutoSimple,
    AutoExtended,
    Block,
    MultiStatement,
    Savepoint,
    Chain,
    TwoPhase,
    Rollback,
    /// `UPDATE parent SET id = id, v = v + 1 WHERE id = k` (assigns the key: table-wide).
    AssignKey,
    /// `INSERT INTO parent ... SELECT ... ON CONFLICT DO UPDATE` (table-wide).
    InsertSelect,
    /// `UPDATE parent SET v = v + 1 WHERE id BETWEEN a AND b` (table-wide).
    Range,
}

/// Read mix (relative weights).
const READS: [(Op, u32); 5] = [
    (Op::ReadOne, 60),
    (Op::ReadTxn, 6),
    (Op::ReadMulti, 4),
    (Op::ReadPipelined, 6),
    (Op::ReadSwitched, 4),
];
/// Write mix (relative weights); two-phase commit is dropped when unavailable.
const WRITES: [(Op, u32); 11] = [
    (Op::AutoSimple, 6),
    (Op::AutoExtended, 6),
    (Op::Block, 4),
    (Op::MultiStatement, 4),
    (Op::Savepoint, 3),
    (Op::Chain, 2),
    (Op::TwoPhase, 3),
    (Op::Rollback, 2),
    (Op::AssignKey, 2),
    (Op::InsertSelect, 2),
    (Op::Range, 2),
];
/// The writers pgmemo must treat as table-wide even though they name keys
/// (`CheckerConfig::wide_write_percent` biases the mix towards them).
const WIDE_WRITES: [Op; 3] = [Op::AssignKey, Op::InsertSelect, Op::Range];

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::ReadOne => "read",
            Op::ReadTxn => "read-txn",
            Op::ReadMulti => "read-multi",
            Op::ReadPipelined => "read-pipelined",
            Op::ReadSwitched => "read-switched",
            Op::AutoSimple => "write-simple",
            Op::AutoExtended => "write-extended",
            Op::Block => "write-block",
            Op::MultiStatement => "write-multi",
            Op::Savepoint => "write-savepoint",
            Op::Chain => "write-chain",
            Op::TwoPhase => "write-2pc",
            Op::Rollback => "write-rollback",
            Op::AssignKey => "write-assign-key",
            Op::InsertSelect => "write-insert-select",
            Op::Range => "write-range",
        }
    }
}

/// One client of the run.
pub(crate) struct Worker {
    pub id: usize,
    pub sh: Arc<Shared>,
    pub rng: Rng,
    /// Every write and most reads.
    pub main: Conn,
    /// Finishes some two-phase commits from another session (2PC only).
    pub finisher: Option<Client>,
    /// The frozen REPEATABLE READ snapshot of `Fault::StaleSnapshot`.
    pub stale: Option<Conn>,
    /// The switching reader's own connection (see `switch.rs`), opened at its first use: its
    /// search_path and tenant change all the time, and on `main` they would split every
    /// other read's cache entries by session state.
    pub switcher: Option<Conn>,
    pub gid_seq: u64,
    /// A transaction this client prepared and has not finished yet.
    pub pending_gid: Option<String>,
}

type Conns = (Conn, Option<Client>, Option<Conn>);

/// Where client `id` sends its statements: direct clients bypass the proxy for everything.
pub(crate) fn client_addr(sh: &Shared, id: usize) -> SocketAddr {
    if id < sh.cfg.direct_clients {
        sh.cfg.direct
    } else {
        sh.cfg.proxy_for(id)
    }
}

async fn open_conns(sh: &Shared, id: usize) -> Result<Conns, CheckerError> {
    let addr = client_addr(sh, id);
    let main = Conn::open(&sh.cfg, addr).await?;
    let finisher = match sh.two_phase {
        true => Some(connect(&sh.cfg, addr).await?),
        false => None,
    };
    let stale = match sh.cfg.fault {
        Fault::StaleSnapshot => {
            let conn = Conn::open(&sh.cfg, sh.cfg.proxy).await?;
            conn.simple("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                .await?;
            // The snapshot is taken by the first query and kept until the connection ends.
            conn.simple("SELECT count(*) FROM counters").await?;
            Some(conn)
        }
        _ => None,
    };
    Ok((main, finisher, stale))
}

impl Worker {
    /// The client's whole life: operations until the shared count or the time runs out.
    pub async fn run(sh: Arc<Shared>, id: usize) {
        let seed = sh.cfg.seed ^ (id as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let limit = sh.cfg.op_timeout;
        let (main, finisher, stale) = match tokio::time::timeout(limit, open_conns(&sh, id)).await {
            Ok(Ok(conns)) => conns,
            Ok(Err(e)) => return sh.rec.error(format!("client {id} connect: {e}")),
            Err(_) => return sh.rec.error(format!("client {id} connect timed out")),
        };
        let mut w = Worker {
            id,
            sh: Arc::clone(&sh),
            rng: Rng::new(seed),
            main,
            finisher,
            stale,
            switcher: None,
            gid_seq: 0,
            pending_gid: None,
        };
        let mut counts: BTreeMap<&'static str, u64> = BTreeMap::new();
        while sh.claim_op() {
            if !sh.cfg.op_pause.is_zero() {
                tokio::time::sleep(sh.cfg.op_pause).await;
            }
            let op = w.pick_op();
            *counts.entry(op.name()).or_insert(0) += 1;
            sh.rec.ops.fetch_add(1, Ordering::Relaxed);
            let class = if READS.iter().any(|(r, _)| *r == op) {
                &sh.rec.reads
            } else {
                &sh.rec.writes
            };
            class.fetch_add(1, Ordering::Relaxed);
            let failure = match tokio::time::timeout(limit, w.run_op(op)).await {
                Ok(Ok(())) => continue,
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("timed out after {limit:?}"),
            };
            sh.rec
                .error(format!("client {id} {}: {failure}", op.name()));
            match tokio::time::timeout(limit + sh.cfg.reconnect_for, w.recover()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    sh.rec
                        .error(format!("client {id} gave up reconnecting: {e}"));
                    break;
                }
                Err(_) => {
                    sh.rec
                        .error(format!("client {id} gave up: reconnect timed out"));
                    break;
                }
            }
        }
        sh.rec.merge_op_counts(&counts);
    }

    fn pick_op(&mut self) -> Op {
        let cfg = &self.sh.cfg;
        let percent = match cfg.proxied_write_percent {
            Some(p) if self.id >= cfg.direct_clients => p,
            _ => cfg.write_percent,
        };
        if !self.rng.chance(percent) {
            let weights = READS.map(|(_, w)| w);
            return READS[self.rng.weighted(&weights)].0;
        }
        if let Some(p) = cfg.wide_write_percent
            && self.rng.chance(p)
        {
            return self.rng.pick(&WIDE_WRITES);
        }
        let two_phase = self.sh.two_phase;
        let weights = WRITES.map(|(op, w)| {
            if op == Op::TwoPhase && !two_phase {
                0
            } else {
                w
            }
        });
        WRITES[self.rng.weighted(&weights)].0
    }

    async fn run_op(&mut self, op: Op) -> Result<(), CheckerError> {
        match op {
            Op::ReadOne => self.read_one().await,
            Op::ReadTxn => self.read_txn().await,
            Op::ReadMulti => self.read_multi().await,
            Op::ReadPipelined => self.read_pipelined().await,
            Op::ReadSwitched => self.read_switched().await,
            Op::AutoSimple => self.write_auto_simple().await,
            Op::AutoExtended => self.write_auto_extended().await,
            Op::Block => self.write_block().await,
            Op::MultiStatement => self.write_multi_statement().await,
            Op::Savepoint => self.write_savepoint().await,
            Op::Chain => self.write_chain().await,
            Op::TwoPhase => self.write_two_phase().await,
            Op::Rollback => self.write_rollback().await,
            Op::AssignKey => self.write_parent_styled(WriteStyle::AssignKey).await,
            Op::InsertSelect => self.write_parent_styled(WriteStyle::InsertSelect).await,
            Op::Range => self.write_range().await,
        }
    }

    /// After a failed operation: fresh connections (dropping the old ones aborts whatever
    /// transaction was open) and no prepared transaction of ours left holding locks. With
    /// `reconnect_for`, failed attempts are retried until it has passed.
    async fn recover(&mut self) -> Result<(), CheckerError> {
        let give_up = std::time::Instant::now() + self.sh.cfg.reconnect_for;
        loop {
            match self.reconnect().await {
                Ok(()) => return Ok(()),
                Err(e) if std::time::Instant::now() >= give_up => return Err(e),
                Err(_) => tokio::time::sleep(RECONNECT_PAUSE).await,
            }
        }
    }

    /// One attempt of `recover`. The pending transaction id is forgotten only once it is
    /// known finished, so a retry rolls it back too.
    async fn reconnect(&mut self) -> Result<(), CheckerError> {
        let (main, finisher, stale) = open_conns(&self.sh, self.id).await?;
        (self.main, self.finisher, self.stale) = (main, finisher, stale);
        self.switcher = None;
        if let Some(gid) = self.pending_gid.clone()
            && let Err(e) = self.sq(&format!("ROLLBACK PREPARED '{gid}'")).await
        {
            // 42704: it was finished after all.
            if !matches!(&e, CheckerError::Db { detail, .. } if detail.contains("42704")) {
                return Err(e);
            }
        }
        self.pending_gid = None;
        Ok(())
    }

    /// A fresh global transaction id, remembered until finished.
    pub fn next_gid(&mut self) -> String {
        self.gid_seq += 1;
        let gid = format!(
            "{GID_PREFIX}{:x}-{}-{}",
            self.sh.cfg.seed, self.id, self.gid_seq
        );
        self.pending_gid = Some(gid.clone());
        gid
    }

    /// `n` distinct keys over all families, in lock order.
    pub fn pick_slots(&mut self, n: usize) -> Vec<Slot> {
        let total = self.sh.cfg.shape.slots();
        let mut picked: Vec<usize> = Vec::with_capacity(n);
        while picked.len() < n.min(total) {
            let i = self.rng.below(total);
            if !picked.contains(&i) {
                picked.push(i);
            }
        }
        picked.sort_unstable();
        picked.into_iter().map(|i| self.slot_at(i)).collect()
    }

    pub fn pick_slot(&mut self) -> Slot {
        let i = self.rng.below(self.sh.cfg.shape.slots());
        self.slot_at(i)
    }

    /// Global slot index (counters, then parents, then events) to family and key.
    fn slot_at(&self, i: usize) -> Slot {
        let shape = &self.sh.cfg.shape;
        if i < shape.counters {
            Slot {
                fam: Fam::Counters,
                key: i,
            }
        } else if i < shape.counters + shape.parents {
            Slot {
                fam: Fam::Parents,
                key: i - shape.counters,
            }
        } else {
            Slot {
                fam: Fam::Events,
                key: i - shape.counters - shape.parents,
            }
        }
    }

    /// How `slot` is incremented: a parent is now and then written by a table-wide
    /// statement (key-assigning UPDATE, INSERT ... SELECT) inside any transaction shape.
    pub fn write_target(&mut self, slot: Slot) -> WriteTarget {
        let via_partition = slot.fam == Fam::Events && self.rng.chance(40);
        let style = match slot.fam {
            Fam::Parents => match self.rng.weighted(&[80, 10, 10]) {
                0 => WriteStyle::Plain,
                1 => WriteStyle::AssignKey,
                _ => WriteStyle::InsertSelect,
            },
            _ => WriteStyle::Plain,
        };
        WriteTarget {
            slot,
            via_partition,
            style,
        }
    }

    /// A read of the value `slot` holds, through one of the relations that show it.
    pub fn own_read_target(&mut self, slot: Slot) -> ReadTarget {
        let k = slot.key;
        match (slot.fam, self.rng.below(3)) {
            (Fam::Counters, 0) => ReadTarget::Counter(k),
            (Fam::Counters, 1) => ReadTarget::View(k),
            (Fam::Counters, _) => ReadTarget::Audit(k),
            (Fam::Parents, 0) => ReadTarget::Parent(k),
            (Fam::Parents, _) => ReadTarget::Child(k),
            (Fam::Events, 0) => ReadTarget::EventPartition(k),
            (Fam::Events, _) => ReadTarget::Event(k),
        }
    }

    pub fn proto_any(&mut self) -> Proto {
        match self.rng.weighted(&[35, 35, 20, 10]) {
            0 => Proto::Simple,
            1 => Proto::Prepared,
            2 => Proto::Typed,
            _ => Proto::OneShot,
        }
    }

    /// Before sending an increment that may commit.
    pub fn count(&self, slot: Slot) {
        self.sh.fams.get(slot.fam).count_increment(slot.key);
    }

    /// One increment on the main connection.
    pub async fn upd(
        &mut self,
        proto: Proto,
        t: &WriteTarget,
        delta: i64,
    ) -> Result<i64, CheckerError> {
        let shape = &self.sh.cfg.shape;
        let how = self.main.how(proto, &t.param_sql(shape)).await?;
        update(&self.main.client, &how, t, delta, shape).await
    }

    /// A read on the main connection.
    pub async fn read_main(&mut self, proto: Proto, t: &ReadTarget) -> Result<Rows, CheckerError> {
        let shape = &self.sh.cfg.shape;
        let how = self.main.how(proto, &t.param_sql(shape)).await?;
        read(&self.main.client, &how, t, shape).await
    }

    /// A statement with int4 parameters on the main connection, in any protocol (inlined
    /// for the simple one); every selected column a bigint.
    pub async fn query_ints(
        &mut self,
        proto: Proto,
        param_sql: &str,
        params: &[i32],
    ) -> Result<Rows, CheckerError> {
        let how = self.main.how(proto, param_sql).await?;
        let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
            params.iter().map(|p| p as _).collect();
        let client = &self.main.client;
        let rows = match how {
            How::Simple => {
                let sql = inline_ints(param_sql, params);
                let messages = client.simple_query(&sql).await;
                return simple_rows(&messages.map_err(|e| CheckerError::db(sql, &e))?);
            }
            How::Prepared(st) => client.query(&st, &refs).await,
            How::Typed => {
                let typed: Vec<_> = refs.iter().map(|r| (*r, Type::INT4)).collect();
                client.query_typed(param_sql, &typed).await
            }
            How::OneShot => client.query(param_sql, &refs).await,
        };
        extended_rows(&rows.map_err(|e| CheckerError::db(param_sql, &e))?)
    }

    pub async fn sq(&self, sql: &str) -> Result<Vec<SimpleQueryMessage>, CheckerError> {
        self.main.simple(sql).await
    }

    /// Floors of the keys `t` reads, snapshotted now (before the read is sent).
    pub fn floors(&self, t: &ReadTarget) -> Vec<i64> {
        let (fam, keys) = t.scope(&self.sh.cfg.shape);
        self.sh.fams.get(fam).floors_of(&keys)
    }

    /// Ceilings of the keys `t` reads, snapshotted now (after the result arrived).
    pub fn ceilings(&self, t: &ReadTarget) -> Vec<i64> {
        let (fam, keys) = t.scope(&self.sh.cfg.shape);
        self.sh.fams.get(fam).ceilings_of(&keys)
    }

    /// Judges a result and records what it broke; `Err` only for a malformed result.
    pub fn judge(
        &self,
        context: &str,
        t: &ReadTarget,
        rows: &Rows,
        floors: &[i64],
        ceilings: &[i64],
    ) -> Result<(), CheckerError> {
        for violation in t.judge(rows, &self.sh.cfg.shape, floors, ceilings)? {
            match violation {
                Violation::Stale(text) => self
                    .sh
                    .rec
                    .stale(format!("client {} {context} {t:?}: {text}", self.id)),
                Violation::Phantom(text) => self
                    .sh
                    .rec
                    .phantom(format!("client {} {context} {t:?}: {text}", self.id)),
            }
        }
        Ok(())
    }
}
