//! The client side of PostgreSQL's password authentication for pgmemo's own connections
//! (the change stream's, the background refresher's; relayed client sessions authenticate
//! end to end and never use this): one step per Authentication message, no I/O, so every
//! connection that logs in shares one implementation of cleartext, MD5 and SCRAM-SHA-256.

use postgres_protocol::authentication::{md5_hash, sasl};

use crate::protocol::fields::Reader;

/// Why authentication cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("the server asks for {0} authentication, which pgmemo's own connections cannot do")]
    Unsupported(String),
    #[error("the server asks for a password and none is known for this login")]
    PasswordRequired,
    #[error("SCRAM authentication failed: {0}")]
    Scram(std::io::Error),
    #[error("malformed {0} message")]
    Malformed(&'static str),
}

/// What to do after one Authentication message.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// AuthenticationOk: the start-up continues.
    Done,
    /// Send a PasswordMessage (`p`) with this body.
    Reply(Vec<u8>),
    /// Nothing to send (SASL final): read the next message.
    Wait,
}

/// One login's authentication exchange.
pub struct Exchange<'a> {
    user: &'a str,
    password: Option<&'a str>,
    scram: Option<sasl::ScramSha256>,
}

impl<'a> Exchange<'a> {
    pub fn new(user: &'a str, password: Option<&'a str>) -> Self {
        Self {
            user,
            password,
            scram: None,
        }
    }

    /// The answer to an Authentication message with this `body`.
    pub fn step(&mut self, body: &[u8]) -> Result<Step, AuthError> {
        let mut r = Reader::new(body);
        let password = || self.password.ok_or(AuthError::PasswordRequired);
        let reply = match r.i32().ok_or(AuthError::Malformed("authentication"))? {
            0 => return Ok(Step::Done),
            3 => [password()?.as_bytes(), b"\0"].concat(),
            5 => {
                let pw = password()?;
                let salt: [u8; 4] = r
                    .bytes(4)
                    .and_then(|s| s.try_into().ok())
                    .ok_or(AuthError::Malformed("MD5 salt"))?;
                let hash = md5_hash(self.user.as_bytes(), pw.as_bytes(), salt);
                [hash.as_bytes(), b"\0"].concat()
            }
            10 => {
                let mut offered = Vec::new();
                while let Some(m) = r.cstr().filter(|m| !m.is_empty()) {
                    offered.push(String::from_utf8_lossy(m).into_owned());
                }
                if !offered.iter().any(|m| m == sasl::SCRAM_SHA_256) {
                    return Err(AuthError::Unsupported(format!(
                        "SASL ({})",
                        offered.join(", ")
                    )));
                }
                let pw = password()?;
                // No channel binding: "n" tells the server this client does not do it, which
                // is accepted even when it offers SCRAM-SHA-256-PLUS too.
                let s = sasl::ScramSha256::new(pw.as_bytes(), sasl::ChannelBinding::unsupported());
                let first = s.message();
                let len = i32::try_from(first.len()).map_err(|_| AuthError::Malformed("SASL"))?;
                let reply = [
                    sasl::SCRAM_SHA_256.as_bytes(),
                    b"\0",
                    &len.to_be_bytes(),
                    first,
                ]
                .concat();
                self.scram = Some(s);
                reply
            }
            11 => {
                let s = self
                    .scram
                    .as_mut()
                    .ok_or(AuthError::Malformed("SASL continue"))?;
                s.update(r.remaining()).map_err(AuthError::Scram)?;
                s.message().to_vec()
            }
            12 => {
                let s = self
                    .scram
                    .as_mut()
                    .ok_or(AuthError::Malformed("SASL final"))?;
                s.finish(r.remaining()).map_err(AuthError::Scram)?;
                return Ok(Step::Wait);
            }
            2 => return Err(AuthError::Unsupported("Kerberos V5".into())),
            6 => return Err(AuthError::Unsupported("SCM credentials".into())),
            7..=9 => return Err(AuthError::Unsupported("GSSAPI/SSPI".into())),
            other => return Err(AuthError::Unsupported(format!("method {other}"))),
        };
        Ok(Step::Reply(reply))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(code: i32, rest: &[u8]) -> Vec<u8> {
        [&code.to_be_bytes()[..], rest].concat()
    }

    #[test]
    fn each_method_answers_as_the_server_expects() {
        let mut a = Exchange::new("u", Some("pw"));
        assert_eq!(
            a.step(&request(3, b"")).ok(),
            Some(Step::Reply(b"pw\0".to_vec()))
        );
        let md5 = md5_hash(b"u", b"pw", [1, 2, 3, 4]);
        assert_eq!(
            a.step(&request(5, &[1, 2, 3, 4])).ok(),
            Some(Step::Reply([md5.as_bytes(), b"\0"].concat()))
        );
        assert_eq!(a.step(&request(0, b"")).ok(), Some(Step::Done));
    }

    #[test]
    fn what_it_cannot_do_is_an_error_not_a_panic() {
        let mut none = Exchange::new("u", None);
        assert!(matches!(
            none.step(&request(3, b"")),
            Err(AuthError::PasswordRequired)
        ));
        let mut a = Exchange::new("u", Some("pw"));
        assert!(matches!(
            a.step(&request(5, &[1, 2])),
            Err(AuthError::Malformed(_))
        ));
        assert!(matches!(
            a.step(&request(12, b"v=x")),
            Err(AuthError::Malformed(_))
        ));
        assert!(matches!(
            a.step(&request(10, b"SCRAM-SHA-256-PLUS\0\0")),
            Err(AuthError::Unsupported(_))
        ));
        assert!(matches!(a.step(&[0, 0]), Err(AuthError::Malformed(_))));
        assert!(matches!(
            a.step(&request(7, b"")),
            Err(AuthError::Unsupported(_))
        ));
    }
}
