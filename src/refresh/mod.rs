//! Keeping cached results fresh instead of only dropping them (issue 19): the strategies
//! that recompute a result after a write (write-through) or before it expires
//! (refresh-ahead), and warming. `recipes` holds what recomputing a result takes and selects
//! the results a write invalidated; `hotkeys` is the file that carries the most requested
//! results from one run to the next, `hot` counts them during a run, and `progress` tells
//! `/readyz` where warming is.
//! `pool`: the upstream connections, logged in as the client was, that re-run them;
//! `queue`: what sessions hand to the background refresher (in `session::cache_side`);
//! `share`: refresh-ahead's adaptive refresh point and its cap on the refreshes' share;
//! `verify`: verify mode's sampling, bounds and verdict (the checker re-executes on the same
//! pool, in `session::cache_side::verify`).

pub mod hot;
pub mod hotkeys;
pub mod pool;
pub mod progress;
pub mod queue;
pub mod recipes;
pub mod share;
pub mod verify;
