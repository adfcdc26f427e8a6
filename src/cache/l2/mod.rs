//! The shared second level on Redis (issue 6, in progress): [`envelope`] is the
//! authenticated, versioned format results are stored in; [`versions`] keeps relation
//! versions and the epoch in Redis under a generation that can never go backwards;
//! [`breaker`] keeps a failing Redis off the request path; [`store`] reads and (through a
//! bounded queue) writes sealed results; [`lease`] elects one instance for a job (the CDC
//! runner). Nothing
//! here is wired into sessions yet.

pub mod batch;
pub mod breaker;
pub mod conn;
pub mod envelope;
pub mod lease;
pub mod mirror;
pub mod store;
pub mod tier;
pub mod versions;
