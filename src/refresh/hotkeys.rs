//! The hot-key file (`warming.hot_keys_file`): the most requested results of a run, kept so
//! the next start can run them again before clients ask. Each key is what re-running the
//! request takes: the database and login user, the startup parameters to log in with, the
//! fingerprint digest the result was read under (the next run stores the result only when
//! its login reproduces that fingerprint), and the request itself.
//!
//! Format, version 1 (text, `\n` line ends):
//!
//! ```text
//! pgmemo-hot-keys v1
//! <HMAC-SHA256 tag, 64 lower-case hex digits> <body length in bytes, decimal>
//! <body: JSON, {"keys": [HotKey, ...]}>
//! ```
//!
//! The tag covers the body, under [`KeySecret::hot_keys_key`] (derived from the cache
//! secret, with a label of its own): a file written under another secret, or changed in any
//! byte, is refused, so a file anyone could write cannot make pgmemo run SQL of its
//! choosing. The length tells a truncated file from a tampered one. In a
//! [`HotRequest::Extended`], `bind_tail_b64` is standard base64 (with padding) of the Bind
//! message's body after its portal and statement names: the parameter formats, values and
//! result formats, exactly as the client sent them. Files are at most [`MAX_FILE_BYTES`];
//! [`encode`] keeps the hottest keys that fit.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::cache::key::KeySecret;
use crate::refresh::pool::LoginKey;
use crate::refresh::recipes::Request;

/// The first line of a version-1 file.
pub const HEADER: &str = "pgmemo-hot-keys v1";
/// What every version's first line starts with.
const HEADER_PREFIX: &str = "pgmemo-hot-keys v";
/// The largest file written or read (16 MiB).
pub const MAX_FILE_BYTES: usize = 16 << 20;
/// Hex digits of the tag.
const TAG_HEX: usize = 64;

type HmacSha256 = Hmac<Sha256>;

/// One hot result: everything needed to run its request again as its client did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HotKey {
    pub database: String,
    /// The login role (the startup packet's `user`).
    pub user: String,
    /// The startup parameters as the client sent them (name, value), `user` and `database`
    /// included: they are part of the fingerprint.
    pub params: Vec<(String, String)>,
    /// The fingerprint digest of the session that read the result, 32 lower-case hex digits.
    pub fingerprint: String,
    pub request: HotRequest,
    /// Hits counted in the run that wrote the file (hotter keys come first).
    pub hits: u64,
}

/// The request of a [`HotKey`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum HotRequest {
    /// A simple Query.
    Simple { sql: String },
    /// Parse (with these parameter type OIDs) and Bind (this body after the portal and
    /// statement names, base64).
    Extended {
        sql: String,
        param_types: Vec<u32>,
        bind_tail_b64: String,
    },
}

impl HotRequest {
    /// An extended-protocol request; `bind_tail` is the Bind body after the portal and
    /// statement names.
    pub fn extended(sql: String, param_types: Vec<u32>, bind_tail: &[u8]) -> Self {
        HotRequest::Extended {
            sql,
            param_types,
            bind_tail_b64: BASE64.encode(bind_tail),
        }
    }

    /// The statement text.
    pub fn sql(&self) -> &str {
        match self {
            HotRequest::Simple { sql } | HotRequest::Extended { sql, .. } => sql,
        }
    }

    /// The Bind body after the names, decoded; `None` for a simple Query or a tail that is
    /// not base64 (a file that verified was written by pgmemo, so only a bug would do that).
    pub fn bind_tail(&self) -> Option<Vec<u8>> {
        match self {
            HotRequest::Simple { .. } => None,
            HotRequest::Extended { bind_tail_b64, .. } => BASE64.decode(bind_tail_b64).ok(),
        }
    }
}

impl HotKey {
    /// The file form of a counted result: its login, the fingerprint digest it was read
    /// under, its request and its hit count. `None` when its SQL is not UTF-8 (a JSON string
    /// cannot hold it; such a result is simply not carried over).
    pub fn from_parts(
        login: &LoginKey,
        fingerprint: &[u8; 16],
        request: &Request,
        hits: u64,
    ) -> Option<HotKey> {
        let text = |b: &[u8]| std::str::from_utf8(b).ok().map(str::to_owned);
        let request = match request {
            Request::Simple { sql } => HotRequest::Simple { sql: text(sql)? },
            Request::Extended {
                sql,
                param_types,
                bind_tail,
            } => HotRequest::extended(
                text(sql)?,
                param_types
                    .chunks_exact(4)
                    .map(|c| c.try_into().map_or(0, u32::from_be_bytes))
                    .collect(),
                bind_tail,
            ),
        };
        Some(HotKey {
            database: login.database.clone(),
            user: login.user.clone(),
            params: login.params.clone(),
            fingerprint: hex(fingerprint),
            request,
            hits,
        })
    }

    /// What running it again takes: the login, the request as the client sent it, and the
    /// fingerprint digest to reproduce. `None` when the fingerprint or the Bind does not
    /// decode (a file that verified was written by pgmemo, so only a bug would do that).
    pub fn to_parts(&self) -> Option<(LoginKey, Request, [u8; 16])> {
        let fingerprint: [u8; 16] = unhex(self.fingerprint.as_bytes())?.try_into().ok()?;
        let request = match &self.request {
            HotRequest::Simple { sql } => Request::Simple {
                sql: bytes::Bytes::copy_from_slice(sql.as_bytes()),
            },
            HotRequest::Extended {
                sql, param_types, ..
            } => Request::Extended {
                sql: bytes::Bytes::copy_from_slice(sql.as_bytes()),
                param_types: param_types.iter().flat_map(|t| t.to_be_bytes()).collect(),
                bind_tail: self.request.bind_tail()?.into(),
            },
        };
        let login = LoginKey {
            database: self.database.clone(),
            user: self.user.clone(),
            params: self.params.clone(),
        };
        Some((login, request, fingerprint))
    }
}

/// The JSON body.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    keys: Vec<HotKey>,
}

/// Why a hot-key file was refused (the start then warms without it).
#[derive(Debug, thiserror::Error)]
pub enum HotKeysError {
    #[error("the hot-key file cannot be read: {0}")]
    Io(#[from] io::Error),
    #[error("the hot-key file is larger than {max} bytes")]
    TooLarge { max: usize },
    #[error("not a pgmemo hot-key file")]
    NotHotKeys,
    #[error("hot-key file format v{0} is not supported (this pgmemo reads v1)")]
    Version(String),
    #[error("the hot-key file is truncated")]
    Truncated,
    #[error(
        "the hot-key file's tag does not verify (written under another cache secret, or modified)"
    )]
    BadTag,
    #[error("the hot-key file's body does not decode: {0}")]
    Body(String),
}

/// The file's bytes for `keys`, in order, tagged under `secret`. Keys are added while the
/// file stays within [`MAX_FILE_BYTES`]: pass the hottest first.
pub fn encode(keys: &[HotKey], secret: &KeySecret) -> Vec<u8> {
    const OPEN: &[u8] = b"{\"keys\":[";
    const CLOSE: &[u8] = b"]}\n";
    // Header line, tag, a space, a length of at most 8 digits (16 MiB), a newline.
    let overhead = HEADER.len() + 1 + TAG_HEX + 1 + 8 + 1;
    let budget = MAX_FILE_BYTES.saturating_sub(overhead + OPEN.len() + CLOSE.len());
    let mut body = OPEN.to_vec();
    let mut used = 0usize;
    for key in keys {
        // Plain strings and numbers: serializing cannot fail; a key that did is left out.
        let Ok(json) = serde_json::to_vec(key) else {
            continue;
        };
        let comma = usize::from(used > 0);
        if used + comma + json.len() > budget {
            break;
        }
        if comma == 1 {
            body.push(b',');
        }
        body.extend_from_slice(&json);
        used += comma + json.len();
    }
    body.extend_from_slice(CLOSE);
    let tag = mac(secret, &body).finalize().into_bytes();
    let mut out = Vec::with_capacity(overhead + body.len());
    out.extend_from_slice(HEADER.as_bytes());
    out.push(b'\n');
    out.extend_from_slice(hex(&tag).as_bytes());
    out.extend_from_slice(format!(" {}\n", body.len()).as_bytes());
    out.extend_from_slice(&body);
    out
}

/// The keys of a file [`encode`] wrote under `secret`, in order.
pub fn decode(bytes: &[u8], secret: &KeySecret) -> Result<Vec<HotKey>, HotKeysError> {
    if bytes.len() > MAX_FILE_BYTES {
        return Err(HotKeysError::TooLarge {
            max: MAX_FILE_BYTES,
        });
    }
    let (header, rest) = line(bytes).ok_or_else(|| {
        if HEADER.as_bytes().starts_with(bytes) && !bytes.is_empty() {
            HotKeysError::Truncated
        } else {
            HotKeysError::NotHotKeys
        }
    })?;
    if header != HEADER.as_bytes() {
        return Err(match header.strip_prefix(HEADER_PREFIX.as_bytes()) {
            Some(version) => HotKeysError::Version(String::from_utf8_lossy(version).into_owned()),
            None => HotKeysError::NotHotKeys,
        });
    }
    let (tag_line, body) = line(rest).ok_or(HotKeysError::Truncated)?;
    let (tag_hex, length) = tag_line
        .split_at_checked(TAG_HEX)
        .ok_or(HotKeysError::Truncated)?;
    let tag = unhex(tag_hex).ok_or(HotKeysError::NotHotKeys)?;
    let length: usize = length
        .strip_prefix(b" ")
        .and_then(|digits| std::str::from_utf8(digits).ok())
        .and_then(|digits| digits.parse().ok())
        .ok_or(HotKeysError::NotHotKeys)?;
    if body.len() < length {
        return Err(HotKeysError::Truncated);
    }
    if body.len() > length {
        return Err(HotKeysError::BadTag);
    }
    mac(secret, body)
        .verify_slice(&tag)
        .map_err(|_| HotKeysError::BadTag)?;
    serde_json::from_slice::<Body>(body)
        .map(|b| b.keys)
        .map_err(|e| HotKeysError::Body(e.to_string()))
}

/// Writes `bytes` to `path` so that a reader sees the old file or the new one, never a part:
/// a temporary file in the same directory, flushed to disk, renamed over `path`, and the
/// directory flushed so the rename survives a crash.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a file path"))?;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let mut suffix = [0u8; 8];
    getrandom::fill(&mut suffix).map_err(io::Error::other)?;
    let mut temp_name = std::ffi::OsString::from(".");
    temp_name.push(name);
    temp_name.push(format!(".{}.tmp", hex(&suffix)));
    let temp = dir.join(temp_name);
    let written = (|| {
        // Hot keys hold client requests (their literals): readable by pgmemo's user only.
        let mut file = {
            use std::os::unix::fs::OpenOptionsExt;
            File::options()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&temp)?
        };
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&temp, path)
    })();
    if written.is_err() {
        // Best effort: the error that matters is the write's.
        let _ = fs::remove_file(&temp);
    }
    written?;
    File::open(dir)?.sync_all()
}

/// The bytes of the file at `path`, refused past `max` bytes without reading them all.
pub fn read(path: &Path, max: usize) -> Result<Vec<u8>, HotKeysError> {
    let file = File::open(path)?;
    let mut bytes = Vec::new();
    file.take(u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1))
        .read_to_end(&mut bytes)?;
    if bytes.len() > max {
        return Err(HotKeysError::TooLarge { max });
    }
    Ok(bytes)
}

fn mac(secret: &KeySecret, body: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length; this cannot fail.
    let mut mac = <HmacSha256 as Mac>::new_from_slice(&secret.hot_keys_key())
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    mac.update(body);
    mac
}

/// The first line of `bytes` (without its `\n`) and what follows it; `None` without a `\n`.
fn line(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let end = memchr::memchr(b'\n', bytes)?;
    Some((bytes.get(..end)?, bytes.get(end + 1..)?))
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

fn unhex(text: &[u8]) -> Option<Vec<u8>> {
    let digit = |c: u8| {
        char::from(c)
            .to_digit(16)
            .and_then(|d| u8::try_from(d).ok())
    };
    text.chunks_exact(2)
        .map(|pair| match pair {
            [hi, lo] => Some((digit(*hi)? << 4) | digit(*lo)?),
            _ => None,
        })
        .collect()
}

/// The hot keys to keep after a run: `current`'s counts added to `previous`'s halved (so
/// keys stop being hot a few runs after clients stop asking for them), the same result
/// (database, login, fingerprint, request) counted once, the `n` hottest first. For a
/// store several instances write in turn (Redis), each adding its run to what is there.
pub fn merge(previous: Vec<HotKey>, current: Vec<HotKey>, n: usize) -> Vec<HotKey> {
    let mut merged: Vec<HotKey> = Vec::with_capacity(previous.len() + current.len());
    let halved = previous.into_iter().map(|mut k| {
        k.hits /= 2;
        k
    });
    for key in halved.chain(current) {
        let same = merged.iter_mut().find(|m| {
            (&m.database, &m.user, &m.params, &m.fingerprint, &m.request)
                == (
                    &key.database,
                    &key.user,
                    &key.params,
                    &key.fingerprint,
                    &key.request,
                )
        });
        match same {
            Some(m) => m.hits = m.hits.saturating_add(key.hits),
            None => merged.push(key),
        }
    }
    merged.retain(|k| k.hits > 0);
    merged.sort_by_key(|k| std::cmp::Reverse(k.hits));
    merged.truncate(n);
    merged
}

#[cfg(test)]
#[path = "hotkeys_tests.rs"]
mod tests;
