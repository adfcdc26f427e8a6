//! The shared second level on Redis (issue 6, in progress): [`envelope`] is the
//! authenticated, versioned format results are stored in; [`versions`] keeps relation
//! versions and the epoch in Redis under a generation that can never go backwards. Nothing
//! here is wired into sessions yet.

pub mod envelope;
pub mod versions;
