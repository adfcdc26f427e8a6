//! The write operations: increments in every transaction shape the proxy must bump for —
//! autocommit (simple, and extended with a pipelined read behind it), explicit blocks,
//! multi-statement Queries, savepoints rolled back to, COMMIT AND CHAIN, two-phase commit —
//! plus rolled-back increments that must never be seen. Floors rise only after the ack.

use futures_util::future::join;

use super::CheckerError;
use super::state::Pick;
use super::targets::{
    Fam, PARENT_RANGE_LOCK, PARENT_RANGE_UPDATE, Slot, WriteStyle, WriteTarget, inline_ints,
    simple_sets, single_value,
};
use super::worker::{Proto, Worker, read, update};

/// Added by increments that are always rolled back: far above any count of real
/// increments, so a read that shows one is caught as a phantom.
pub(crate) const PHANTOM: i64 = 1 << 40;

impl Worker {
    fn ack(&self, acks: &[(Slot, i64)]) {
        if self.id < self.sh.cfg.direct_clients {
            // A write pgmemo did not see: it is owed to readers only once the lag bound has
            // passed since its acknowledgement.
            let sh = std::sync::Arc::clone(&self.sh);
            let acks = acks.to_vec();
            tokio::spawn(async move {
                tokio::time::sleep(sh.cfg.direct_ack_delay).await;
                sh.ack(&acks);
            });
        } else {
            self.sh.ack(acks);
        }
    }

    /// `UPDATE ... RETURNING v` as a simple Query: the ack is its ReadyForQuery.
    pub async fn write_auto_simple(&mut self) -> Result<(), CheckerError> {
        let slot = self.pick_slot();
        let t = self.write_target(slot);
        self.count(slot);
        let v = self.upd(Proto::Simple, &t, 1).await?;
        self.ack(&[(slot, v)]);
        Ok(())
    }

    /// An extended-protocol autocommit increment. With a prepared or typed statement a
    /// simple read of the same key is pipelined right behind the write's Sync: Postgres runs
    /// it after the write committed, so it must see the write, and so must the proxy.
    pub async fn write_auto_extended(&mut self) -> Result<(), CheckerError> {
        let slot = self.pick_slot();
        let t = self.write_target(slot);
        let proto = self
            .rng
            .pick(&[Proto::Prepared, Proto::Typed, Proto::OneShot]);
        if proto == Proto::OneShot {
            // Its Parse round trip would let a pipelined read overtake the write.
            self.count(slot);
            let v = self.upd(proto, &t, 1).await?;
            self.ack(&[(slot, v)]);
            return Ok(());
        }
        let own = self.own_read_target(slot);
        let floors = self.floors(&own);
        self.count(slot);
        let shape = &self.sh.cfg.shape;
        let how = self.main.how(proto, &t.param_sql(shape)).await?;
        // The read behind it in any protocol: an extended one is a cache lookup candidate
        // that must wait for the write's ack (and bump) before its key is computed.
        let read_proto = self
            .rng
            .pick(&[Proto::Simple, Proto::Prepared, Proto::Typed]);
        let read_how = self.main.how(read_proto, &own.param_sql(shape)).await?;
        let client = &self.main.client;
        // `join` polls the write first, so it is sent first.
        let (written, own_read) = join(
            update(client, &how, &t, 1, shape),
            read(client, &read_how, &own, shape),
        )
        .await;
        let v = written?;
        self.ack(&[(slot, v)]);
        let rows = own_read?;
        let floors: Vec<i64> = floors.into_iter().map(|f| f.max(v)).collect();
        let ceilings = self.ceilings(&own);
        let context = format!("read pipelined after own write ({proto:?})");
        self.judge(&context, &own, &rows, &floors, &ceilings)
    }

    /// 2–3 increments in an explicit block, each in a random protocol; the ack is COMMIT.
    pub async fn write_block(&mut self) -> Result<(), CheckerError> {
        let n = 2 + self.rng.below(2);
        let slots = self.pick_slots(n);
        let begin = self.rng.pick(&[
            "BEGIN",
            "START TRANSACTION",
            "BEGIN ISOLATION LEVEL READ COMMITTED",
        ]);
        self.sq(begin).await?;
        let mut acks = Vec::with_capacity(n);
        for slot in slots {
            let t = self.write_target(slot);
            let proto = self.proto_any();
            self.count(slot);
            acks.push((slot, self.upd(proto, &t, 1).await?));
        }
        let end = self.rng.pick(&["COMMIT", "END"]);
        self.sq(end).await?;
        self.ack(&acks);
        Ok(())
    }

    /// 2–3 increments in one simple Query: an implicit transaction, or `BEGIN; ...; COMMIT`
    /// inside the same string. The ack is the final ReadyForQuery.
    pub async fn write_multi_statement(&mut self) -> Result<(), CheckerError> {
        let n = 2 + self.rng.below(2);
        let slots = self.pick_slots(n);
        let explicit = self.rng.chance(30);
        let mut statements = Vec::with_capacity(n + 2);
        if explicit {
            statements.push("BEGIN".to_string());
        }
        for slot in &slots {
            let t = self.write_target(*slot);
            statements.push(t.simple_sql(&self.sh.cfg.shape, 1));
        }
        if explicit {
            statements.push("COMMIT".to_string());
        }
        for slot in &slots {
            self.count(*slot);
        }
        let sql = statements.join("; ");
        let sets = simple_sets(&self.sq(&sql).await?)?;
        if sets.len() != statements.len() {
            return Err(CheckerError::Shape(format!(
                "{sql}: {} result sets",
                sets.len()
            )));
        }
        let updates = sets.iter().skip(usize::from(explicit));
        let mut acks = Vec::with_capacity(n);
        for (slot, rows) in slots.iter().zip(updates) {
            let v = single_value(rows)
                .ok_or_else(|| CheckerError::Shape(format!("{sql}: returned {rows:?}")))?;
            acks.push((*slot, v));
        }
        self.ack(&acks);
        Ok(())
    }

    /// `BEGIN; +1; SAVEPOINT; +PHANTOM; ROLLBACK TO; [+1 on the same row]; [SAVEPOINT;] +1;
    /// [RELEASE;] COMMIT`: what came before the savepoint and after the rollback commits,
    /// the rolled-back part must never be seen.
    pub async fn write_savepoint(&mut self) -> Result<(), CheckerError> {
        let slots = self.pick_slots(3);
        let &[before, rolled_back, after] = slots.as_slice() else {
            return Err(CheckerError::Shape(format!("picked {slots:?}")));
        };
        self.sq("BEGIN").await?;
        let t = self.write_target(before);
        let proto = self.proto_any();
        self.count(before);
        let mut acks = vec![(before, self.upd(proto, &t, 1).await?)];
        self.sq("SAVEPOINT before_phantom").await?;
        let t = self.write_target(rolled_back);
        let proto = self.proto_any();
        self.upd(proto, &t, PHANTOM).await?;
        self.sq("ROLLBACK TO SAVEPOINT before_phantom").await?;
        if self.rng.chance(50) {
            let proto = self.proto_any();
            self.count(rolled_back);
            acks.push((rolled_back, self.upd(proto, &t, 1).await?));
        }
        let nested = self.rng.chance(50);
        if nested {
            self.sq("SAVEPOINT kept").await?;
        }
        let t = self.write_target(after);
        let proto = self.proto_any();
        self.count(after);
        acks.push((after, self.upd(proto, &t, 1).await?));
        if nested {
            self.sq("RELEASE SAVEPOINT kept").await?;
        }
        self.sq("COMMIT").await?;
        self.ack(&acks);
        Ok(())
    }

    /// `BEGIN; +1; COMMIT AND CHAIN` (the ack of the first increment), a read in the
    /// chained transaction that must see it, then `+1; COMMIT`.
    pub async fn write_chain(&mut self) -> Result<(), CheckerError> {
        let slots = self.pick_slots(2);
        let &[first, second] = slots.as_slice() else {
            return Err(CheckerError::Shape(format!("picked {slots:?}")));
        };
        self.sq("BEGIN").await?;
        let t = self.write_target(first);
        let proto = self.proto_any();
        self.count(first);
        let v = self.upd(proto, &t, 1).await?;
        self.sq("COMMIT AND CHAIN").await?;
        self.ack(&[(first, v)]);
        let own = self.own_read_target(first);
        let floors: Vec<i64> = self.floors(&own).into_iter().map(|f| f.max(v)).collect();
        let proto = self.proto_any();
        let rows = self.read_main(proto, &own).await?;
        let ceilings = self.ceilings(&own);
        self.judge(
            "read after COMMIT AND CHAIN",
            &own,
            &rows,
            &floors,
            &ceilings,
        )?;
        let t = self.write_target(second);
        let proto = self.proto_any();
        self.count(second);
        let v = self.upd(proto, &t, 1).await?;
        let end = self.rng.pick(&["COMMIT", "COMMIT AND NO CHAIN"]);
        self.sq(end).await?;
        self.ack(&[(second, v)]);
        Ok(())
    }

    /// `BEGIN; +1 [; +1]; PREPARE TRANSACTION`, a read while it is prepared, then COMMIT
    /// PREPARED (the ack) from this session or another one; one in five instead adds
    /// PHANTOM and ends with ROLLBACK PREPARED.
    pub async fn write_two_phase(&mut self) -> Result<(), CheckerError> {
        let rollback = self.rng.chance(20);
        let delta = if rollback { PHANTOM } else { 1 };
        let n = 1 + self.rng.below(2);
        let slots = self.pick_slots(n);
        self.sq("BEGIN").await?;
        let mut acks = Vec::with_capacity(n);
        for slot in &slots {
            let t = self.write_target(*slot);
            let proto = self.proto_any();
            if !rollback {
                self.count(*slot);
            }
            acks.push((*slot, self.upd(proto, &t, delta).await?));
        }
        let gid = self.next_gid();
        self.sq(&format!("PREPARE TRANSACTION '{gid}'")).await?;
        if let Some(slot) = slots.first() {
            // Prepared but not committed: an ordinary read, which a cache may store; the
            // COMMIT PREPARED below must make that entry unreachable.
            let own = self.own_read_target(*slot);
            let floors = self.floors(&own);
            let proto = self.proto_any();
            let rows = self.read_main(proto, &own).await?;
            let ceilings = self.ceilings(&own);
            self.judge("read while prepared", &own, &rows, &floors, &ceilings)?;
        }
        let verb = if rollback {
            "ROLLBACK PREPARED"
        } else {
            "COMMIT PREPARED"
        };
        let finish = format!("{verb} '{gid}'");
        let elsewhere = self.rng.chance(40);
        match &self.finisher {
            Some(finisher) if elsewhere => {
                finisher
                    .simple_query(&finish)
                    .await
                    .map_err(|e| CheckerError::db(&finish, &e))?;
            }
            _ => {
                self.sq(&finish).await?;
            }
        }
        self.pending_gid = None;
        if !rollback {
            self.ack(&acks);
        }
        Ok(())
    }

    /// `BEGIN; +PHANTOM; read it back; ROLLBACK`: inside the transaction the read sees
    /// exactly its own uncommitted value; nobody may ever see it afterwards.
    pub async fn write_rollback(&mut self) -> Result<(), CheckerError> {
        let slot = self.pick_slot();
        let t = self.write_target(slot);
        let own = self.own_read_target(slot);
        let begin = self
            .rng
            .pick(&["BEGIN", "START TRANSACTION ISOLATION LEVEL READ COMMITTED"]);
        self.sq(begin).await?;
        let proto = self.proto_any();
        let v = self.upd(proto, &t, PHANTOM).await?;
        let proto = self.proto_any();
        let rows = self.read_main(proto, &own).await?;
        self.judge("read of own uncommitted write", &own, &rows, &[v], &[v])?;
        if self.stores_in_transaction()
            && let Some(cache) = &self.sh.fault_cache
        {
            let (fam, keys) = own.scope(&self.sh.cfg.shape);
            cache.store(own.simple_sql(&self.sh.cfg.shape), fam, keys, rows);
        }
        let end = self.rng.pick(&["ROLLBACK", "ABORT"]);
        self.sq(end).await?;
        Ok(())
    }

    /// One parent incremented by a statement pgmemo must treat as table-wide although it
    /// names the key (`WriteStyle::AssignKey` / `InsertSelect`), autocommit, any protocol.
    /// The FK cascade carries the new value into `child`.
    pub async fn write_parent_styled(&mut self, style: WriteStyle) -> Result<(), CheckerError> {
        let slot = Slot {
            fam: Fam::Parents,
            key: self.rng.below(self.sh.cfg.shape.parents),
        };
        let t = WriteTarget {
            slot,
            via_partition: false,
            style,
        };
        let proto = self.proto_any();
        self.count(slot);
        let v = self.upd(proto, &t, 1).await?;
        self.ack(&[(slot, v)]);
        Ok(())
    }

    /// `UPDATE parent SET v = v + 1 WHERE id BETWEEN lo AND hi` over 1–3 parents: +1 on
    /// every key of the range (and, by cascade, on their children). The rows are first
    /// locked in key order (`PARENT_RANGE_LOCK`), in one multi-statement Query (implicit
    /// transaction) or in an explicit block with each statement in any protocol.
    pub async fn write_range(&mut self) -> Result<(), CheckerError> {
        let parents = self.sh.cfg.shape.parents;
        let lo = self.rng.below(parents);
        let hi = lo + self.rng.below((parents - lo).min(3));
        let params = [lo as i32, hi as i32];
        let slots: Vec<Slot> = (lo..=hi)
            .map(|key| Slot {
                fam: Fam::Parents,
                key,
            })
            .collect();
        for slot in &slots {
            self.count(*slot);
        }
        let rows = if self.rng.chance(50) {
            let begin = self.rng.pick(&["BEGIN", "START TRANSACTION"]);
            self.sq(begin).await?;
            let proto = self.proto_any();
            self.query_ints(proto, PARENT_RANGE_LOCK, &params).await?;
            let proto = self.proto_any();
            let rows = self.query_ints(proto, PARENT_RANGE_UPDATE, &params).await?;
            self.sq("COMMIT").await?;
            rows
        } else {
            let sql = format!(
                "{}; {}",
                inline_ints(PARENT_RANGE_LOCK, &params),
                inline_ints(PARENT_RANGE_UPDATE, &params)
            );
            let mut sets = simple_sets(&self.sq(&sql).await?)?;
            match (sets.len(), sets.pop()) {
                (2, Some(rows)) => rows,
                (n, _) => {
                    return Err(CheckerError::Shape(format!("{sql}: {n} result sets")));
                }
            }
        };
        let mut written = Vec::with_capacity(rows.len());
        for row in &rows {
            match row.as_slice() {
                [id, v] => written.push((*id, *v)),
                _ => return Err(CheckerError::Shape(format!("range update row {row:?}"))),
            }
        }
        written.sort_unstable();
        let expected: Vec<i64> = (lo..=hi).map(|k| k as i64).collect();
        if written.iter().map(|(k, _)| *k).collect::<Vec<_>>() != expected {
            return Err(CheckerError::Shape(format!(
                "range update of {lo}..={hi} returned {rows:?}"
            )));
        }
        let acks: Vec<(Slot, i64)> = slots
            .iter()
            .zip(&written)
            .map(|(slot, (_, v))| (*slot, *v))
            .collect();
        self.ack(&acks);
        Ok(())
    }
}
