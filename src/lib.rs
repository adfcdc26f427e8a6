//! pgmemo: a caching proxy for PostgreSQL.
//!
//! Architecture (see DESIGN.md): `server` accepts clients and spawns one `session` task per
//! connection; a session relays the wire protocol between the client and its own upstream
//! connection (`upstream`), splitting frames by length (`protocol`) and inspecting only the
//! frames it must. Cacheable simple Queries are answered from `cache` (keys, versions, L1)
//! after `sql` analysed them and `catalog` resolved what they read; writes bump versions
//! through `invalidation` at the ordering points of DESIGN §2. `config` is validated typed data, `admin` serves health and metrics,
//! `telemetry` owns metric names, `error` owns the one mapping to SQLSTATE. `side` says when
//! pgmemo's own connections to a database may be open (while clients use it).

pub mod admin;
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
pub mod server;
pub mod session;
pub mod side;
pub mod sql;
pub mod telemetry;
pub mod upstream;
pub mod workers;
