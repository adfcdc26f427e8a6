//! The shared second level on Redis (issue 6). [`tier`] is what sessions and invalidation
//! sources use; beneath it, [`envelope`] is the authenticated, versioned format results are
//! stored in; [`versions`] keeps relation versions and the epoch in Redis under a generation
//! that can never go backwards, and announces bumps; [`mirror`] follows those announcements
//! (`fast` consistency); [`store`] reads and (through a bounded queue) writes sealed
//! results, keeping a failing Redis off the request path with the breaker; [`batch`] puts
//! concurrent lookups' reads in one round trip. The connection, the breaker and the lease
//! live in `crate::redis_link`, which the change streams' election uses too.

pub mod batch;
pub mod envelope;
pub mod mirror;
pub mod store;
pub mod tier;
pub mod versions;
