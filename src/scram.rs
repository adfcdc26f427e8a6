//! SCRAM-SHA-256 (RFC 5802 with RFC 7677's hash) on the server's side, as PostgreSQL runs
//! it, for the one login pgmemo checks itself: the admin console's `admin.password`. Pure
//! computation: the console carries the messages.
//!
//! The stored form is PostgreSQL's own (`SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:
//! <ServerKey>`, what `pg_authid.rolpassword` holds), so an operator can configure a
//! verifier instead of the password; a plaintext password is turned into one with a random
//! salt. No channel binding: pgmemo offers only `SCRAM-SHA-256`, so a client asks for none
//! (a client that insists on binding gets an error).
//!
//! A role that may not use the console gets the whole exchange against a [`Verifier::mock`]
//! (the real salt and iterations, keys no password matches), and then the same error as a
//! wrong password: the console never tells who is an admin before a login succeeds
//! (PostgreSQL's mock authentication).

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// The one mechanism offered.
pub const MECHANISM: &str = "SCRAM-SHA-256";
/// Iterations of a verifier pgmemo derives (PostgreSQL's default).
const ITERATIONS: u32 = 4096;
/// Most iterations a configured verifier may ask for (each login costs them).
const MAX_ITERATIONS: u32 = 1 << 20;
/// Random bytes in pgmemo's part of the nonce and in a derived salt.
const RANDOM_BYTES: usize = 18;

type HmacSha256 = Hmac<Sha256>;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScramError {
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    #[error("SCRAM channel binding is not supported here")]
    ChannelBinding,
    #[error("the client's final message does not continue this exchange")]
    Nonce,
    /// The proof does not match: a wrong password (or a role without a console login).
    #[error("password authentication failed")]
    Proof,
    #[error(
        "not a SCRAM-SHA-256 verifier (SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>)"
    )]
    Verifier,
    #[error("a plaintext password must be ASCII; give a SCRAM-SHA-256 verifier instead")]
    NotAscii,
    #[error("the system random source failed")]
    Random,
}

/// What the server keeps of a password.
#[derive(Clone, PartialEq, Eq)]
pub struct Verifier {
    iterations: u32,
    salt: Vec<u8>,
    stored_key: [u8; 32],
    server_key: [u8; 32],
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Verifier(***)")
    }
}

impl Verifier {
    /// `admin.password`: a verifier as PostgreSQL stores it, or a plaintext password (ASCII:
    /// clients normalise passwords with SASLprep, which leaves printable ASCII as it is).
    pub fn from_config(text: &str) -> Result<Self, ScramError> {
        if text.starts_with("SCRAM-SHA-256$") {
            return Self::parse(text);
        }
        if !text.bytes().all(|b| (0x20..0x7f).contains(&b)) {
            return Err(ScramError::NotAscii);
        }
        let mut salt = [0u8; RANDOM_BYTES];
        getrandom::fill(&mut salt).map_err(|_| ScramError::Random)?;
        Ok(Self::derive(text.as_bytes(), &salt, ITERATIONS))
    }

    /// PostgreSQL's stored form.
    pub fn parse(text: &str) -> Result<Self, ScramError> {
        let rest = text
            .strip_prefix("SCRAM-SHA-256$")
            .ok_or(ScramError::Verifier)?;
        let (params, keys) = rest.split_once('$').ok_or(ScramError::Verifier)?;
        let (iterations, salt) = params.split_once(':').ok_or(ScramError::Verifier)?;
        let (stored, server) = keys.split_once(':').ok_or(ScramError::Verifier)?;
        let iterations: u32 = iterations.parse().map_err(|_| ScramError::Verifier)?;
        if !(1..=MAX_ITERATIONS).contains(&iterations) {
            return Err(ScramError::Verifier);
        }
        let salt = B64.decode(salt).map_err(|_| ScramError::Verifier)?;
        let key = |s: &str| -> Result<[u8; 32], ScramError> {
            let bytes = B64.decode(s).map_err(|_| ScramError::Verifier)?;
            bytes.try_into().map_err(|_| ScramError::Verifier)
        };
        if salt.is_empty() {
            return Err(ScramError::Verifier);
        }
        Ok(Self {
            iterations,
            salt,
            stored_key: key(stored)?,
            server_key: key(server)?,
        })
    }

    /// The verifier of `password` under `salt` and `iterations` (RFC 5802 §3).
    pub fn derive(password: &[u8], salt: &[u8], iterations: u32) -> Self {
        let salted = hi(password, salt, iterations);
        let client_key = hmac(&salted, &[b"Client Key"]);
        Self {
            iterations,
            salt: salt.to_vec(),
            stored_key: Sha256::digest(client_key).into(),
            server_key: hmac(&salted, &[b"Server Key"]),
        }
    }

    /// A verifier no password matches, for a role that may not log in: the same salt and
    /// iterations as this one (a client sees nothing that tells the two apart before its
    /// proof is refused), with keys derived from `user` under a `secret` the client never
    /// sees.
    pub fn mock(&self, user: &str, secret: &[u8]) -> Self {
        Self {
            iterations: self.iterations,
            salt: self.salt.clone(),
            // No client key hashes to an HMAC output under a key the client never sees; the
            // proof check fails as it would for a wrong password.
            stored_key: hmac(secret, &[b"stored", user.as_bytes()]),
            server_key: hmac(secret, &[b"server", user.as_bytes()]),
        }
    }

    /// PostgreSQL's stored form of this verifier.
    pub fn to_stored(&self) -> String {
        format!(
            "SCRAM-SHA-256${}:{}${}:{}",
            self.iterations,
            B64.encode(&self.salt),
            B64.encode(self.stored_key),
            B64.encode(self.server_key)
        )
    }
}

/// An exchange after the client's first message, waiting for its final one.
#[derive(Debug)]
pub struct Exchange {
    verifier: Verifier,
    gs2_header: String,
    client_first_bare: String,
    server_first: String,
    nonce: String,
}

impl Exchange {
    /// Answers the client's first message (the SASLInitialResponse's data) with the server's
    /// first, using `server_nonce` (printable, no comma) after the client's nonce.
    pub fn start(
        verifier: Verifier,
        client_first: &[u8],
        server_nonce: &str,
    ) -> Result<(Self, String), ScramError> {
        let text = std::str::from_utf8(client_first).map_err(|_| ScramError::Malformed("utf-8"))?;
        let (flag, rest) = text
            .split_once(',')
            .ok_or(ScramError::Malformed("gs2 header"))?;
        match flag {
            "n" | "y" => {}
            f if f.starts_with("p=") => return Err(ScramError::ChannelBinding),
            _ => return Err(ScramError::Malformed("channel binding flag")),
        }
        let (authzid, bare) = rest
            .split_once(',')
            .ok_or(ScramError::Malformed("gs2 header"))?;
        if !authzid.is_empty() {
            return Err(ScramError::Malformed(
                "authorization identity not supported",
            ));
        }
        let mut attrs = bare.split(',');
        // PostgreSQL ignores the user name here (the startup message's counts); so does pgmemo.
        if !attrs.next().is_some_and(|a| a.starts_with("n=")) {
            return Err(ScramError::Malformed("user name attribute"));
        }
        let client_nonce = attrs
            .next()
            .and_then(|a| a.strip_prefix("r="))
            .ok_or(ScramError::Malformed("nonce attribute"))?;
        if client_nonce.is_empty() || !client_nonce.bytes().all(printable) {
            return Err(ScramError::Malformed("nonce"));
        }
        let nonce = format!("{client_nonce}{server_nonce}");
        let server_first = format!(
            "r={nonce},s={},i={}",
            B64.encode(&verifier.salt),
            verifier.iterations
        );
        let gs2_header = text
            .get(..text.len() - bare.len())
            .ok_or(ScramError::Malformed("gs2 header"))?
            .to_owned();
        let exchange = Self {
            verifier,
            gs2_header,
            client_first_bare: bare.to_owned(),
            server_first: server_first.clone(),
            nonce,
        };
        Ok((exchange, server_first))
    }

    /// Checks the client's final message (the SASLResponse's data); on success, the
    /// server's final message (its signature, which proves pgmemo knew the verifier).
    pub fn finish(self, client_final: &[u8]) -> Result<String, ScramError> {
        let text = std::str::from_utf8(client_final).map_err(|_| ScramError::Malformed("utf-8"))?;
        let (without_proof, proof) = text
            .rsplit_once(",p=")
            .ok_or(ScramError::Malformed("proof attribute"))?;
        let mut attrs = without_proof.split(',');
        let binding = attrs
            .next()
            .and_then(|a| a.strip_prefix("c="))
            .ok_or(ScramError::Malformed("channel binding attribute"))?;
        if B64.decode(binding).ok().as_deref() != Some(self.gs2_header.as_bytes()) {
            return Err(ScramError::ChannelBinding);
        }
        let nonce = attrs
            .next()
            .and_then(|a| a.strip_prefix("r="))
            .ok_or(ScramError::Malformed("nonce attribute"))?;
        if nonce != self.nonce {
            return Err(ScramError::Nonce);
        }
        let proof = B64
            .decode(proof)
            .map_err(|_| ScramError::Malformed("proof"))?;
        let auth_message = [
            self.client_first_bare.as_bytes(),
            b",",
            self.server_first.as_bytes(),
            b",",
            without_proof.as_bytes(),
        ];
        let v = &self.verifier;
        let signature = hmac(&v.stored_key, &auth_message);
        if proof.len() != signature.len() {
            return Err(ScramError::Proof);
        }
        let client_key: Vec<u8> = proof.iter().zip(signature).map(|(p, s)| p ^ s).collect();
        let hashed: [u8; 32] = Sha256::digest(&client_key).into();
        // Compared in constant time: the difference is folded, never branched on per byte.
        let diff = hashed
            .iter()
            .zip(v.stored_key)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if diff != 0 {
            return Err(ScramError::Proof);
        }
        Ok(format!(
            "v={}",
            B64.encode(hmac(&v.server_key, &auth_message))
        ))
    }
}

/// A fresh random part of the nonce (base64: printable, never a comma).
pub fn server_nonce() -> Result<String, ScramError> {
    let mut bytes = [0u8; RANDOM_BYTES];
    getrandom::fill(&mut bytes).map_err(|_| ScramError::Random)?;
    Ok(B64.encode(bytes))
}

fn printable(b: u8) -> bool {
    (0x21..0x7f).contains(&b) && b != b','
}

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    // HMAC accepts keys of any length: `new_from_slice` cannot fail for it.
    let Ok(mut mac) = HmacSha256::new_from_slice(key) else {
        return [0; 32];
    };
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

/// RFC 5802's Hi(): PBKDF2 with HMAC-SHA-256 and one output block.
fn hi(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut u = hmac(password, &[salt, &1u32.to_be_bytes()]);
    let mut out = u;
    for _ in 1..iterations {
        u = hmac(password, &[&u]);
        for (o, x) in out.iter_mut().zip(u) {
            *o ^= x;
        }
    }
    out
}

#[cfg(test)]
#[path = "scram_tests.rs"]
mod tests;
