//! The untagged packets of the startup phase: SSLRequest, GSSENCRequest, CancelRequest and the
//! StartupMessage (protocol 3.x, including 3.2 and `_pq_.*` options). Parsed from a copy; the
//! original bytes are what gets relayed.

use bytes::Bytes;

use super::fields::Reader;

/// Longest startup-phase packet PostgreSQL accepts (`MAX_STARTUP_PACKET_LENGTH`).
pub const MAX_STARTUP_PACKET: usize = 10_000;
pub const SSL_REQUEST_CODE: i32 = 80_877_103;
pub const GSSENC_REQUEST_CODE: i32 = 80_877_104;
pub const CANCEL_REQUEST_CODE: i32 = 80_877_102;
/// Longest cancel key protocol 3.2 allows (256 bytes).
pub const MAX_CANCEL_KEY: usize = 256;
/// First byte of a TLS ClientHello record: PostgreSQL 17 "direct TLS" starts with it.
pub const TLS_HANDSHAKE_BYTE: u8 = 0x16;

/// One startup-phase packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupPacket {
    SslRequest,
    GssEncRequest,
    /// `key` is the backend pid followed by the secret, exactly as sent (4 + 4..=256 bytes).
    Cancel {
        key: Bytes,
    },
    Startup(StartupMessage),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartupMessage {
    /// The packet as received, relayed upstream unchanged.
    pub raw: Bytes,
    pub major: u16,
    pub minor: u16,
    /// Parameters as sent (raw bytes; values need not be UTF-8). Empty for unknown majors.
    pub params: Vec<(Bytes, Bytes)>,
}

impl StartupMessage {
    pub fn param(&self, name: &str) -> Option<&[u8]> {
        self.params
            .iter()
            .find(|(k, _)| k.as_ref() == name.as_bytes())
            .map(|(_, v)| v.as_ref())
    }

    /// The same startup with `database` in place of the client's (added if it had none),
    /// every other parameter as sent.
    pub fn with_database(&self, database: &[u8]) -> StartupMessage {
        let mut params = self.params.clone();
        match params.iter_mut().find(|(k, _)| k.as_ref() == b"database") {
            Some((_, v)) => *v = Bytes::copy_from_slice(database),
            None => params.push((
                Bytes::from_static(b"database"),
                Bytes::copy_from_slice(database),
            )),
        }
        let mut body = Vec::new();
        body.extend_from_slice(
            &(u32::from(self.major) << 16 | u32::from(self.minor)).to_be_bytes(),
        );
        for (k, v) in &params {
            body.extend_from_slice(k);
            body.push(0);
            body.extend_from_slice(v);
            body.push(0);
        }
        body.push(0);
        let mut raw = Vec::with_capacity(4 + body.len());
        raw.extend_from_slice(
            &u32::try_from(4 + body.len())
                .unwrap_or(u32::MAX)
                .to_be_bytes(),
        );
        raw.extend_from_slice(&body);
        StartupMessage {
            raw: Bytes::from(raw),
            major: self.major,
            minor: self.minor,
            params,
        }
    }

    /// The role the client asked for (lossy, for logs and metrics only).
    pub fn user(&self) -> String {
        String::from_utf8_lossy(self.param("user").unwrap_or_default()).into_owned()
    }

    /// The database, which defaults to the user name as in PostgreSQL.
    pub fn database(&self) -> String {
        match self.param("database") {
            Some(db) if !db.is_empty() => String::from_utf8_lossy(db).into_owned(),
            _ => self.user(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartupError {
    #[error("invalid startup packet length {0}")]
    BadLength(i64),
    #[error("invalid cancel request of {0} bytes")]
    BadCancel(usize),
    #[error("malformed startup packet: {0}")]
    Malformed(&'static str),
}

/// Total length of the packet at the front of `buf`, once its 4-byte length is there.
pub fn packet_len(buf: &[u8]) -> Result<Option<usize>, StartupError> {
    let Some(&[a, b, c, d]) = buf.get(..4) else {
        return Ok(None);
    };
    let len = i32::from_be_bytes([a, b, c, d]);
    if len < 8 || len as usize > MAX_STARTUP_PACKET {
        return Err(StartupError::BadLength(i64::from(len)));
    }
    Ok(Some(len as usize))
}

/// Parses one complete packet (`raw` holds exactly the bytes its length announced).
pub fn parse(raw: Bytes) -> Result<StartupPacket, StartupError> {
    let mut r = Reader::new(&raw);
    let _len = r.i32().ok_or(StartupError::Malformed("length"))?;
    let code = r.i32().ok_or(StartupError::Malformed("code"))?;
    match code {
        SSL_REQUEST_CODE => Ok(StartupPacket::SslRequest),
        GSSENC_REQUEST_CODE => Ok(StartupPacket::GssEncRequest),
        CANCEL_REQUEST_CODE => {
            let key = r.remaining();
            // pid (4) + secret (4 in 3.0, up to 256 in 3.2)
            if key.len() < 8 || key.len() > 4 + MAX_CANCEL_KEY {
                return Err(StartupError::BadCancel(raw.len()));
            }
            Ok(StartupPacket::Cancel {
                key: raw.slice(8..),
            })
        }
        _ => {
            let major = (code >> 16) as u16;
            let minor = (code & 0xffff) as u16;
            let mut params = Vec::new();
            if major == 3 {
                loop {
                    let name = r.cstr().ok_or(StartupError::Malformed("parameter name"))?;
                    if name.is_empty() {
                        break;
                    }
                    let value = r.cstr().ok_or(StartupError::Malformed("parameter value"))?;
                    let value = Bytes::copy_from_slice(value);
                    // A repeated name: PostgreSQL takes the last value (the `user` it logs
                    // in, the `database` it opens), so pgmemo must read the same one.
                    match params
                        .iter_mut()
                        .find(|(k, _): &&mut (Bytes, Bytes)| k.as_ref() == name)
                    {
                        Some((_, v)) => *v = value,
                        None => params.push((Bytes::copy_from_slice(name), value)),
                    }
                }
            }
            Ok(StartupPacket::Startup(StartupMessage {
                raw,
                major,
                minor,
                params,
            }))
        }
    }
}

/// Encodes a StartupMessage (used by tests and by the fake upstream in tests).
pub fn encode_startup(major: u16, minor: u16, params: &[(&str, &str)]) -> Bytes {
    let mut body = Vec::new();
    body.extend_from_slice(&((i32::from(major) << 16) | i32::from(minor)).to_be_bytes());
    for (k, v) in params {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut out = Vec::with_capacity(body.len() + 4);
    out.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    out.extend_from_slice(&body);
    Bytes::from(out)
}

/// Encodes a CancelRequest for `key` (pid followed by the secret, as BackendKeyData gave them;
/// at most [`MAX_CANCEL_KEY`] bytes of secret).
pub fn encode_cancel(key: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(8 + key.len());
    out.extend_from_slice(&((8 + key.len()) as i32).to_be_bytes());
    out.extend_from_slice(&CANCEL_REQUEST_CODE.to_be_bytes());
    out.extend_from_slice(key);
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_encoded_cancel_parses_back() {
        let key = [0u8, 0, 0, 7, 1, 2, 3, 4];
        let StartupPacket::Cancel { key: parsed } = parse(encode_cancel(&key)).unwrap() else {
            panic!("not a cancel")
        };
        assert_eq!(&parsed[..], &key[..]);
    }

    #[test]
    fn parses_startup_with_pq_options() {
        let raw = encode_startup(3, 2, &[("user", "alice"), ("_pq_.foo", "1")]);
        assert_eq!(packet_len(&raw), Ok(Some(raw.len())));
        let StartupPacket::Startup(m) = parse(raw).unwrap() else {
            panic!("not a startup")
        };
        assert_eq!((m.major, m.minor), (3, 2));
        assert_eq!(m.user(), "alice");
        assert_eq!(m.database(), "alice");
        assert_eq!(m.param("_pq_.foo"), Some(&b"1"[..]));
    }

    #[test]
    fn a_repeated_parameter_reads_as_postgresql_reads_it_the_last_value() {
        let raw = encode_startup(
            3,
            0,
            &[
                ("user", "postgres"),
                ("database", "pgmemo"),
                ("user", "app"),
                ("database", "x"),
            ],
        );
        let Ok(StartupPacket::Startup(m)) = parse(raw) else {
            panic!("not a startup");
        };
        assert_eq!(m.user(), "app");
        assert_eq!(m.database(), "x");
        assert_eq!(m.params.len(), 2);
    }

    #[test]
    fn with_database_replaces_only_the_database() {
        let raw = encode_startup(
            3,
            0,
            &[
                ("user", "u"),
                ("database", "pgmemo"),
                ("application_name", "a"),
            ],
        );
        let Ok(StartupPacket::Startup(m)) = parse(raw) else {
            panic!("not a startup");
        };
        let login = m.with_database(b"postgres");
        let Ok(StartupPacket::Startup(again)) = parse(login.raw.clone()) else {
            panic!("with_database made no startup");
        };
        assert_eq!(again.database(), "postgres");
        assert_eq!(again.user(), "u");
        assert_eq!(again.param("application_name"), Some(&b"a"[..]));
        assert_eq!((again.major, again.minor), (3, 0));
    }

    #[test]
    fn parses_cancel_with_long_key() {
        let mut raw = vec![0, 0, 0, 0];
        raw.extend_from_slice(&CANCEL_REQUEST_CODE.to_be_bytes());
        raw.extend_from_slice(&7i32.to_be_bytes());
        raw.extend_from_slice(&[9u8; 32]);
        let len = raw.len() as i32;
        raw.splice(0..4, len.to_be_bytes());
        let StartupPacket::Cancel { key } = parse(Bytes::from(raw)).unwrap() else {
            panic!("not a cancel")
        };
        assert_eq!(key.len(), 36);
    }

    #[test]
    fn rejects_garbage() {
        assert!(packet_len(&[0xff, 0xff, 0xff, 0xff]).is_err());
        assert!(packet_len(&[0, 0, 0, 3]).is_err());
        // truncated parameter list
        let mut raw = vec![0, 0, 0, 13, 0, 3, 0, 0];
        raw.extend_from_slice(b"user\0");
        assert!(parse(Bytes::from(raw)).is_err());
    }
}
