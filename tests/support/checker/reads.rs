//! The read operations: one statement in any protocol, several inside a read-only
//! transaction, several in one multi-statement simple Query. Floors are snapshotted before
//! anything is sent, ceilings after the result; the fault modes bend the read path here.

use futures_util::future::join_all;

use super::state::Pick;
use super::targets::{ReadTarget, Rows, simple_sets};
use super::worker::{Proto, Worker, read};
use super::{CheckerError, Fault};

/// Relative weights of the read targets, in `pick_read_target`'s order.
const TARGET_WEIGHTS: [u32; 13] = [20, 10, 10, 8, 4, 6, 8, 10, 14, 10, 6, 5, 4];

impl Worker {
    fn pick_read_target(&mut self) -> ReadTarget {
        let shape = &self.sh.cfg.shape;
        let (counters, parents, events) = (shape.counters, shape.parents, shape.events);
        let groups = shape.groups;
        match self.rng.weighted(&TARGET_WEIGHTS) {
            0 => ReadTarget::Counter(self.rng.below(counters)),
            1 => ReadTarget::View(self.rng.below(counters)),
            2 => ReadTarget::Audit(self.rng.below(counters)),
            3 => ReadTarget::Group(self.rng.below(groups)),
            4 => ReadTarget::AllGroups,
            5 => {
                let want = (2 + self.rng.below(3)).min(counters);
                let mut keys = Vec::with_capacity(want);
                while keys.len() < want {
                    let k = self.rng.below(counters);
                    if !keys.contains(&k) {
                        keys.push(k);
                    }
                }
                keys.sort_unstable();
                ReadTarget::CounterSet(keys)
            }
            6 => ReadTarget::Parent(self.rng.below(parents)),
            7 => ReadTarget::Child(self.rng.below(parents)),
            8 => ReadTarget::Event(self.rng.below(events)),
            9 => ReadTarget::EventPartition(self.rng.below(events)),
            10 if parents >= 2 => {
                let a = self.rng.below(parents);
                let b = (a + 1 + self.rng.below(parents - 1)) % parents;
                ReadTarget::ParentPair(a.min(b), a.max(b))
            }
            10 => ReadTarget::Parent(self.rng.below(parents)),
            11 => {
                let lo = self.rng.below(parents);
                let hi = lo + self.rng.below((parents - lo).min(4));
                ReadTarget::ParentRange(lo, hi)
            }
            _ => ReadTarget::ParentSum,
        }
    }

    /// A read on the path under test: the main connection, or the frozen snapshot of
    /// `Fault::StaleSnapshot`.
    async fn read_path(&mut self, proto: Proto, t: &ReadTarget) -> Result<Rows, CheckerError> {
        let shape = &self.sh.cfg.shape;
        match &mut self.stale {
            Some(stale) => {
                let how = stale.how(proto, &t.param_sql(shape)).await?;
                read(&stale.client, &how, t, shape).await
            }
            None => self.read_main(proto, t).await,
        }
    }

    /// One read statement, in any protocol; in the cache fault modes served from the broken
    /// client-side cache when it holds the statement.
    pub async fn read_one(&mut self) -> Result<(), CheckerError> {
        let t = self.pick_read_target();
        let proto = self.proto_any();
        let floors = self.floors(&t);
        let cached = match &self.sh.fault_cache {
            Some(cache) => cache.get(&t.simple_sql(&self.sh.cfg.shape)),
            None => None,
        };
        let rows = match cached {
            Some(rows) => rows,
            None => {
                let rows = self.read_path(proto, &t).await?;
                if let Some(cache) = &self.sh.fault_cache {
                    let (fam, keys) = t.scope(&self.sh.cfg.shape);
                    let sql = t.simple_sql(&self.sh.cfg.shape);
                    cache.store(sql, fam, keys, rows.clone());
                }
                rows
            }
        };
        let ceilings = self.ceilings(&t);
        self.judge(&format!("read ({proto:?})"), &t, &rows, &floors, &ceilings)
    }

    /// 1–3 reads inside `BEGIN [ISOLATION LEVEL REPEATABLE READ] READ ONLY ... COMMIT`. The
    /// floors are taken before BEGIN, since a repeatable-read snapshot is as old as the
    /// transaction's first statement.
    pub async fn read_txn(&mut self) -> Result<(), CheckerError> {
        let n = 1 + self.rng.below(3);
        let targets: Vec<ReadTarget> = (0..n).map(|_| self.pick_read_target()).collect();
        let floors: Vec<Vec<i64>> = targets.iter().map(|t| self.floors(t)).collect();
        // The stale snapshot is already a transaction: BEGIN/COMMIT would end it.
        let wrap = self.stale.is_none();
        let begin = self.rng.pick(&[
            "BEGIN READ ONLY",
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
            "START TRANSACTION READ ONLY, ISOLATION LEVEL READ COMMITTED",
        ]);
        if wrap {
            self.sq(begin).await?;
        }
        let mut results = Vec::with_capacity(n);
        for t in &targets {
            let proto = self.proto_any();
            results.push(self.read_path(proto, t).await?);
        }
        if wrap {
            self.sq("COMMIT").await?;
        }
        for ((t, rows), floors) in targets.iter().zip(&results).zip(&floors) {
            let ceilings = self.ceilings(t);
            self.judge(&format!("read in `{begin}`"), t, rows, floors, &ceilings)?;
        }
        Ok(())
    }

    /// 2–3 reads in one simple Query (one implicit transaction, a snapshot per statement).
    pub async fn read_multi(&mut self) -> Result<(), CheckerError> {
        let n = 2 + self.rng.below(2);
        let targets: Vec<ReadTarget> = (0..n).map(|_| self.pick_read_target()).collect();
        let shape = &self.sh.cfg.shape;
        let sql: Vec<String> = targets.iter().map(|t| t.simple_sql(shape)).collect();
        let sql = sql.join("; ");
        let floors: Vec<Vec<i64>> = targets.iter().map(|t| self.floors(t)).collect();
        let conn = self.stale.as_ref().unwrap_or(&self.main);
        let sets = simple_sets(&conn.simple(&sql).await?)?;
        if sets.len() != n {
            return Err(CheckerError::Shape(format!(
                "{sql}: {} result sets, expected {n}",
                sets.len()
            )));
        }
        for ((t, rows), floors) in targets.iter().zip(&sets).zip(&floors) {
            let ceilings = self.ceilings(t);
            self.judge(
                "read in a multi-statement Query",
                t,
                rows,
                floors,
                &ceilings,
            )?;
        }
        Ok(())
    }

    /// 2–3 extended-protocol reads sent back to back without waiting (tokio-postgres
    /// pipelines concurrent queries on one connection): only the first can be answered from
    /// the cache; the others must come back in order and be as fresh.
    pub async fn read_pipelined(&mut self) -> Result<(), CheckerError> {
        let n = 2 + self.rng.below(2);
        let targets: Vec<ReadTarget> = (0..n).map(|_| self.pick_read_target()).collect();
        let shape = &self.sh.cfg.shape;
        let mut hows = Vec::with_capacity(n);
        for t in &targets {
            let proto = self.rng.pick(&[Proto::Prepared, Proto::Typed]);
            let conn = self.stale.as_mut().unwrap_or(&mut self.main);
            hows.push(conn.how(proto, &t.param_sql(shape)).await?);
        }
        let floors: Vec<Vec<i64>> = targets.iter().map(|t| self.floors(t)).collect();
        let conn = self.stale.as_ref().unwrap_or(&self.main);
        let results = join_all(
            targets
                .iter()
                .zip(&hows)
                .map(|(t, how)| read(&conn.client, how, t, shape)),
        )
        .await;
        for ((t, rows), floors) in targets.iter().zip(results).zip(&floors) {
            let ceilings = self.ceilings(t);
            self.judge("pipelined read", t, &rows?, floors, &ceilings)?;
        }
        Ok(())
    }

    /// Whether writers should store their in-transaction reads in the broken cache.
    pub fn stores_in_transaction(&self) -> bool {
        self.sh.cfg.fault == Fault::StoreInTransaction
    }
}
