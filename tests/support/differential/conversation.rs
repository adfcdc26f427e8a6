//! The conversation generator: a `u64` seed gives one random but valid client conversation
//! (only `pgmemo::rng::Rng`, no outside randomness). Steps mix the simple and extended
//! protocols: cacheable reads (a few repeated so the cache gets hits), writes to the tables
//! those reads use, pipelines with and without Sync (Flush-ended ones continued by the next
//! step), errors mid-pipeline, transactions and savepoints, SET/RESET/DISCARD ALL,
//! `set_config` and SQL `PREPARE`/`EXECUTE`, named and unnamed statements reused and closed,
//! portals, cursors, LISTEN/NOTIFY, COPY both ways. The generator keeps a rough model of the
//! session (open transaction, open pipeline, statement names) to stay mostly valid; where the
//! model is wrong the server answers with an error, which both sides must then agree on.

use pgmemo::rng::Rng;

use super::msg::{Msg, Param};

/// COPY FROM STDIN payload sent when the server asks for it (CopyInResponse).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyIn {
    pub chunks: Vec<Vec<u8>>,
    /// End with CopyFail instead of CopyDone.
    pub fail: bool,
}

/// One step: messages sent in one write; the runner reads every reply they produce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub msgs: Vec<Msg>,
    pub copy: Option<CopyIn>,
    /// Cancel the running statement (the runner sends CancelRequests until it is answered).
    pub cancel: bool,
    /// Which of the conversation's sessions sends it (0, or 1 for the second session).
    pub session: u8,
}

impl Step {
    pub fn new(msgs: Vec<Msg>) -> Step {
        Step {
            msgs,
            copy: None,
            cancel: false,
            session: 0,
        }
    }

    pub fn query(sql: impl Into<String>) -> Step {
        Step::new(vec![Msg::Query(sql.into())])
    }

    /// Readable lines, one per message (the second session's prefixed `B:`).
    pub fn render(&self) -> String {
        let mut out = if self.session == 1 { "B: " } else { "" }.to_string();
        out += &self
            .msgs
            .iter()
            .map(Msg::render)
            .collect::<Vec<_>>()
            .join(" | ");
        if let Some(copy) = &self.copy {
            let data: Vec<String> = copy
                .chunks
                .iter()
                .map(|c| format!("{:?}", String::from_utf8_lossy(c)))
                .collect();
            out.push_str(&format!(
                " + copy [{}]{}",
                data.join(", "),
                if copy.fail { " CopyFail" } else { " CopyDone" }
            ));
        }
        if self.cancel {
            out.push_str(" + CancelRequest");
        }
        out
    }
}

/// A generated conversation.
#[derive(Debug, Clone)]
pub struct Conversation {
    pub seed: u64,
    pub steps: Vec<Step>,
}

impl Conversation {
    pub fn render(&self) -> String {
        self.steps
            .iter()
            .enumerate()
            .map(|(i, s)| format!("  {i:3}: {}", s.render()))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// A statement shape: SQL with `$n` int parameters, each drawn from its range.
#[derive(Debug, Clone, Copy)]
struct Shape {
    sql: &'static str,
    params: &'static [(i32, i32)],
}

const fn shape(sql: &'static str, params: &'static [(i32, i32)]) -> Shape {
    Shape { sql, params }
}

/// Reads, cacheable or not; every multi-row one is ordered (physical order may differ
/// between the two databases).
const READS: &[Shape] = &[
    shape(
        "SELECT id, name, price FROM items WHERE grp = $1 ORDER BY id",
        &[(0, 4)],
    ),
    shape("SELECT * FROM items WHERE id = $1", &[(1, 24)]),
    shape("SELECT label FROM ref WHERE id = $1", &[(1, 13)]),
    shape("SELECT * FROM items ORDER BY id", &[]),
    shape("SELECT count(*), sum(price), max(f) FROM items", &[]),
    shape("SELECT * FROM grp_totals ORDER BY grp", &[]),
    shape("TABLE ref ORDER BY id", &[]),
    shape(
        "SELECT n.id, n.body, i.name FROM notes n JOIN items i ON i.id = n.item_id \
         WHERE i.grp = $1 ORDER BY n.id",
        &[(0, 4)],
    ),
    shape(
        "SELECT add_one(id), label FROM ref WHERE id <= $1 ORDER BY id",
        &[(0, 13)],
    ),
    shape("VALUES (1, 'one'), (2, 'two')", &[]),
    shape(
        "SELECT id, f, d, ts, b FROM items WHERE id <= $1 ORDER BY id",
        &[(1, 8)],
    ),
    shape(
        "SELECT id, price * $1 AS scaled FROM items WHERE grp = $2 ORDER BY id",
        &[(1, 3), (0, 4)],
    ),
    shape("SELECT id, name FROM alt.items ORDER BY id", &[]),
    shape(
        "SELECT id, name FROM public.items WHERE id > $1 ORDER BY id",
        &[(10, 25)],
    ),
    // Texts that differ only inside literals, quoted names or comments, or in case.
    shape(
        "SELECT 'a  b' AS v, label FROM ref WHERE id = $1",
        &[(11, 13)],
    ),
    shape(
        "SELECT 'a b' AS v, label FROM ref WHERE id = $1",
        &[(11, 13)],
    ),
    shape(
        "SELECT '/* c */' AS v, label FROM ref WHERE id = $1",
        &[(11, 13)],
    ),
    shape("SELECT '' AS v, label FROM ref WHERE id = $1", &[(11, 13)]),
    shape(
        "SELECT 'a -- b' AS v, label FROM ref WHERE id = $1",
        &[(11, 13)],
    ),
    shape("SELECT 'a' AS v, label FROM ref WHERE id = $1", &[(11, 13)]),
    shape(
        "SELECT $$x  y$$ AS v, label FROM ref WHERE id = $1",
        &[(11, 13)],
    ),
    shape(
        "SELECT E'it\\'s  x' AS v, label FROM ref WHERE id = $1",
        &[(11, 13)],
    ),
    shape(
        "SELECT 'a\\b' AS v, label FROM ref WHERE id = $1",
        &[(11, 13)],
    ),
    shape(
        "SELECT label AS \"a  b\" FROM ref WHERE id = $1",
        &[(11, 13)],
    ),
    shape(
        "SELECT label AS \"a b\" FROM ref WHERE id = $1",
        &[(11, 13)],
    ),
    shape("select label from ref where id = $1", &[(11, 13)]),
    shape(
        "SELECT label FROM ref WHERE id = $1 -- trailing",
        &[(11, 13)],
    ),
    shape(
        "SELECT label FROM ref WHERE id = $1 /* pgmemo:nocache */",
        &[(11, 13)],
    ),
    shape(
        "SELECT label FROM ref WHERE id = $1 -- pgmemo:ttl=1s",
        &[(11, 13)],
    ),
    // Larger than pgmemo's out-queue (256 KiB) at the top of the range.
    shape(
        "SELECT g, repeat('x', 100) AS pad FROM generate_series(1, $1) g",
        &[(1, 4000)],
    ),
    shape(
        "SELECT item_id, old_price FROM audit ORDER BY item_id, old_price",
        &[],
    ),
    shape("SELECT $1 AS v", &[(0, 20)]),
    // Not cacheable: settings, locks, failures.
    shape("SELECT * FROM tenant_items ORDER BY id", &[]),
    shape("SELECT current_setting('app.tenant', true) AS tenant", &[]),
    shape("SELECT current_setting('search_path') AS sp", &[]),
    shape("SELECT 10 / ($1 - 3) AS q", &[(1, 5)]),
    shape("SELECT count(*) FROM notes WHERE item_id = $1", &[(1, 22)]),
    shape("SELECT current_user, session_user", &[]),
];

/// How many of `READS` are plain cacheable reads (the rest read settings, lock or fail).
const CACHEABLE_READS: usize = 32;

/// Writes. A multi-row one must not be able to fail on one of its rows: the error names the
/// first failing row, and which row comes first is physical order, which differs between the
/// two databases (pgmemo's hits skip scans that prune pages).
const WRITES: &[Shape] = &[
    shape(
        "UPDATE items SET price = price + $1 WHERE id = $2",
        &[(1, 5), (1, 24)],
    ),
    shape(
        // Never NULL: a multi-row write that fails names its first failing row, and which
        // row comes first is physical order, which differs between the two databases.
        "UPDATE items SET name = 'renamed' || coalesce($1::text, '-') WHERE grp = $2",
        &[(1, 9), (0, 4)],
    ),
    shape(
        "INSERT INTO items (id, grp, name, price) VALUES ($1, $2, 'new', 9.99)",
        &[(18, 30), (0, 4)],
    ),
    shape(
        "INSERT INTO items (id, grp, name) VALUES ($1, $2, 'up') \
         ON CONFLICT (id) DO UPDATE SET grp = EXCLUDED.grp",
        &[(1, 30), (0, 4)],
    ),
    shape("DELETE FROM items WHERE id = $1", &[(1, 24)]),
    shape(
        "INSERT INTO notes (id, item_id, body) VALUES ($1, $2, 'n')",
        &[(10, 40), (1, 24)],
    ),
    shape(
        "UPDATE notes SET body = body || '+' WHERE item_id = $1",
        &[(1, 21)],
    ),
    shape(
        "UPDATE alt.items SET price = price + 1 WHERE id = $1",
        &[(1, 11)],
    ),
    shape(
        "UPDATE items SET price = price - 1 WHERE id = $1 RETURNING id, price",
        &[(1, 24)],
    ),
    shape(
        "WITH d AS (DELETE FROM notes WHERE id = $1 RETURNING item_id) SELECT count(*) FROM d",
        &[(1, 40)],
    ),
    shape("UPDATE items SET f = f * 2 WHERE grp = $1", &[(0, 4)]),
    shape("DELETE FROM audit WHERE item_id = $1", &[(1, 11)]),
    // Locks like a write.
    shape(
        "SELECT id, name FROM items WHERE id = $1 FOR UPDATE",
        &[(1, 22)],
    ),
];

/// Writes whose targets SQL does not show (a function, a procedure, DO): pgmemo invalidates
/// everything for them, so they are rarer (they empty the cache of every worker).
const OPAQUE_WRITES: &[Shape] = &[
    shape("SELECT touch_item($1)", &[(1, 22)]),
    shape("CALL bump_grp($1)", &[(0, 4)]),
    shape(
        "DO $$ BEGIN UPDATE items SET f = f + 1 WHERE id = 2; END $$",
        &[],
    ),
];

/// Statements that change the session's settings (simple text, no parameters).
const SETTINGS: &[&str] = &[
    "SET search_path = alt, public",
    "SET search_path = public",
    "RESET search_path",
    "SET extra_float_digits = 0",
    "SET extra_float_digits = 3",
    "SET DateStyle = 'SQL, DMY'",
    "SET DateStyle = 'ISO, MDY'",
    "SET TimeZone = 'Asia/Tokyo'",
    "SET TimeZone = 'UTC'",
    "SET bytea_output = 'escape'",
    "RESET bytea_output",
    "SET IntervalStyle = 'sql_standard'",
    "SET application_name = 'diff'",
    "SET client_min_messages = error",
    "RESET client_min_messages",
    "SET enable_seqscan = off",
    "SET app.tenant = 'item1'",
    "RESET app.tenant",
    "RESET ALL",
    "DISCARD ALL",
    "SET LOCAL search_path = alt, public",
    "SET LOCAL TimeZone = 'America/New_York'",
    "SELECT set_config('search_path', 'alt, public', false)",
    "SELECT set_config('app.tenant', 'item2', true)",
    "SELECT set_config('extra_float_digits', '0', false)",
    "SELECT use_schema('alt, public')",
    "SELECT use_schema('public')",
    "SELECT set_tenant('item1')",
    "SELECT set_tenant('alt')",
    "SET ROLE diff_reader",
    "RESET ROLE",
    "SET SESSION AUTHORIZATION diff_reader",
    "RESET SESSION AUTHORIZATION",
    "SET client_encoding = 'LATIN1'",
    "RESET client_encoding",
    "SET standard_conforming_strings = off",
    "RESET standard_conforming_strings",
    "CREATE TEMP TABLE ref AS SELECT 12 AS id, 'temp' AS label",
    "DROP TABLE IF EXISTS pg_temp.ref",
    "DISCARD TEMP",
    // Prepared statements made and dropped where no SQL text of the client's shows it.
    "DO $$ BEGIN EXECUTE 'PREPARE s1 AS SELECT 1'; END $$",
    "DO $$ BEGIN EXECUTE 'DEALLOCATE ALL'; END $$",
];

const ERRORS: &[&str] = &[
    "SELECT 1/0",
    "SELECT * FROM no_such_table",
    "SELEC 1",
    "SELECT nosuchcolumn FROM items",
    "",
    ";",
    "SELECT 1; SELECT 1/0; SELECT 2",
    "-- ping",
    "/* ping */",
    "INSERT INTO ref VALUES (1, 'dup')",
];

/// What the generator believes about the session.
struct Model {
    in_tx: bool,
    /// The last step ended with Flush: the next must be extended and end with Sync.
    open_pipeline: bool,
    /// Named statements: (name, shape, declared types).
    stmts: Vec<(String, Shape, bool)>,
    sql_prepared: Vec<(String, Shape)>,
    cursors: Vec<String>,
    next: u32,
    /// This conversation may run what makes pgmemo invalidate everything (writes it cannot
    /// see through, user functions calling `set_config`, temporary tables): those empty the
    /// cache of every worker, so most conversations leave them out to keep hits to compare.
    opaque: bool,
    /// The second session of a two-session conversation: it only reads (no writes, no locking
    /// reads, no LISTEN), so it never waits for a lock the first session holds (the runner
    /// answers one step at a time) and the first never waits for it.
    reader: bool,
    /// The only session of its conversation (DDL would make a second one wait for its lock).
    solo: bool,
    /// `ref.label` is renamed `lbl` (the conversation renames it back at its end).
    renamed: bool,
    /// The text of the unnamed statement, if the last one was parsed by a group.
    last_unnamed: Option<String>,
    /// Reads repeated through the conversation (so later ones hit).
    favourites: Vec<Step>,
}

/// Generates the conversation of `seed`.
pub fn generate(seed: u64) -> Conversation {
    let mut rng = Rng::new(seed);
    let model = |opaque: bool, reader: bool| Model {
        in_tx: false,
        open_pipeline: false,
        stmts: Vec::new(),
        sql_prepared: Vec::new(),
        cursors: Vec::new(),
        next: 0,
        opaque,
        reader,
        solo: false,
        renamed: false,
        last_unnamed: None,
        favourites: Vec::new(),
    };
    let mut first = model(rng.chance(20), false);
    for _ in 0..1 + rng.below(4) {
        let s = if rng.chance(50) {
            simple_read(&mut rng, CACHEABLE_READS)
        } else {
            extended_read(&mut rng, &mut first, CACHEABLE_READS, true)
        };
        first.favourites.push(s);
    }
    // A second session reading what the first writes, often under other settings: the
    // same favourites, so its reads meet the first session's entries.
    let mut second = model(false, true);
    second.favourites = first.favourites.clone();
    let two = rng.chance(30);
    first.solo = !two;
    let mut models = [first, second];
    let len = 6 + rng.below(26);
    let mut steps = Vec::with_capacity(len + 4);
    for _ in 0..len {
        let session = usize::from(two && rng.chance(40));
        let m = &mut models[session];
        let mut step = next_step(&mut rng, m);
        step.session = session as u8;
        for msg in &step.msgs {
            match msg {
                Msg::Query(_) => m.last_unnamed = None,
                Msg::Parse { name, sql, .. } if name.is_empty() => {
                    m.last_unnamed = Some(sql.clone())
                }
                _ => {}
            }
        }
        steps.push(step);
    }
    for (session, m) in models.iter().enumerate() {
        let mut end = Vec::new();
        if m.open_pipeline {
            end.push(Step::new(vec![Msg::Sync]));
        }
        if m.in_tx && rng.chance(70) {
            end.push(Step::query(if rng.chance(50) {
                "COMMIT"
            } else {
                "ROLLBACK"
            }));
        }
        // A renamed column is renamed back at the end, outside any transaction (the model may
        // not know of one a multi-statement Query left open), even when the model says it
        // was renamed back already (that may have failed in an aborted transaction).
        let renamed_ever = steps.iter().any(|s| {
            s.msgs
                .iter()
                .any(|m| matches!(m, Msg::Query(q) if q.contains("label TO lbl")))
        });
        if session == 0 && renamed_ever {
            end.push(Step::query("ROLLBACK"));
            end.push(Step::query("ALTER TABLE ref RENAME COLUMN lbl TO label"));
        }
        for mut step in end {
            step.session = session as u8;
            steps.push(step);
        }
    }
    Conversation { seed, steps }
}

fn next_step(rng: &mut Rng, m: &mut Model) -> Step {
    if m.open_pipeline {
        if rng.chance(5) {
            // A simple Query inside the open pipeline: it runs (and commits what the
            // pipeline did so far) unless an error there makes the server skip it.
            return simple_read(rng, CACHEABLE_READS);
        }
        // Continue the pipeline: more groups, then usually a Sync.
        let mut msgs = Vec::new();
        if rng.chance(70) {
            msgs.extend(group_msgs(rng, m, READS.len(), false));
        }
        if rng.chance(80) {
            msgs.push(Msg::Sync);
            m.open_pipeline = false;
        } else {
            msgs.push(Msg::Flush);
        }
        return Step::new(msgs);
    }
    if m.in_tx && rng.chance(30) {
        let sql = rng
            .choose(&["COMMIT", "ROLLBACK", "END", "ABORT", "COMMIT AND CHAIN"])
            .unwrap_or("COMMIT");
        m.in_tx = sql == "COMMIT AND CHAIN";
        m.cursors.clear();
        return Step::query(sql);
    }
    // What the reading second session leaves out: writes, LISTEN/NOTIFY, COPY FROM STDIN,
    // multi-statement Queries (they write).
    let w = |weight: u32| if m.reader { 0 } else { weight };
    let kind = rng.weighted(&[
        16,    // 0 simple read
        16,    // 1 extended read
        22,    // 2 repeat a favourite
        w(14), // 3 write
        8,     // 4 settings
        7,     // 5 transaction / savepoint
        4,     // 6 SQL PREPARE / EXECUTE
        3,     // 7 cursor
        w(3),  // 8 LISTEN / NOTIFY
        3,     // 9 COPY TO STDOUT
        w(3),  // 10 COPY FROM STDIN
        3,     // 11 error
        w(5),  // 12 multi-statement Query
        6,     // 13 pipeline
        4,     // 14 Flush-ended pipeline
        2,     // 15 catalog views of the session
        3,     // 16 Describe / Close statements
        2,     // 17 named portal, partial fetches
        1,     // 18 a statement cancelled
        2,     // 19 FunctionCall (the fast-path protocol)
    ]);
    match kind {
        0 => simple_read(rng, READS.len()),
        1 => extended_read(rng, m, READS.len(), false),
        2 => rng
            .choose(&(0..m.favourites.len()).collect::<Vec<_>>())
            .and_then(|i| m.favourites.get(i).cloned())
            .unwrap_or_else(|| simple_read(rng, CACHEABLE_READS)),
        3 => {
            if rng.chance(50) {
                let (sql, _) = { let s = pick_write(rng, m.opaque); inline(rng, s) };
                Step::query(sql)
            } else {
                let mut msgs = { let s = pick_write(rng, m.opaque); group_for(rng, m, s, false) };
                msgs.push(Msg::Sync);
                Step::new(msgs)
            }
        }
        4 if m.opaque && m.solo && !m.in_tx && rng.chance(15) => {
            // DDL through pgmemo: cached reads of `ref` must not outlive its column's name.
            m.renamed = !m.renamed;
            Step::query(if m.renamed {
                "ALTER TABLE ref RENAME COLUMN label TO lbl"
            } else {
                "ALTER TABLE ref RENAME COLUMN lbl TO label"
            })
        }
        4 => {
            let sql = pick_setting(rng, m.opaque);
            if sql == "DISCARD ALL" && !m.in_tx {
                m.stmts.clear();
                m.sql_prepared.clear();
            }
            if rng.chance(75) {
                Step::query(sql)
            } else {
                unnamed_group(sql)
            }
        }
        5 => {
            if m.in_tx {
                let sql = rng.choose(&[
                        "SAVEPOINT s1",
                        "SAVEPOINT s2",
                        "ROLLBACK TO SAVEPOINT s1",
                        "RELEASE SAVEPOINT s1",
                        "ROLLBACK TO s2",
                        "BEGIN",
                    ])
                    .unwrap_or("SAVEPOINT s1");
                Step::query(sql)
            } else {
                m.in_tx = true;
                let sql = rng.choose(&[
                        "BEGIN",
                        "BEGIN",
                        "BEGIN ISOLATION LEVEL REPEATABLE READ",
                        "START TRANSACTION READ ONLY",
                        "COMMIT",
                    ])
                    .unwrap_or("BEGIN");
                if sql == "COMMIT" {
                    m.in_tx = false;
                }
                Step::query(sql)
            }
        }
        6 => sql_prepare(rng, m),
        7 => cursor(rng, m),
        8 => Step::query(
            rng.choose(&[
                "LISTEN diffch",
                "NOTIFY diffch, 'hello'",
                "SELECT pg_notify('diffch', 'via function')",
                "UNLISTEN *",
                "LISTEN diffch; NOTIFY diffch",
            ])
            .unwrap_or("LISTEN diffch"),
        ),
        9 => {
            let sql = rng.choose(&[
                    "COPY (SELECT id, name, price FROM items ORDER BY id) TO STDOUT",
                    "COPY (SELECT * FROM ref ORDER BY id) TO STDOUT WITH (FORMAT csv, HEADER)",
                    "COPY (SELECT id, b FROM items WHERE id < 5 ORDER BY id) TO STDOUT (FORMAT binary)",
                ])
                .unwrap_or("COPY (SELECT 1) TO STDOUT");
            if rng.chance(60) {
                Step::query(sql)
            } else {
                unnamed_group(sql)
            }
        }
        10 => copy_in(rng),
        11 => {
            let sql = rng.choose(ERRORS).unwrap_or("SELECT 1/0");
            Step::query(sql)
        }
        12 => {
            let n = 2 + rng.below(2);
            let mut parts = Vec::new();
            for _ in 0..n {
                let part = match rng.below(4) {
                    0 => { let s = pick(rng, &READS[..CACHEABLE_READS]); inline(rng, s) }.0,
                    1 => { let s = pick_write(rng, m.opaque); inline(rng, s) }.0,
                    2 => (pick_setting(rng, m.opaque)).to_string(),
                    _ => (rng.choose(&["BEGIN", "COMMIT", "SAVEPOINT s1", "SELECT 1/0", "ROLLBACK"])
                        .unwrap_or("BEGIN"))
                    .to_string(),
                };
                parts.push(part);
            }
            Step::query(parts.join("; "))
        }
        13 => {
            // Several groups; one Sync at the end or one per group, in one write.
            let n = 2 + rng.below(3);
            let per_group_sync = rng.chance(50);
            let mut msgs = Vec::new();
            for i in 0..n {
                msgs.extend(group_msgs(rng, m, READS.len(), !m.reader));
                if per_group_sync || i + 1 == n {
                    msgs.push(Msg::Sync);
                }
            }
            Step::new(msgs)
        }
        14 => {
            let mut msgs = group_msgs(rng, m, READS.len(), !m.reader);
            msgs.push(Msg::Flush);
            m.open_pipeline = true;
            Step::new(msgs)
        }
        15 => Step::query(
            rng.choose(&[
                "SELECT name, statement, parameter_types, from_sql FROM pg_prepared_statements ORDER BY name",
                "SELECT name, statement, is_holdable, is_binary, is_scrollable FROM pg_cursors ORDER BY name",
                "SELECT channel FROM pg_listening_channels() AS channel ORDER BY 1",
            ])
            .unwrap_or("SELECT 1"),
        ),
        16 => {
            if let Some((name, _, _)) = rng
                .choose(&(0..m.stmts.len()).collect::<Vec<_>>())
                .and_then(|i| m.stmts.get(i).cloned())
            {
                if rng.chance(50) {
                    Step::new(vec![
                        Msg::Describe {
                            kind: b'S',
                            name,
                        },
                        Msg::Sync,
                    ])
                } else {
                    m.stmts.retain(|(n, _, _)| *n != name);
                    Step::new(vec![Msg::Close { kind: b'S', name }, Msg::Sync])
                }
            } else {
                Step::new(vec![
                    Msg::Close {
                        kind: if rng.chance(50) { b'S' } else { b'P' },
                        name: if rng.chance(50) { "nosuch" } else { "" }.into(),
                    },
                    Msg::Describe {
                        kind: b'S',
                        name: String::new(),
                    },
                    Msg::Sync,
                ])
            }
        }
        19 => {
            // Built-in functions by OID: int4pl, md5(text), set_config (which changes
            // search_path where no SQL text shows it).
            let call = match rng.below(3) {
                0 => Msg::FunctionCall {
                    oid: 177,
                    args: vec![Param::int4(2), Param::int4(40)],
                    result_format: 1,
                },
                1 => Msg::FunctionCall {
                    oid: 2311,
                    args: vec![Param::text("quiet")],
                    result_format: 0,
                },
                _ => Msg::FunctionCall {
                    oid: 2078,
                    args: vec![
                        Param::text("search_path"),
                        Param::text(if rng.chance(50) { "alt, public" } else { "public" }),
                        Param::text("false"),
                    ],
                    result_format: 0,
                },
            };
            Step::new(vec![call])
        }
        18 => {
            // Long enough that the runner's CancelRequest always finds it running.
            let sql = "SELECT pg_sleep(30)";
            let mut step = if rng.chance(50) {
                Step::query(sql)
            } else {
                unnamed_group(sql)
            };
            step.cancel = true;
            step
        }
        _ => {
            // A named portal fetched in parts (lives only inside a transaction block).
            let s = pick(rng, &READS[..CACHEABLE_READS]);
            let (params, _) = params_for(rng, s, false);
            let mut msgs = vec![
                Msg::Parse {
                    name: String::new(),
                    sql: s.sql.into(),
                    types: vec![],
                },
                bind("pp", "", params, vec![]),
                Msg::Execute {
                    portal: "pp".into(),
                    max_rows: 2,
                },
                Msg::Execute {
                    portal: "pp".into(),
                    max_rows: 1 + rng.below(3) as i32,
                },
            ];
            if rng.chance(50) {
                msgs.push(Msg::Close {
                    kind: b'P',
                    name: "pp".into(),
                });
            }
            msgs.push(Msg::Sync);
            Step::new(msgs)
        }
    }
}

/// A settings statement (one that empties the cache only in an `opaque` conversation).
fn pick_setting(rng: &mut Rng, opaque: bool) -> &'static str {
    loop {
        let sql = rng.choose(SETTINGS).unwrap_or("RESET ALL");
        let empties = ["use_schema", "set_tenant", "TEMP", "DROP TABLE", "DO $$"]
            .iter()
            .any(|w| sql.contains(w));
        if opaque || !empties {
            return sql;
        }
    }
}

/// A write: now and then, in a conversation that may, one pgmemo cannot see through.
fn pick_write(rng: &mut Rng, opaque: bool) -> Shape {
    if opaque && rng.chance(15) {
        pick(rng, OPAQUE_WRITES)
    } else {
        pick(rng, WRITES)
    }
}

fn pick(rng: &mut Rng, shapes: &[Shape]) -> Shape {
    shapes[rng.below(shapes.len())]
}

/// The shape's SQL with its parameters written in as literals.
fn inline(rng: &mut Rng, s: Shape) -> (String, Vec<i32>) {
    let values: Vec<i32> = s
        .params
        .iter()
        .map(|(lo, hi)| lo + rng.below((hi - lo + 1) as usize) as i32)
        .collect();
    let mut sql = s.sql.to_string();
    for (i, v) in values.iter().enumerate().rev() {
        sql = sql.replace(&format!("${}", i + 1), &v.to_string());
    }
    (sql, values)
}

fn simple_read(rng: &mut Rng, upto: usize) -> Step {
    let s = pick(rng, &READS[..upto]);
    Step::query(inline(rng, s).0)
}

/// Parameters for a Bind of `s`: binary int4 only when the types were declared.
fn params_for(rng: &mut Rng, s: Shape, declared: bool) -> (Vec<Param>, Vec<i32>) {
    let (_, values) = inline(rng, s);
    let params = values
        .iter()
        .map(|v| {
            if declared && rng.chance(50) {
                Param::int4(*v)
            } else if rng.chance(3) {
                Param::null()
            } else {
                Param::text(&v.to_string())
            }
        })
        .collect();
    (params, values)
}

/// `sql` through the extended protocol: unnamed statement and portal, no parameters, Sync.
fn unnamed_group(sql: &str) -> Step {
    Step::new(vec![
        Msg::Parse {
            name: String::new(),
            sql: sql.into(),
            types: vec![],
        },
        bind("", "", vec![], vec![]),
        Msg::Execute {
            portal: String::new(),
            max_rows: 0,
        },
        Msg::Sync,
    ])
}

fn bind(portal: &str, stmt: &str, params: Vec<Param>, results: Vec<i16>) -> Msg {
    Msg::Bind {
        portal: portal.into(),
        stmt: stmt.into(),
        params,
        results,
    }
}

fn result_formats(rng: &mut Rng) -> Vec<i16> {
    match rng.below(6) {
        0 => vec![1],
        1 => vec![0],
        _ => vec![],
    }
}

/// The shape whose one parameter is untyped text: the same bytes under other declared types.
const FREE_TYPED: &str = "SELECT $1 AS v";

/// One group (no Sync) for shape `s`: unnamed, a new named statement, or a reuse.
fn group_for(rng: &mut Rng, m: &mut Model, s: Shape, no_new_names: bool) -> Vec<Msg> {
    let mut msgs = Vec::new();
    let declared = rng.chance(40);
    let types = if s.sql == FREE_TYPED {
        rng.choose(&[&[][..], &[23], &[25], &[1700]])
            .unwrap_or(&[])
            .to_vec()
    } else if declared {
        vec![23u32; s.params.len()]
    } else {
        vec![]
    };
    let declared = declared && s.sql != FREE_TYPED;
    let reuse = m
        .stmts
        .iter()
        .filter(|(_, sh, _)| sh.sql == s.sql)
        .map(|(n, _, d)| (n.clone(), *d))
        .next();
    let (stmt, declared) = match reuse {
        Some((name, d)) if rng.chance(4) => {
            // Parsed again under its name: 42P05, the rest skipped until Sync.
            msgs.push(Msg::Parse {
                name: name.clone(),
                sql: s.sql.into(),
                types,
            });
            (name, d)
        }
        Some((name, d)) if rng.chance(70) => (name, d),
        // The unnamed statement again, with no Parse.
        _ if m.last_unnamed.as_deref() == Some(s.sql) && rng.chance(50) => (String::new(), false),
        _ if !no_new_names && rng.chance(35) => {
            m.next += 1;
            let name = format!("s{}", m.next);
            msgs.push(Msg::Parse {
                name: name.clone(),
                sql: s.sql.into(),
                types,
            });
            m.stmts.push((name.clone(), s, declared));
            (name, declared)
        }
        _ => {
            msgs.push(Msg::Parse {
                name: String::new(),
                sql: s.sql.into(),
                types,
            });
            (String::new(), declared)
        }
    };
    let params = if s.sql == FREE_TYPED {
        vec![Param::text(
            rng.choose(&["01", "1.50", "7", " 8"]).unwrap_or("7"),
        )]
    } else {
        params_for(rng, s, declared).0
    };
    msgs.push(bind("", &stmt, params, result_formats(rng)));
    if rng.chance(60) {
        msgs.push(Msg::Describe {
            kind: b'P',
            name: String::new(),
        });
    } else if rng.chance(15) {
        msgs.push(Msg::Describe {
            kind: b'S',
            name: stmt,
        });
    }
    msgs.push(Msg::Execute {
        portal: String::new(),
        max_rows: if rng.chance(8) { 2 } else { 0 },
    });
    if rng.chance(4) {
        // A second Execute of the same portal: what is left of it, or nothing.
        msgs.push(Msg::Execute {
            portal: String::new(),
            max_rows: 0,
        });
    }
    msgs
}

/// A group of a random read (or, sometimes, a write or a failing statement, or a repeated
/// favourite, which may be a hit where the pipeline lets pgmemo answer it).
fn group_msgs(rng: &mut Rng, m: &mut Model, upto: usize, allow_writes: bool) -> Vec<Msg> {
    if rng.chance(25) {
        let extended: Vec<&Step> = m
            .favourites
            .iter()
            .filter(|f| matches!(f.msgs.last(), Some(Msg::Sync)))
            .collect();
        if let Some(f) = extended.get(rng.below(extended.len())) {
            let mut msgs = f.msgs.clone();
            msgs.pop();
            return msgs;
        }
    }
    if allow_writes && rng.chance(20) {
        let s = pick_write(rng, m.opaque);
        return group_for(rng, m, s, false);
    }
    if allow_writes && rng.chance(12) {
        // A setting changed ahead of the reads behind it in the pipeline.
        let sql = pick_setting(rng, m.opaque);
        let mut msgs = unnamed_group(sql).msgs;
        msgs.pop();
        return msgs;
    }
    if rng.chance(4) {
        // Odd but valid: an empty statement, a Describe of a portal never bound.
        return rng
            .choose(&[
                &[
                    Msg::Parse {
                        name: String::new(),
                        sql: String::new(),
                        types: vec![],
                    },
                    Msg::Bind {
                        portal: String::new(),
                        stmt: String::new(),
                        params: vec![],
                        results: vec![],
                    },
                    Msg::Execute {
                        portal: String::new(),
                        max_rows: 0,
                    },
                ][..],
                &[Msg::Describe {
                    kind: b'P',
                    name: "never_bound".into(),
                }],
            ])
            .unwrap_or(&[])
            .to_vec();
    }
    if rng.chance(6) {
        // Fails at Bind: wrong parameter count.
        return vec![
            Msg::Parse {
                name: String::new(),
                sql: "SELECT label FROM ref WHERE id = $1".into(),
                types: vec![],
            },
            bind("", "", vec![], vec![]),
            Msg::Execute {
                portal: String::new(),
                max_rows: 0,
            },
        ];
    }
    let s = pick(rng, &READS[..upto]);
    group_for(rng, m, s, false)
}

fn extended_read(rng: &mut Rng, m: &mut Model, upto: usize, favourite: bool) -> Step {
    let s = pick(rng, &READS[..upto]);
    let mut msgs = group_for(rng, m, s, favourite);
    msgs.push(Msg::Sync);
    Step::new(msgs)
}

fn sql_prepare(rng: &mut Rng, m: &mut Model) -> Step {
    if !m.stmts.is_empty() && rng.chance(30) {
        // A statement prepared with Parse, named from SQL (the names are shared).
        let i = rng.below(m.stmts.len());
        let (name, s, _) = m.stmts[i].clone();
        if rng.chance(40) {
            m.stmts.remove(i);
            return Step::query(format!("DEALLOCATE {name}"));
        }
        let (_, values) = inline(rng, s);
        let args = values
            .iter()
            .map(i32::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        return Step::query(if args.is_empty() {
            format!("EXECUTE {name}")
        } else {
            format!("EXECUTE {name}({args})")
        });
    }
    match rng.below(5) {
        0 | 1 if m.sql_prepared.len() < 4 => {
            m.next += 1;
            if rng.chance(40) {
                let name = format!("sp{}", m.next);
                m.sql_prepared.push((
                    name.clone(),
                    shape("SELECT set_config('search_path', $1, false)", &[]),
                ));
                Step::query(format!(
                    "PREPARE {name}(text) AS SELECT set_config('search_path', $1, false)"
                ))
            } else {
                let s = pick(rng, &READS[..CACHEABLE_READS]);
                let name = format!("rq{}", m.next);
                m.sql_prepared.push((name.clone(), s));
                let types = vec!["int"; s.params.len()].join(", ");
                let types = if types.is_empty() {
                    String::new()
                } else {
                    format!("({types})")
                };
                Step::query(format!("PREPARE {name}{types} AS {}", s.sql))
            }
        }
        2 | 3 if !m.sql_prepared.is_empty() => {
            let (name, s) = m.sql_prepared[rng.below(m.sql_prepared.len())].clone();
            let args = if name.starts_with("sp") {
                format!(
                    "('{}')",
                    rng.choose(&["alt, public", "public"]).unwrap_or("public")
                )
            } else {
                let (_, values) = inline(rng, s);
                if values.is_empty() {
                    String::new()
                } else {
                    format!(
                        "({})",
                        values
                            .iter()
                            .map(i32::to_string)
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                }
            };
            let sql = format!("EXECUTE {name}{args}");
            if rng.chance(30) {
                unnamed_group(&sql)
            } else {
                Step::query(sql)
            }
        }
        _ => {
            if let Some((name, _)) = m.sql_prepared.pop()
                && rng.chance(70)
            {
                Step::query(format!("DEALLOCATE {name}"))
            } else {
                m.sql_prepared.clear();
                m.stmts.clear();
                Step::query("DEALLOCATE ALL")
            }
        }
    }
}

fn cursor(rng: &mut Rng, m: &mut Model) -> Step {
    if !m.in_tx {
        m.in_tx = true;
        m.cursors.push("c1".into());
        return Step::query("BEGIN; DECLARE c1 CURSOR FOR SELECT id, name FROM items ORDER BY id");
    }
    match rng.below(4) {
        0 => {
            m.next += 1;
            let name = format!("c{}", m.next);
            m.cursors.push(name.clone());
            let hold = if rng.chance(30) { " WITH HOLD" } else { "" };
            Step::query(format!(
                "DECLARE {name} CURSOR{hold} FOR SELECT * FROM ref ORDER BY id"
            ))
        }
        1 | 2 => {
            let name = rng
                .choose(&(0..m.cursors.len()).collect::<Vec<_>>())
                .and_then(|i| m.cursors.get(i).cloned())
                .unwrap_or_else(|| "c1".into());
            Step::query(format!(
                "{} {name}",
                rng.choose(&[
                    "FETCH 2 FROM",
                    "FETCH ALL FROM",
                    "MOVE 1 IN",
                    "FETCH PRIOR FROM"
                ])
                .unwrap_or("FETCH 1 FROM")
            ))
        }
        _ => {
            if rng.chance(50) {
                m.cursors.clear();
                Step::query("CLOSE ALL")
            } else {
                let name = m.cursors.pop().unwrap_or_else(|| "c1".into());
                Step::query(format!("CLOSE {name}"))
            }
        }
    }
}

fn copy_in(rng: &mut Rng) -> Step {
    let csv = rng.chance(40);
    let sql = if csv {
        "COPY notes (id, item_id, body) FROM STDIN WITH (FORMAT csv)"
    } else {
        "COPY notes (id, item_id, body) FROM STDIN"
    };
    let rows = 1 + rng.below(4);
    let mut chunks = Vec::new();
    for _ in 0..rows {
        let id = 100 + rng.below(20);
        let item = 1 + rng.below(24);
        let line = if rng.chance(5) {
            "garbage line\n".to_string()
        } else if csv {
            format!("{id},{item},\"copied, {id}\"\n")
        } else {
            format!("{id}\t{item}\tcopied {id}\n")
        };
        chunks.push(line.into_bytes());
    }
    Step {
        msgs: vec![Msg::Query(sql.into())],
        copy: Some(CopyIn {
            chunks,
            fail: rng.chance(10),
        }),
        cancel: false,
        session: 0,
    }
}
