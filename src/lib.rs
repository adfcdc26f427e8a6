//! pgmemo: a caching proxy for PostgreSQL.
//!
//! Architecture (see DESIGN.md and the README's Architecture section): `server` accepts
//! clients and hands each connection to a `workers` thread, where one `session` task relays
//! the wire protocol between the client and its own upstream connection (`upstream`),
//! splitting frames by length (`protocol`) and inspecting only the frames it must. The
//! `planner` says what a statement's text means for the cache (after `sql` analysed it and
//! `catalog` resolved what it reads); cacheable reads are answered from `cache`; writes bump
//! versions through `invalidation` at the ordering points of DESIGN §2, and `cdc` does the
//! same for writes that bypass pgmemo. `context` is the composition root (the services every
//! session shares); `cancel` holds the live sessions' cancel keys; `side` says when pgmemo's
//! own connections to a database may be open (while clients use it). `config` is validated
//! typed data, `admin` serves health, metrics and the JSON API, `telemetry` owns metric
//! names, `error` owns the one mapping to SQLSTATE. `tests/module_graph.rs` keeps the
//! imports between these modules free of cycles.

// Nothing from the wire or from SQL text may panic the process: no unwrap, expect or
// unchecked indexing outside tests (a local allow says why an index is in range).
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

pub mod admin;
pub mod behind;
pub mod cache;
pub mod cancel;
pub mod catalog;
pub mod cdc;
pub mod config;
pub mod context;
pub mod error;
pub mod invalidation;
pub mod net;
pub mod planner;
pub mod protocol;
pub mod redis_link;
pub mod refresh;
pub mod rng;
pub mod scram;
pub mod server;
pub mod session;
pub mod side;
pub mod sql;
pub mod tasks;
pub mod telemetry;
pub mod upstream;
pub mod workers;
