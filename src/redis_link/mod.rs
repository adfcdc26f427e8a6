//! pgmemo's link to Redis, shared by the cache's shared tier (`cache::l2`) and the change
//! streams' election (`cdc::elect`): the connection to one server or a cluster, made lazily
//! and bounded by its callers' timeouts ([`conn`]); the circuit breaker that stops asking a
//! Redis that keeps failing ([`breaker`]); and the lease that elects one instance among
//! several ([`lease`]).

pub mod breaker;
pub mod conn;
pub mod lease;
