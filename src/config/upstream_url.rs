//! Parses `upstream.url` (a libpq-style `postgres://` URL) into an [`UpstreamTarget`]: where
//! client sessions are relayed (host, port), pgmemo's own credentials for side connections
//! (user, password, dbname), and how the upstream leg uses TLS (sslmode, sslrootcert).

use std::fmt;
use std::net::Ipv6Addr;
use std::path::PathBuf;
use std::str::FromStr;

use percent_encoding::percent_decode_str;
use url::{Host, Url};

/// PostgreSQL's default port, used when the URL names none.
pub const DEFAULT_PORT: u16 = 5432;

/// The query parameters pgmemo understands; anything else is rejected so a typo such as
/// `sslmod=require` cannot silently downgrade security.
const KNOWN_PARAMS: &[&str] = &["sslmode", "sslrootcert"];

/// libpq's `sslmode`, with libpq's meaning for each value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum SslMode {
    /// Plain TCP only.
    Disable,
    /// Plain TCP first; TLS only if the server insists.
    Allow,
    /// TLS if the server offers it, else plain TCP; the certificate is not verified (libpq's
    /// default, so it is ours too).
    #[default]
    Prefer,
    /// TLS required; the certificate is not verified unless `sslrootcert` is given (then as
    /// `VerifyCa`, like libpq).
    Require,
    /// TLS required; the certificate chain must verify against `sslrootcert` (or the built-in
    /// web roots when it is absent).
    VerifyCa,
    /// As `VerifyCa`, and the certificate must name the host.
    VerifyFull,
}

impl SslMode {
    /// Every accepted spelling, in libpq's order (used in error messages and docs).
    pub const ALL: [SslMode; 6] = [
        SslMode::Disable,
        SslMode::Allow,
        SslMode::Prefer,
        SslMode::Require,
        SslMode::VerifyCa,
        SslMode::VerifyFull,
    ];

    /// The libpq spelling, e.g. `verify-full`.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SslMode {
    type Err = UpstreamUrlError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SslMode::ALL
            .into_iter()
            .find(|mode| mode.as_str() == s)
            .ok_or_else(|| UpstreamUrlError::BadSslMode(s.to_owned()))
    }
}

/// Why an upstream URL was rejected. Messages never echo the password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamUrlError {
    #[error("not a URL: {0}")]
    Syntax(#[from] url::ParseError),
    #[error("scheme must be postgres:// or postgresql://, not {0}://")]
    Scheme(String),
    #[error("no host: write postgres://HOST[:PORT] (unix sockets are not supported)")]
    MissingHost,
    #[error("several hosts ({0}) are not supported: name exactly one upstream host")]
    MultipleHosts(String),
    #[error("{0} is not valid UTF-8 after percent-decoding")]
    NotUtf8(&'static str),
    #[error(
        "unknown query parameter `{0}` (supported: {known})",
        known = KNOWN_PARAMS.join(", ")
    )]
    UnknownParam(String),
    #[error("query parameter `{0}` is given more than once")]
    DuplicateParam(String),
    #[error(
        "sslmode `{0}` is not one of {all}",
        all = SslMode::ALL.map(SslMode::as_str).join(", ")
    )]
    BadSslMode(String),
    #[error("query parameter `{0}` has an empty value")]
    EmptyParam(String),
}

/// A parsed `upstream.url`. `Debug` hides the password.
#[derive(Clone, PartialEq, Eq)]
pub struct UpstreamTarget {
    /// Host name or IP address (IPv6 without brackets), where client sessions are relayed.
    pub host: String,
    pub port: u16,
    /// pgmemo's own role for side connections (catalog, background work); never used to
    /// authenticate relayed client sessions.
    pub user: Option<String>,
    pub password: Option<String>,
    pub dbname: Option<String>,
    pub sslmode: SslMode,
    /// PEM file with the CA certificate(s) that verify the upstream (verify-ca / verify-full).
    pub sslrootcert: Option<PathBuf>,
}

impl UpstreamTarget {
    /// Parses `postgres://[user[:password]@]host[:port][/dbname][?sslmode=..&sslrootcert=..]`
    /// (`postgresql://` too). User, password and dbname are percent-decoded. A host that is an
    /// absolute path (`?host=/var/run/postgresql`, or percent-encoded in the authority) is a
    /// Unix-socket directory, as in libpq: the socket is `HOST/.s.PGSQL.PORT`.
    pub fn parse(input: &str) -> Result<UpstreamTarget, UpstreamUrlError> {
        let url = Url::parse(input.trim())?;
        if url.scheme() != "postgres" && url.scheme() != "postgresql" {
            return Err(UpstreamUrlError::Scheme(url.scheme().to_owned()));
        }
        // libpq's `?host=/socket/dir` form (a Unix-socket directory) overrides the authority.
        let mut host_param = None;
        for (name, value) in url.query_pairs() {
            if name == "host" {
                if value.is_empty() {
                    return Err(UpstreamUrlError::EmptyParam(name.into_owned()));
                }
                if host_param.replace(value.into_owned()).is_some() {
                    return Err(UpstreamUrlError::DuplicateParam("host".to_owned()));
                }
            }
        }
        let host = match (host_param, url.host()) {
            (Some(h), _) => h,
            (None, None) => return Err(UpstreamUrlError::MissingHost),
            (None, Some(Host::Domain(""))) => return Err(UpstreamUrlError::MissingHost),
            (None, Some(Host::Domain(domain))) => {
                // libpq's multi-host form; url parses it as one opaque host name.
                if domain.contains(',') {
                    return Err(UpstreamUrlError::MultipleHosts(domain.to_owned()));
                }
                decode(domain, "host")?
            }
            (None, Some(Host::Ipv4(ip))) => ip.to_string(),
            (None, Some(Host::Ipv6(ip))) => Ipv6Addr::to_string(&ip),
        };
        let port = url.port().unwrap_or(DEFAULT_PORT);
        let user = match url.username() {
            "" => None,
            raw => Some(decode(raw, "user")?),
        };
        let password = url
            .password()
            .map(|raw| decode(raw, "password"))
            .transpose()?;
        let dbname = match url.path().strip_prefix('/').unwrap_or(url.path()) {
            "" => None,
            raw => Some(decode(raw, "dbname")?),
        };

        let mut sslmode = None;
        let mut sslrootcert = None;
        for (name, value) in url.query_pairs() {
            let slot_taken = match name.as_ref() {
                "sslmode" => sslmode.replace(value.parse::<SslMode>()?).is_some(),
                "sslrootcert" => {
                    if value.is_empty() {
                        return Err(UpstreamUrlError::EmptyParam(name.into_owned()));
                    }
                    sslrootcert.replace(PathBuf::from(value.as_ref())).is_some()
                }
                "host" => false,
                _ => return Err(UpstreamUrlError::UnknownParam(name.into_owned())),
            };
            if slot_taken {
                return Err(UpstreamUrlError::DuplicateParam(name.into_owned()));
            }
        }

        Ok(UpstreamTarget {
            host,
            port,
            user,
            password,
            dbname,
            sslmode: sslmode.unwrap_or_default(),
            sslrootcert,
        })
    }

    /// Whether the host is a Unix-socket directory.
    pub fn is_unix_socket(&self) -> bool {
        self.host.starts_with('/')
    }

    /// `host:port` with IPv6 bracketed (or the socket path), for connecting and for messages.
    pub fn host_port(&self) -> String {
        if self.is_unix_socket() {
            format!("{}/.s.PGSQL.{}", self.host.trim_end_matches('/'), self.port)
        } else if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Debug for UpstreamTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamTarget")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "********"))
            .field("dbname", &self.dbname)
            .field("sslmode", &self.sslmode)
            .field("sslrootcert", &self.sslrootcert)
            .finish()
    }
}

fn decode(raw: &str, part: &'static str) -> Result<String, UpstreamUrlError> {
    percent_decode_str(raw)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| UpstreamUrlError::NotUtf8(part))
}

/// Replaces the password in a `scheme://user:password@host...` URL with `********`, and the
/// value of a `pass` or `password` query parameter (Redis's `unix://path?pass=...`). Works on
/// text that does not parse as a URL too, so error messages about a bad URL stay safe to print.
pub fn redact_password(url: &str) -> String {
    redact_query_password(&redact_userinfo(url))
}

/// `?pass=...` / `&password=...` values replaced by `********`.
fn redact_query_password(url: &str) -> String {
    let Some(q) = url.find('?') else {
        return url.to_owned();
    };
    let (head, query) = url.split_at(q + 1);
    let pairs: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((k, _))
                if k.eq_ignore_ascii_case("pass") || k.eq_ignore_ascii_case("password") =>
            {
                format!("{k}=********")
            }
            _ => pair.to_owned(),
        })
        .collect();
    format!("{head}{}", pairs.join("&"))
}

fn redact_userinfo(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let authority_start = scheme_end + 3;
    let rest = url.get(authority_start..).unwrap_or_default();
    // The authority ends at the first '/', '?' or '#'; userinfo ends at its last '@'.
    let authority_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = rest.get(..authority_len).unwrap_or_default();
    let Some(at) = authority.rfind('@') else {
        return url.to_owned();
    };
    let userinfo = authority.get(..at).unwrap_or_default();
    let Some(colon) = userinfo.find(':') else {
        return url.to_owned();
    };
    let before = url.get(..authority_start + colon + 1).unwrap_or_default();
    let after = url.get(authority_start + at..).unwrap_or_default();
    format!("{before}********{after}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_passwords_are_redacted_too() {
        assert_eq!(
            redact_password("unix:///run/redis.sock?db=2&pass=hunter2"),
            "unix:///run/redis.sock?db=2&pass=********"
        );
        assert_eq!(
            redact_password("redis://u:secret@h:6379/0?password=x"),
            "redis://u:********@h:6379/0?password=********"
        );
        assert_eq!(
            redact_password("redis://h:6379/0?db=1"),
            "redis://h:6379/0?db=1"
        );
    }

    #[test]
    fn minimal_url_gets_libpq_defaults() {
        let t = UpstreamTarget::parse("postgres://127.0.0.1").unwrap();
        assert_eq!(t.host, "127.0.0.1");
        assert_eq!(t.port, 5432);
        assert_eq!(t.user, None);
        assert_eq!(t.password, None);
        assert_eq!(t.dbname, None);
        assert_eq!(t.sslmode, SslMode::Prefer);
        assert_eq!(t.sslrootcert, None);
    }

    #[test]
    fn full_url_is_decoded() {
        let t = UpstreamTarget::parse(
            "postgresql://us%40er:p%3Aw%2Fd@db.example.com:6543/my%20db?sslmode=verify-full&sslrootcert=/etc/ca%20file.pem",
        )
        .unwrap();
        assert_eq!(t.host, "db.example.com");
        assert_eq!(t.port, 6543);
        assert_eq!(t.user.as_deref(), Some("us@er"));
        assert_eq!(t.password.as_deref(), Some("p:w/d"));
        assert_eq!(t.dbname.as_deref(), Some("my db"));
        assert_eq!(t.sslmode, SslMode::VerifyFull);
        assert_eq!(t.sslrootcert, Some(PathBuf::from("/etc/ca file.pem")));
        assert_eq!(t.host_port(), "db.example.com:6543");
    }

    #[test]
    fn ipv6_host() {
        let t = UpstreamTarget::parse("postgres://u@[::1]:7000/db").unwrap();
        assert_eq!(t.host, "::1");
        assert_eq!(t.port, 7000);
        assert_eq!(t.host_port(), "[::1]:7000");
        let t = UpstreamTarget::parse("postgres://[::1]").unwrap();
        assert_eq!(t.port, 5432);
    }

    #[test]
    fn every_sslmode_spelling_round_trips() {
        for mode in SslMode::ALL {
            let t = UpstreamTarget::parse(&format!("postgres://h/?sslmode={mode}")).unwrap();
            assert_eq!(t.sslmode, mode);
        }
    }

    #[test]
    fn rejections_name_the_problem() {
        let err = |s: &str| UpstreamTarget::parse(s).unwrap_err();
        assert_eq!(err("mysql://h"), UpstreamUrlError::Scheme("mysql".into()));
        assert_eq!(err("postgres:///db"), UpstreamUrlError::MissingHost);
        assert_eq!(
            err("postgres://h1,h2/db"),
            UpstreamUrlError::MultipleHosts("h1,h2".into())
        );
        assert_eq!(
            err("postgres://h/db?sslmod=require"),
            UpstreamUrlError::UnknownParam("sslmod".into())
        );
        assert!(
            err("postgres://h/db?sslmod=require")
                .to_string()
                .contains("sslmod")
        );
        assert_eq!(
            err("postgres://h/db?sslmode=sometimes"),
            UpstreamUrlError::BadSslMode("sometimes".into())
        );
        assert!(
            err("postgres://h/db?sslmode=sometimes")
                .to_string()
                .contains("verify-full")
        );
        assert_eq!(
            err("postgres://h/?sslmode=require&sslmode=disable"),
            UpstreamUrlError::DuplicateParam("sslmode".into())
        );
        assert!(matches!(
            err("postgres://h:99999"),
            UpstreamUrlError::Syntax(_)
        ));
        assert!(matches!(err("not a url"), UpstreamUrlError::Syntax(_)));
        assert!(matches!(
            err("postgres://[::1/db"),
            UpstreamUrlError::Syntax(_)
        ));
        assert_eq!(
            err("postgres://u:%FF@h"),
            UpstreamUrlError::NotUtf8("password")
        );
    }

    #[test]
    fn redaction_hides_only_the_password() {
        assert_eq!(
            redact_password("postgres://u:secret@h:5432/db?sslmode=require"),
            "postgres://u:********@h:5432/db?sslmode=require"
        );
        assert_eq!(redact_password("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact_password("redis://:pw@h"), "redis://:********@h");
        assert_eq!(redact_password("postgres://h/p@x"), "postgres://h/p@x");
        // Unparseable input is still redacted (the '@' inside the password is the last one).
        assert_eq!(
            redact_password("postgres://u:p@ss@h:badport"),
            "postgres://u:********@h:badport"
        );
        assert_eq!(redact_password("garbage"), "garbage");
    }

    #[test]
    fn debug_hides_the_password() {
        let t = UpstreamTarget::parse("postgres://u:hunter2@h/db").unwrap();
        let shown = format!("{t:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("********"), "{shown}");
    }

    #[test]
    fn unix_socket_directory_as_in_libpq() {
        let t = UpstreamTarget::parse("postgres:///db?host=/var/run/postgresql").unwrap();
        assert!(t.is_unix_socket());
        assert_eq!(t.host_port(), "/var/run/postgresql/.s.PGSQL.5432");
        let t = UpstreamTarget::parse("postgres://app@%2Fvar%2Frun%2Fpostgresql/db").unwrap();
        assert_eq!(t.host_port(), "/var/run/postgresql/.s.PGSQL.5432");
        assert_eq!(t.user.as_deref(), Some("app"));
        let t = UpstreamTarget::parse("postgres://%2Ftmp%2Fpg:6000/db").unwrap();
        assert_eq!(t.host_port(), "/tmp/pg/.s.PGSQL.6000");
        assert!(UpstreamTarget::parse("postgres:///db?host=/a&host=/b").is_err());
        assert!(UpstreamTarget::parse("postgres:///db").is_err());
    }
}
