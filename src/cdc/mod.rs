//! Change data capture: following PostgreSQL's logical replication stream so that writes
//! that bypass pgmemo invalidate the cache within milliseconds. [`wire`] is the streaming
//! replication sub-protocol inside CopyBoth, [`pgoutput`] the output plugin's messages
//! reduced to the relations each committed transaction changed and, when exactly known,
//! the key values of its changed rows (used with a publication the user names),
//! [`test_decoding`] the same for the plugin that needs no publication
//! (the default) and [`names`] the mapping of its relation names to OIDs, [`conn`] the replication
//! connection, [`runner`] the per-database task, [`demand`] what starts and stops it, [`lag`] the lag monitor, [`flush`] the delay
//! before a commit can reach the stream at all, and [`hub`] what
//! sessions see of it all.
//!
//! pgmemo speaks the replication sub-protocol with this small codec of its own rather than
//! through a crate (`pgwire-replication` exists): it needs four message kinds, decoded
//! without copying (rows are read only for their key values), long frames skipped rather
//! than buffered,
//! and the same TLS set-up (rustls, `sslmode`) and framing bounds as the relay.

pub mod conn;
pub mod demand;
pub mod elect;
pub mod flush;
pub mod hub;
pub mod lag;
pub mod names;
pub mod pgoutput;
pub mod runner;
pub mod test_decoding;
pub mod wire;
