//! `[admin]`: the admin address may only leave loopback with a bearer token set (anyone who
//! can reach it could otherwise flush the cache or read every statement's text), a token is
//! never empty, a console password is a usable SCRAM secret, every allowed host is a bare
//! host name, and the statistics table's byte bound is within range.

use super::*;
use crate::config::AdminConfig;

/// Accepted `admin.query_stats_bytes`: room for a few dozen shapes at least, and no more
/// than a bound that could itself crowd out the cache.
pub const QUERY_STATS_BYTES_RANGE: (u64, u64) = (64 << 10, 1 << 30);

/// Shortest accepted console password (a verifier is far longer).
pub const MIN_PASSWORD_BYTES: usize = 12;

/// Shortest accepted token: a guessable token is no better than none.
pub const MIN_TOKEN_BYTES: usize = 16;

pub(super) fn check_admin(admin: &AdminConfig, issues: &mut Vec<ConfigIssue>) {
    let token = admin.token.as_ref().map(|t| t.expose());
    if !admin.listen.ip().is_loopback() && token.is_none() {
        issues.push(ConfigIssue::new(
            "admin.listen",
            quoted(&admin.listen.to_string()),
            "is not a loopback address and no admin token is set: set admin.token (or \
             PGMEMO_ADMIN_TOKEN) so that writes and the disclosing GETs need it, or bind admin.listen to \
             127.0.0.1",
        ));
    }
    if let Some(t) = token
        && t.len() < MIN_TOKEN_BYTES
    {
        issues.push(ConfigIssue::new(
            "admin.token",
            crate::config::REDACTED,
            format!("must be at least {MIN_TOKEN_BYTES} bytes long"),
        ));
    }
    if let Some(p) = &admin.password {
        if let Err(e) = crate::scram::Verifier::from_config(p.expose()) {
            issues.push(ConfigIssue::new(
                "admin.password",
                crate::config::REDACTED,
                e.to_string(),
            ));
        } else if p.expose().len() < MIN_PASSWORD_BYTES {
            issues.push(ConfigIssue::new(
                "admin.password",
                crate::config::REDACTED,
                format!("must be at least {MIN_PASSWORD_BYTES} bytes long"),
            ));
        }
    }
    for host in &admin.allowed_hosts {
        if let Some(why) = host_name_problem(host) {
            issues.push(ConfigIssue::new("admin.allowed_hosts", quoted(host), why));
        }
    }
    let (min, max) = QUERY_STATS_BYTES_RANGE;
    let bytes = admin.query_stats_bytes.0;
    if !(min..=max).contains(&bytes) {
        issues.push(ConfigIssue::new(
            "admin.query_stats_bytes",
            admin.query_stats_bytes.to_string(),
            format!("must be from {min} (64KiB) to {max} (1GiB)"),
        ));
    }
}

/// Why `host` cannot be an `admin.allowed_hosts` entry: the admin server compares it with the
/// `Host` header's name, port stripped, ignoring case.
fn host_name_problem(host: &str) -> Option<&'static str> {
    if host.is_empty() {
        Some("must not be empty")
    } else if host.contains(':') {
        Some(
            "must be a host name without a port (IP literals, IPv6 included, are always \
             allowed and need no entry)",
        )
    } else if !host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
    {
        Some("is not a host name (letters, digits, '-', '.' and '_' only)")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, Secret};

    fn keys(c: &Config) -> Vec<String> {
        c.validate()
            .err()
            .map(|e| e.issues.into_iter().map(|i| i.key).collect())
            .unwrap_or_default()
    }

    #[test]
    fn a_non_loopback_admin_address_needs_a_token() {
        let mut c = Config::default();
        assert!(keys(&c).is_empty(), "the default binds loopback");
        c.admin.listen = "0.0.0.0:9187".parse().unwrap_or(c.admin.listen);
        assert_eq!(keys(&c), ["admin.listen"]);
        let text = c
            .validate()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(text.contains("admin.token"), "{text}");
        c.admin.token = Some(Secret::new("a-long-enough-admin-token"));
        assert!(keys(&c).is_empty());
        c.admin.listen = "[::1]:9187".parse().unwrap_or(c.admin.listen);
        c.admin.token = None;
        assert!(keys(&c).is_empty(), "IPv6 loopback is loopback");
    }

    #[test]
    fn short_tokens_and_odd_bounds_are_refused_without_printing_the_token() {
        let mut c = Config::default();
        c.admin.token = Some(Secret::new("short-secret"));
        c.admin.query_stats_bytes = crate::config::ByteSize(1);
        assert_eq!(keys(&c), ["admin.token", "admin.query_stats_bytes"]);
        let text = c
            .validate()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(!text.contains("short-secret"), "{text}");
    }

    #[test]
    fn console_passwords_must_be_usable_and_are_never_printed() {
        let mut c = Config::default();
        c.admin.roles = vec!["ops".into()];
        c.admin.password = Some(Secret::new("a-fine-password"));
        assert!(keys(&c).is_empty());
        c.admin.password = Some(Secret::new(
            "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=",
        ));
        assert!(keys(&c).is_empty(), "a verifier");
        for bad in ["short", "pässwörd-long-enough", "SCRAM-SHA-256$4096:bad"] {
            c.admin.password = Some(Secret::new(bad));
            assert_eq!(keys(&c), ["admin.password"], "{bad}");
            let text = c
                .validate()
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(!text.contains(bad), "{text}");
        }
    }

    #[test]
    fn allowed_hosts_are_bare_host_names() {
        let mut c = Config::default();
        c.admin.allowed_hosts = vec!["pgmemo".into(), "Admin.Example.COM".into(), "a_b-c.".into()];
        assert!(keys(&c).is_empty());
        for bad in ["", "pgmemo:9187", "[::1]", "::1", "a b", "evil/x", "höst"] {
            c.admin.allowed_hosts = vec!["pgmemo".into(), bad.into()];
            assert_eq!(keys(&c), ["admin.allowed_hosts"], "{bad:?}");
        }
    }
}
