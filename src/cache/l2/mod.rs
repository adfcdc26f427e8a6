//! The shared second level on Redis (issue 6). [`tier`] is what sessions and invalidation
//! sources use; beneath it, [`envelope`] is the authenticated, versioned format results are
//! stored in; [`versions`] keeps relation versions and the epoch in Redis under a generation
//! that can never go backwards, and announces bumps; [`mirror`] follows those announcements
//! (`fast` consistency); [`breaker`] keeps a failing Redis off the request path; [`store`]
//! reads and (through a bounded queue) writes sealed results; [`batch`] puts concurrent
//! lookups' reads in one round trip; [`conn`] is the single-server or cluster connection;
//! [`lease`] elects one instance for a job (the CDC runner).

pub mod batch;
pub mod breaker;
pub mod conn;
pub mod envelope;
pub mod lease;
pub mod mirror;
pub mod store;
pub mod tier;
pub mod versions;
