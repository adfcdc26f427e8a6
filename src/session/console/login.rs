//! The console's own login, used when `admin.password` is set: pgmemo checks the password
//! itself with SCRAM-SHA-256 ([`crate::scram`]) instead of relaying the login to
//! PostgreSQL, so console roles need not exist in the database (and the console stays
//! reachable while PostgreSQL is down, which is when an operator may need it most).
//!
//! A role not in `admin.roles` goes through the same exchange against a mock verifier and
//! gets the same error as a wrong password. The whole exchange is bounded by
//! `server.startup_timeout` (the caller's).

use std::sync::{Mutex, OnceLock};

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWriteExt;

use crate::config::Secret;
use crate::error::ClientError;
use crate::net::Stream;
use crate::protocol::fields::Reader;
use crate::protocol::response::{self, put_frame};
use crate::protocol::tags::backend::AUTHENTICATION;
use crate::scram::{self, Exchange, ScramError, Verifier};
use crate::session::auth::read_frame;

/// Largest login message read (a SCRAM message is a few hundred bytes).
const MAX_LOGIN_MESSAGE: usize = 4 << 10;
/// SASLInitialResponse and SASLResponse.
const SASL_RESPONSE: u8 = b'p';
/// What the console reports after its login (psql reads these).
const PARAMETERS: &[(&str, &str)] = &[
    ("server_version", "15.0 (pgmemo admin console)"),
    ("server_encoding", "UTF8"),
    ("client_encoding", "UTF8"),
    ("DateStyle", "ISO, MDY"),
    ("integer_datetimes", "on"),
    ("standard_conforming_strings", "on"),
];

/// Why a login did not succeed (the client has been told).
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error("client connection: {0}")]
    Io(std::io::Error),
    #[error(transparent)]
    Scram(#[from] ScramError),
    #[error("client sent message type {0:?} during the console login")]
    Unexpected(char),
    #[error("malformed SASL message")]
    Malformed,
}

/// Runs the exchange for `user` against `password`; `admitted`: the role is in
/// `admin.roles`. On success the client has had AuthenticationOk, the parameters and
/// ReadyForQuery; on failure, a FATAL error.
pub async fn password(
    client: &mut Stream,
    user: &str,
    password: &Secret,
    admitted: bool,
) -> Result<(), LoginError> {
    let outcome = exchange(client, user, password, admitted).await;
    match &outcome {
        Ok(()) => {}
        Err(LoginError::Io(_)) => {}
        Err(LoginError::Scram(ScramError::Proof | ScramError::Nonce)) => {
            super::super::farewell(client, &ClientError::console_password_failed(user)).await;
        }
        Err(e) => {
            super::super::farewell(client, &ClientError::console_login_protocol(e)).await;
        }
    }
    outcome
}

async fn exchange(
    client: &mut Stream,
    user: &str,
    password: &Secret,
    admitted: bool,
) -> Result<(), LoginError> {
    // Derived (or fetched) in both cases, so the time to the first answer does not tell
    // an admin role from another.
    let real = verifier_of(password)?;
    let verifier = if admitted {
        real
    } else {
        real.mock(user, process_secret())
    };
    send(client, &response::auth_sasl(&[scram::MECHANISM.as_bytes()])).await?;
    let first = read_sasl(client).await?;
    let mut r = Reader::body(&first);
    let mechanism = r.cstr().ok_or(LoginError::Malformed)?;
    if mechanism != scram::MECHANISM.as_bytes() {
        return Err(ScramError::Malformed("mechanism not offered").into());
    }
    let len = r.i32().ok_or(LoginError::Malformed)?;
    let data = usize::try_from(len)
        .ok()
        .and_then(|n| r.bytes(n))
        .ok_or(LoginError::Malformed)?;
    let (exchange, server_first) = Exchange::start(verifier, data, &scram::server_nonce()?)?;
    send(client, &auth(11, server_first.as_bytes())).await?;
    let last = read_sasl(client).await?;
    let server_final = exchange.finish(Reader::body(&last).remaining())?;
    let mut out = BytesMut::new();
    out.extend_from_slice(&auth(12, server_final.as_bytes()));
    out.extend_from_slice(&auth(0, &[]));
    for (name, value) in PARAMETERS {
        put_frame(
            &mut out,
            b'S',
            &[name.as_bytes(), b"\0", value.as_bytes(), b"\0"],
        );
    }
    out.extend_from_slice(response::READY_IDLE);
    send(client, &out).await
}

/// An Authentication message with `code` and `data`.
fn auth(code: i32, data: &[u8]) -> Bytes {
    let mut out = BytesMut::new();
    put_frame(&mut out, AUTHENTICATION, &[&code.to_be_bytes(), data]);
    out.freeze()
}

async fn send(client: &mut Stream, bytes: &[u8]) -> Result<(), LoginError> {
    client.write_all(bytes).await.map_err(LoginError::Io)?;
    client.flush().await.map_err(LoginError::Io)
}

async fn read_sasl(client: &mut Stream) -> Result<Bytes, LoginError> {
    let frame = read_frame(client, MAX_LOGIN_MESSAGE)
        .await
        .map_err(|e| match e {
            crate::session::auth::ReadError::Io(e) => LoginError::Io(e),
            crate::session::auth::ReadError::Frame(_) => LoginError::Malformed,
        })?;
    match frame.first() {
        Some(&SASL_RESPONSE) => Ok(frame),
        Some(&t) => Err(LoginError::Unexpected(char::from(t))),
        None => Err(LoginError::Malformed),
    }
}

/// The verifier of the configured password. A plaintext password is derived once per
/// value and kept: deriving costs 4,096 HMACs, which an unauthenticated client must not
/// be able to make pgmemo spend at every attempt.
fn verifier_of(password: &Secret) -> Result<Verifier, ScramError> {
    static DERIVED: Mutex<Option<([u8; 32], Verifier)>> = Mutex::new(None);
    let digest: [u8; 32] = {
        use sha2::Digest as _;
        sha2::Sha256::digest(password.expose().as_bytes()).into()
    };
    let mut held = DERIVED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some((d, v)) = held.as_ref()
        && *d == digest
    {
        return Ok(v.clone());
    }
    let v = Verifier::from_config(password.expose())?;
    *held = Some((digest, v.clone()));
    Ok(v)
}

/// A random key per process for mock verifiers' keys.
fn process_secret() -> &'static [u8; 32] {
    static SECRET: OnceLock<[u8; 32]> = OnceLock::new();
    SECRET.get_or_init(|| {
        let mut key = [0u8; 32];
        // Without a random source the mock keys become predictable, which lets no one in:
        // a mock's proof check fails whatever the keys, since no role it serves is admitted.
        let _ = getrandom::fill(&mut key);
        key
    })
}
