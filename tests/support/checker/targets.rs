//! What the checker reads and writes: the SQL of every read and write target in the simple
//! protocol (literals) and the extended one (parameters), the conversion of either kind of
//! result to plain `i64` rows, and the judgement of a read against floors and ceilings.

use tokio_postgres::SimpleQueryMessage;
use tokio_postgres::types::{ToSql, Type};

use super::CheckerError;
use super::schema::Shape;

/// A result set with every column converted to `i64` (each read selects only bigints).
pub(crate) type Rows = Vec<Vec<i64>>;

/// A family of monotone counters sharing one key space. The order is the lock order: a
/// transaction touching several keys updates them in (family, key) order, so writers never
/// deadlock each other.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Fam {
    /// `counters` (+ the view, the aggregates and the trigger-written `counters_audit`).
    Counters,
    /// `parent` (+ `child`, whose copy of `parent.v` follows by ON UPDATE CASCADE).
    Parents,
    /// The partitioned `events` (read and written through the parent or a partition).
    Events,
}

/// One key of one family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Slot {
    pub fam: Fam,
    pub key: usize,
}

/// A read the checker can judge.
#[derive(Clone, Debug)]
pub(crate) enum ReadTarget {
    Counter(usize),
    View(usize),
    Audit(usize),
    /// `sum(v)`, `max(v)` of one group of counters.
    Group(usize),
    /// `sum(v)`, `max(v)` of every group.
    AllGroups,
    /// Several counters by key (sorted, distinct).
    CounterSet(Vec<usize>),
    Parent(usize),
    /// Two parents pinned by key, `WHERE id IN (a, b)` (a < b): a read pgmemo may tie to
    /// those rows alone.
    ParentPair(usize, usize),
    /// The parents with `lo <= id <= hi`, `WHERE id BETWEEN lo AND hi`: not pinned to rows
    /// (table granularity).
    ParentRange(usize, usize),
    /// `sum(v)`, `max(v)` of every parent (table granularity).
    ParentSum,
    /// `min`, `max`, `count` of the children's cascaded copy of `parent.v`.
    Child(usize),
    Event(usize),
    /// The same row read straight from its partition.
    EventPartition(usize),
}

/// The parameter of an extended-protocol read.
pub(crate) enum Param {
    None,
    Int(i32),
    Ints(Vec<i32>),
    /// `$1`, `$2`, both int4.
    Pair(i32, i32),
}

impl Param {
    pub fn refs(&self) -> Vec<&(dyn ToSql + Sync)> {
        match self {
            Param::None => vec![],
            Param::Int(v) => vec![v],
            Param::Ints(v) => vec![v],
            Param::Pair(a, b) => vec![a, b],
        }
    }

    pub fn typed(&self) -> Vec<(&(dyn ToSql + Sync), Type)> {
        match self {
            Param::None => vec![],
            Param::Int(v) => vec![(v as &(dyn ToSql + Sync), Type::INT4)],
            Param::Ints(v) => vec![(v as &(dyn ToSql + Sync), Type::INT4_ARRAY)],
            Param::Pair(a, b) => vec![
                (a as &(dyn ToSql + Sync), Type::INT4),
                (b as &(dyn ToSql + Sync), Type::INT4),
            ],
        }
    }
}

/// One bound a read broke, before the caller adds who read what.
pub(crate) enum Violation {
    Stale(String),
    Phantom(String),
}

fn key(k: usize) -> i32 {
    // Shape::validate caps every key space far below i32::MAX.
    k as i32
}

impl ReadTarget {
    /// The statement with its key inlined (simple protocol; also the fault cache's key).
    pub fn simple_sql(&self, shape: &Shape) -> String {
        match self {
            ReadTarget::CounterSet(keys) => {
                let list: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
                format!(
                    "SELECT id::bigint, v FROM counters WHERE id IN ({}) ORDER BY id",
                    list.join(", ")
                )
            }
            ReadTarget::AllGroups | ReadTarget::ParentSum => self.param_sql(shape),
            ReadTarget::ParentPair(a, b) | ReadTarget::ParentRange(a, b) => self
                .param_sql(shape)
                .replace("$2", &b.to_string())
                .replace("$1", &a.to_string()),
            _ => {
                let (sql, k) = (self.param_sql(shape), self.scalar_key());
                sql.replace("$1", &k.to_string())
            }
        }
    }

    /// The statement with `$1` for the key (extended protocol).
    pub fn param_sql(&self, shape: &Shape) -> String {
        match self {
            ReadTarget::Counter(_) => "SELECT v FROM counters WHERE id = $1".into(),
            ReadTarget::View(_) => "SELECT v FROM counters_view WHERE id = $1".into(),
            ReadTarget::Audit(_) => "SELECT v FROM counters_audit WHERE id = $1".into(),
            ReadTarget::Group(_) => {
                "SELECT sum(v)::bigint, max(v) FROM counters WHERE grp = $1".into()
            }
            ReadTarget::AllGroups => "SELECT grp::bigint, sum(v)::bigint, max(v) FROM counters \
                                      GROUP BY grp ORDER BY grp"
                .into(),
            ReadTarget::CounterSet(_) => {
                "SELECT id::bigint, v FROM counters WHERE id = ANY($1) ORDER BY id".into()
            }
            ReadTarget::Parent(_) => "SELECT v FROM parent WHERE id = $1".into(),
            ReadTarget::ParentPair(..) => {
                "SELECT id::bigint, v FROM parent WHERE id IN ($1, $2) ORDER BY id".into()
            }
            ReadTarget::ParentRange(..) => {
                "SELECT id::bigint, v FROM parent WHERE id BETWEEN $1 AND $2 ORDER BY id".into()
            }
            ReadTarget::ParentSum => "SELECT sum(v)::bigint, max(v) FROM parent".into(),
            ReadTarget::Child(_) => "SELECT min(parent_v), max(parent_v), count(*) FROM child \
                                     WHERE parent_id = $1"
                .into(),
            ReadTarget::Event(_) => "SELECT v FROM events WHERE key = $1".into(),
            ReadTarget::EventPartition(k) => {
                format!("SELECT v FROM {} WHERE key = $1", shape.partition_name(*k))
            }
        }
    }

    fn scalar_key(&self) -> usize {
        match self {
            ReadTarget::Counter(k)
            | ReadTarget::View(k)
            | ReadTarget::Audit(k)
            | ReadTarget::Group(k)
            | ReadTarget::Parent(k)
            | ReadTarget::Child(k)
            | ReadTarget::Event(k)
            | ReadTarget::EventPartition(k) => *k,
            ReadTarget::AllGroups
            | ReadTarget::CounterSet(_)
            | ReadTarget::ParentPair(..)
            | ReadTarget::ParentRange(..)
            | ReadTarget::ParentSum => 0,
        }
    }

    pub fn param(&self) -> Param {
        match self {
            ReadTarget::AllGroups | ReadTarget::ParentSum => Param::None,
            ReadTarget::ParentPair(a, b) | ReadTarget::ParentRange(a, b) => {
                Param::Pair(key(*a), key(*b))
            }
            ReadTarget::CounterSet(keys) => Param::Ints(keys.iter().map(|k| key(*k)).collect()),
            _ => Param::Int(key(self.scalar_key())),
        }
    }

    /// The keys whose floors and ceilings bound this read's result.
    pub fn scope(&self, shape: &Shape) -> (Fam, Vec<usize>) {
        match self {
            ReadTarget::Counter(k) | ReadTarget::View(k) | ReadTarget::Audit(k) => {
                (Fam::Counters, vec![*k])
            }
            ReadTarget::Group(g) => (Fam::Counters, shape.group_keys(*g)),
            ReadTarget::AllGroups => (Fam::Counters, (0..shape.counters).collect()),
            ReadTarget::CounterSet(keys) => (Fam::Counters, keys.clone()),
            ReadTarget::Parent(k) | ReadTarget::Child(k) => (Fam::Parents, vec![*k]),
            ReadTarget::ParentPair(a, b) => (Fam::Parents, vec![*a, *b]),
            ReadTarget::ParentRange(lo, hi) => (Fam::Parents, (*lo..=*hi).collect()),
            ReadTarget::ParentSum => (Fam::Parents, (0..shape.parents).collect()),
            ReadTarget::Event(k) | ReadTarget::EventPartition(k) => (Fam::Events, vec![*k]),
        }
    }

    /// Judges `rows` against `floors`/`ceilings` (aligned with `scope().1`). `Err` when the
    /// result does not even have the expected shape.
    pub fn judge(
        &self,
        rows: &Rows,
        shape: &Shape,
        floors: &[i64],
        ceilings: &[i64],
    ) -> Result<Vec<Violation>, CheckerError> {
        let mut out = Vec::new();
        let at = |i: usize| (floors.get(i).copied(), ceilings.get(i).copied());
        match self {
            ReadTarget::Counter(_)
            | ReadTarget::View(_)
            | ReadTarget::Audit(_)
            | ReadTarget::Parent(_)
            | ReadTarget::Event(_)
            | ReadTarget::EventPartition(_) => {
                let row = one_row(rows, 1)?;
                let (f, c) = bounds_at(at(0))?;
                bound(&mut out, "v", row[0], f, c);
            }
            ReadTarget::Child(_) => {
                let row = one_row(rows, 3)?;
                let (f, c) = bounds_at(at(0))?;
                if row[2] != shape.children as i64 {
                    return Err(CheckerError::Shape(format!(
                        "{self:?}: {} children, expected {}",
                        row[2], shape.children
                    )));
                }
                bound(&mut out, "min(parent_v)", row[0], f, c);
                bound(&mut out, "max(parent_v)", row[1], f, c);
            }
            ReadTarget::Group(_) | ReadTarget::ParentSum => {
                let row = one_row(rows, 2)?;
                aggregate(&mut out, row[0], row[1], floors, ceilings);
            }
            ReadTarget::AllGroups => {
                if rows.len() != shape.groups {
                    return Err(CheckerError::Shape(format!(
                        "AllGroups: {} groups, expected {}",
                        rows.len(),
                        shape.groups
                    )));
                }
                for (g, row) in rows.iter().enumerate() {
                    if row.len() != 3 || row[0] != g as i64 {
                        return Err(CheckerError::Shape(format!("AllGroups row {g}: {row:?}")));
                    }
                    let keys = shape.group_keys(g);
                    let f: Vec<i64> = keys
                        .iter()
                        .filter_map(|k| floors.get(*k))
                        .copied()
                        .collect();
                    let c: Vec<i64> = keys
                        .iter()
                        .filter_map(|k| ceilings.get(*k))
                        .copied()
                        .collect();
                    aggregate(&mut out, row[1], row[2], &f, &c);
                }
            }
            ReadTarget::CounterSet(_)
            | ReadTarget::ParentPair(..)
            | ReadTarget::ParentRange(..) => {
                let (_, keys) = self.scope(shape);
                if rows.len() != keys.len() {
                    return Err(CheckerError::Shape(format!(
                        "{self:?}: {} rows, expected {}",
                        rows.len(),
                        keys.len()
                    )));
                }
                for (i, (row, k)) in rows.iter().zip(&keys).enumerate() {
                    if row.len() != 2 || row[0] != *k as i64 {
                        return Err(CheckerError::Shape(format!("{self:?} row {i}: {row:?}")));
                    }
                    let (f, c) = bounds_at(at(i))?;
                    bound(&mut out, "v", row[1], f, c);
                }
            }
        }
        Ok(out)
    }
}

fn one_row(rows: &Rows, cols: usize) -> Result<&[i64], CheckerError> {
    match rows.as_slice() {
        [row] if row.len() == cols => Ok(row),
        _ => Err(CheckerError::Shape(format!(
            "expected one row of {cols} columns, got {rows:?}"
        ))),
    }
}

fn bounds_at((f, c): (Option<i64>, Option<i64>)) -> Result<(i64, i64), CheckerError> {
    f.zip(c)
        .ok_or_else(|| CheckerError::Shape("no floor/ceiling for a result column".into()))
}

fn bound(out: &mut Vec<Violation>, what: &str, value: i64, floor: i64, ceiling: i64) {
    if value < floor {
        out.push(Violation::Stale(format!(
            "{what} = {value} < {floor} acknowledged before the read was sent"
        )));
    } else if value > ceiling {
        out.push(Violation::Phantom(format!(
            "{what} = {value} > {ceiling}, the most that can have committed"
        )));
    }
}

/// `sum` is bounded by the sums of the bounds, `max` by their maxima.
fn aggregate(out: &mut Vec<Violation>, sum: i64, max: i64, floors: &[i64], ceilings: &[i64]) {
    let top = |v: &[i64]| v.iter().copied().max().unwrap_or(0);
    bound(
        out,
        "sum(v)",
        sum,
        floors.iter().sum(),
        ceilings.iter().sum(),
    );
    bound(out, "max(v)", max, top(floors), top(ceilings));
}

/// How an increment of one key is written. Every style adds the delta to exactly that key
/// and returns the new value; they differ in what pgmemo may conclude about the rows written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WriteStyle {
    /// `UPDATE t SET v = v + d WHERE pk = k`: rows known by key (unless the table has a
    /// trigger, as `counters` does, or a partition is written).
    Plain,
    /// `UPDATE parent SET id = id, v = v + d WHERE id = k`: assigns the primary key, so the
    /// write is table-wide however its rows are chosen. `parent` only.
    AssignKey,
    /// `INSERT INTO parent (id, v) SELECT id, v + d FROM parent WHERE id = k FOR UPDATE
    /// ON CONFLICT (id) DO UPDATE SET v = EXCLUDED.v`: table-wide (INSERT ... SELECT, ON
    /// CONFLICT). `FOR UPDATE` makes the SELECT wait for a concurrent increment and read
    /// its result (without it, READ COMMITTED would compute `EXCLUDED.v` from an older
    /// snapshot and lose increments). `parent` only.
    InsertSelect,
}

/// An increment of one counter.
#[derive(Clone, Debug)]
pub(crate) struct WriteTarget {
    pub slot: Slot,
    /// For `events`: update the partition directly instead of the partitioned table.
    pub via_partition: bool,
    /// Anything but `Plain` only for `parent`.
    pub style: WriteStyle,
}

impl WriteTarget {
    fn table_and_column(&self, shape: &Shape) -> (String, &'static str) {
        match self.slot.fam {
            Fam::Counters => ("counters".into(), "id"),
            Fam::Parents => ("parent".into(), "id"),
            Fam::Events if self.via_partition => (shape.partition_name(self.slot.key), "key"),
            Fam::Events => ("events".into(), "key"),
        }
    }

    pub fn simple_sql(&self, shape: &Shape, delta: i64) -> String {
        self.param_sql(shape)
            .replace("$2", &delta.to_string())
            .replace("$1", &self.slot.key.to_string())
    }

    /// `$1` = key (int4), `$2` = delta (int8).
    pub fn param_sql(&self, shape: &Shape) -> String {
        let (table, col) = self.table_and_column(shape);
        match self.style {
            WriteStyle::AssignKey if self.slot.fam == Fam::Parents => {
                "UPDATE parent SET id = id, v = v + $2 WHERE id = $1 RETURNING v".into()
            }
            WriteStyle::InsertSelect if self.slot.fam == Fam::Parents => {
                "INSERT INTO parent (id, v) SELECT id, v + $2 FROM parent WHERE id = $1 \
                 FOR UPDATE ON CONFLICT (id) DO UPDATE SET v = EXCLUDED.v RETURNING v"
                    .into()
            }
            _ => format!("UPDATE {table} SET v = v + $2 WHERE {col} = $1 RETURNING v"),
        }
    }

    pub fn key_param(&self) -> i32 {
        key(self.slot.key)
    }
}

/// `UPDATE parent SET v = v + 1 WHERE id BETWEEN lo AND hi`: a range increment (table-wide
/// for pgmemo), `$1` = lo, `$2` = hi (int4). Returns every row written.
pub(crate) const PARENT_RANGE_UPDATE: &str =
    "UPDATE parent SET v = v + 1 WHERE id BETWEEN $1 AND $2 RETURNING id::bigint, v";
/// Locks the rows `PARENT_RANGE_UPDATE` will write in key order first: the UPDATE itself
/// locks them in scan order (heap order on a small table), which could deadlock with the
/// writers that lock keys in (family, key) order.
pub(crate) const PARENT_RANGE_LOCK: &str =
    "SELECT id::bigint FROM parent WHERE id BETWEEN $1 AND $2 ORDER BY id FOR UPDATE";

/// A statement with int4 parameters `$1`, `$2`, ... inlined as literals (simple protocol).
pub(crate) fn inline_ints(param_sql: &str, params: &[i32]) -> String {
    let mut sql = param_sql.to_owned();
    // Highest first, so `$1` does not eat the start of `$10`.
    for (i, v) in params.iter().enumerate().rev() {
        sql = sql.replace(&format!("${}", i + 1), &v.to_string());
    }
    sql
}

/// Splits a simple-protocol response into one result set per statement, parsing every
/// value as `i64`.
pub(crate) fn simple_sets(messages: &[SimpleQueryMessage]) -> Result<Vec<Rows>, CheckerError> {
    let mut sets = Vec::new();
    let mut current = Vec::new();
    for message in messages {
        match message {
            SimpleQueryMessage::Row(row) => {
                let mut values = Vec::with_capacity(row.len());
                for i in 0..row.len() {
                    let text = row.get(i).ok_or_else(|| {
                        CheckerError::Shape(format!("NULL in column {i} of a simple result"))
                    })?;
                    let value = text.parse::<i64>().map_err(|e| {
                        CheckerError::Shape(format!("column {i} = {text:?} is not a bigint: {e}"))
                    })?;
                    values.push(value);
                }
                current.push(values);
            }
            SimpleQueryMessage::CommandComplete(_) => sets.push(std::mem::take(&mut current)),
            _ => {}
        }
    }
    Ok(sets)
}

/// The value of a one-row, one-column result (`RETURNING v`).
pub(crate) fn single_value(rows: &Rows) -> Option<i64> {
    match rows.as_slice() {
        [row] => match row.as_slice() {
            [v] => Some(*v),
            _ => None,
        },
        _ => None,
    }
}

/// The only result set of a single-statement simple Query.
pub(crate) fn simple_rows(messages: &[SimpleQueryMessage]) -> Result<Rows, CheckerError> {
    let mut sets = simple_sets(messages)?;
    match sets.len() {
        1 => Ok(sets.pop().unwrap_or_default()),
        n => Err(CheckerError::Shape(format!("{n} result sets, expected 1"))),
    }
}

/// Extended-protocol rows as `i64` (every selected column is a bigint).
pub(crate) fn extended_rows(rows: &[tokio_postgres::Row]) -> Result<Rows, CheckerError> {
    rows.iter()
        .map(|row| {
            (0..row.len())
                .map(|i| match row.try_get::<_, Option<i64>>(i) {
                    Ok(Some(v)) => Ok(v),
                    Ok(None) => Err(CheckerError::Shape(format!("NULL in column {i}"))),
                    Err(e) => Err(CheckerError::Shape(format!("column {i}: {e}"))),
                })
                .collect()
        })
        .collect()
}
