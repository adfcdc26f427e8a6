//! Integration-test harness shared by every test binary (`mod common;`): throwaway
//! PostgreSQL and Redis servers, the pgmemo binary under test, and client helpers.
//!
//! Every server picks its own free port and lives in its own temp dir, so tests never
//! share state and can run in parallel (nextest runs each test in its own process).
//! Each test binary uses only part of this module, hence the unused-code allowances.
#![allow(dead_code, unused_imports)]

pub mod client;
pub mod compare;
pub mod memory;
pub mod pg;
pub mod pg_install;
pub mod ports;
pub mod proxy;
pub mod reaper;
pub mod redis;
pub mod stack;
pub mod tls;

pub use client::{AsyncMessages, connect, connect_with_messages, db_error, pg_config};
pub use pg::{PgOptions, PgServer};
pub use proxy::{Proxy, ProxyArgs, Signal};
pub use redis::{RedisCluster, RedisServer};
pub use stack::Stack;
pub use tls::TestCa;

/// Fixed passwords of the users every `PgServer` creates (see `pg.rs`).
pub const MD5_USER: (&str, &str) = ("md5_user", "md5_pass");
pub const SCRAM_USER: (&str, &str) = ("scram_user", "scram_pass");
pub const PLAIN_USER: (&str, &str) = ("plain_user", "plain_pass");
pub const TRUST_USER: &str = "trust_user";
pub const SUPERUSER: &str = "postgres";
