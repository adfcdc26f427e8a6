//! The process-wide planner: what a statement's text means for the cache in one session
//! context ([`plan`]), including what the user functions it calls read ([`called`]), the memos that keep those plans so the hit path does no parsing and
//! no catalog I/O ([`memo`]), and the per-shape hit statistics behind the adaptive bypass
//! ([`adaptive`]). Sessions ask it; it knows nothing of sessions or sockets (it reads the
//! catalog through [`crate::catalog::Catalog`], which owns the I/O).

pub mod adaptive;
pub mod bypass;
mod called;
pub mod memo;
pub mod plan;
pub mod rows;
pub mod stats;
