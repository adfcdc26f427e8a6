//! Change data capture (issue 5, in progress): following PostgreSQL's logical replication
//! stream so that writes that bypass pgmemo invalidate the cache. This part is the protocol:
//! the streaming-replication messages inside CopyBoth ([`wire`]) and the `pgoutput` plugin's
//! messages, reduced to the relations each committed transaction changed ([`pgoutput`]).
//! pgmemo speaks the replication sub-protocol with this small codec of its own rather than
//! through a crate: it needs four message kinds, decoded without allocation and without
//! decoding rows, and its framing and bounds rules are the same as the rest of the relay's.
//! Nothing starts a replication connection yet.

pub mod pgoutput;
pub mod wire;
