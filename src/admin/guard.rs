//! The one access check in front of every admin route (a threat-model review found the admin
//! HTTP server open to a web page in the operator's browser and to anyone who could GET).
//! In order:
//!
//! 1. **Host** (against DNS rebinding: a page on `evil.example` that re-resolves its own name
//!    to 127.0.0.1 may read the answers, since the browser sees one origin). The `Host`
//!    header, port stripped, must be an IP literal (a page whose origin is the IP itself is
//!    not cross-site), `localhost`, or a name in `admin.allowed_hosts`; anything else, two
//!    Host headers, or one that does not parse gets 421 Misdirected Request. `/healthz` and
//!    `/readyz` are exempt: orchestrators probe by service name and they disclose nothing
//!    worth rebinding for. A request without a Host header (HTTP/1.0) passes: a browser
//!    always sends one.
//! 2. **Token** (`admin.token`, when set): every request but a GET or HEAD, and the GETs that
//!    disclose written values or the configuration ([`DISCLOSING`]), need
//!    `Authorization: Bearer <token>`, else 401. The other GETs stay open: Prometheus,
//!    health checks and the dashboard poll them and they carry no secret or value.
//! 3. **Content type**: every request but a GET or HEAD must be `application/json`, else 415.
//!    A browser cannot send that type cross-site without a CORS preflight, which pgmemo never
//!    answers, so no HTML form or `fetch` on another site can flush the cache or retry a
//!    dead letter.
//!
//! The token and the allowed hosts are read from an [`AdminAccess`] that the SIGHUP reload
//! replaces, so both apply to the next request after a reload.

use std::net::{Ipv4Addr, Ipv6Addr};

use arc_swap::ArcSwap;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use tracing::info;

use super::AdminState;
use super::auth::{AdminToken, bearer};
use crate::config::AdminConfig;

/// GET paths that need the token when one is set: `/behind/dead-letters` lists queued
/// statements with their values, `/api/config` the rules, warm queries and login names.
pub const DISCLOSING: &[&str] = &["/api/config", "/behind/dead-letters"];

/// Paths answered whatever the Host header (probes address pgmemo by a service name).
pub const ANY_HOST: &[&str] = &["/healthz", "/readyz"];

/// The access settings in force: replaced as a whole on reload.
pub struct AdminAccess {
    current: ArcSwap<Policy>,
}

struct Policy {
    token: Option<AdminToken>,
    /// Lower-case, without a trailing dot.
    allowed_hosts: Vec<String>,
}

impl Policy {
    fn new(token: Option<&str>, allowed_hosts: &[String]) -> Self {
        Self {
            token: token.map(AdminToken::new),
            allowed_hosts: allowed_hosts
                .iter()
                .map(|h| h.strip_suffix('.').unwrap_or(h).to_ascii_lowercase())
                .collect(),
        }
    }
}

impl std::fmt::Debug for AdminAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let p = self.current.load();
        f.debug_struct("AdminAccess")
            .field("token", &p.token.as_ref().map(|_| "***"))
            .field("allowed_hosts", &p.allowed_hosts)
            .finish()
    }
}

impl AdminAccess {
    /// With `token` (None: nothing needs one) and `allowed_hosts` (names as in the config).
    pub fn new(token: Option<&str>, allowed_hosts: &[String]) -> Self {
        Self {
            current: ArcSwap::from_pointee(Policy::new(token, allowed_hosts)),
        }
    }

    /// No token, no extra host names.
    pub fn open() -> Self {
        Self::new(None, &[])
    }

    /// What `[admin]` says.
    pub fn from_config(admin: &AdminConfig) -> Self {
        Self::new(
            admin.token.as_ref().map(|t| t.expose()),
            &admin.allowed_hosts,
        )
    }

    /// Applies a reloaded `[admin]`: the next request is checked against it. Logs what
    /// changed (never the token).
    pub fn reload(&self, admin: &AdminConfig) {
        let token = admin.token.as_ref().map(|t| t.expose());
        let new = Policy::new(token, &admin.allowed_hosts);
        let old = self.current.load();
        let token_changed = match (&old.token, token) {
            (None, None) => false,
            (Some(old), Some(new)) => !old.matches(new.as_bytes()),
            _ => true,
        };
        if token_changed {
            info!(set = token.is_some(), "admin.token changed");
        }
        if old.allowed_hosts != new.allowed_hosts {
            info!(allowed_hosts = ?new.allowed_hosts, "admin.allowed_hosts changed");
        }
        self.current.store(std::sync::Arc::new(new));
    }
}

/// Middleware on every admin route (the fallback included): see the module header.
pub(super) async fn check(
    State(state): State<AdminState>,
    request: Request,
    next: Next,
) -> Response {
    let policy = state.access.current.load();
    let path = request.uri().path();
    if !ANY_HOST.contains(&path) && !host_allowed(&request, &policy.allowed_hosts) {
        return refuse(
            StatusCode::MISDIRECTED_REQUEST,
            "this Host is not served here: use an IP address, localhost, or a name listed in \
             admin.allowed_hosts",
        );
    }
    let safe = matches!(*request.method(), Method::GET | Method::HEAD);
    if let Some(token) = &policy.token
        && (!safe || DISCLOSING.contains(&path))
        && !bearer(request.headers()).is_some_and(|t| token.matches(t))
    {
        metrics::counter!(crate::telemetry::names::ADMIN_UNAUTHORIZED).increment(1);
        let mut response = refuse(
            StatusCode::UNAUTHORIZED,
            "this request needs the admin token: Authorization: Bearer <admin.token>",
        );
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return response;
    }
    if !safe && !is_json(request.headers()) {
        return refuse(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type must be application/json",
        );
    }
    drop(policy);
    next.run(request).await
}

fn refuse(status: StatusCode, message: &str) -> Response {
    super::invalidate::json(status, &serde_json::json!({ "error": message }))
}

/// Only `application/json` (parameters such as `charset` aside).
pub(super) fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"))
}

/// Whether the request names a host this server answers to: its Host header (at most one)
/// and the authority of an absolute-form target, when either is there.
fn host_allowed(request: &Request, allowed: &[String]) -> bool {
    let mut hosts = request.headers().get_all(header::HOST).iter();
    let first = hosts.next();
    if hosts.next().is_some() {
        return false;
    }
    let authority = request.uri().authority().map(|a| a.host().as_bytes());
    [first.map(HeaderValue::as_bytes), authority]
        .into_iter()
        .flatten()
        .all(|value| match parse_host(value) {
            Some(Host::Ip) => true,
            Some(Host::Name(name)) => {
                name.eq_ignore_ascii_case("localhost")
                    || allowed.iter().any(|a| a.eq_ignore_ascii_case(name))
            }
            None => false,
        })
}

/// What a Host value names, port stripped.
#[derive(Debug, PartialEq, Eq)]
enum Host<'a> {
    /// An IPv4 literal, or an IPv6 literal in brackets.
    Ip,
    /// A name (letters, digits, `-`, `.`, `_`), without its trailing dot.
    Name(&'a str),
}

/// `host[:port]`, `[ipv6][:port]`; None for anything else (bytes that are not ASCII, an IPv6
/// literal without brackets, a port that is not digits, an empty name).
fn parse_host(value: &[u8]) -> Option<Host<'_>> {
    let value = std::str::from_utf8(value).ok()?;
    if let Some(rest) = value.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        inside.parse::<Ipv6Addr>().ok()?;
        let port_ok = after.is_empty() || after.strip_prefix(':').is_some_and(is_port);
        return port_ok.then_some(Host::Ip);
    }
    let (name, port) = match value.split_once(':') {
        Some((name, port)) => (name, Some(port)),
        None => (value, None),
    };
    if !port.is_none_or(is_port) {
        return None;
    }
    if name.parse::<Ipv4Addr>().is_ok() {
        return Some(Host::Ip);
    }
    let name = name.strip_suffix('.').unwrap_or(name);
    let well_formed = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
    well_formed.then_some(Host::Name(name))
}

/// A port as a Host header carries it: at most five digits (empty is allowed by RFC 3986).
fn is_port(port: &str) -> bool {
    port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_values_parse_without_panicking() {
        for (value, want) in [
            ("127.0.0.1", Some(Host::Ip)),
            ("127.0.0.1:9187", Some(Host::Ip)),
            ("10.1.2.3:", Some(Host::Ip)),
            ("[::1]", Some(Host::Ip)),
            ("[::1]:9187", Some(Host::Ip)),
            ("[fe80::1%25eth0]", None),
            ("[2001:db8::7]:80", Some(Host::Ip)),
            ("localhost", Some(Host::Name("localhost"))),
            ("LocalHost:9187", Some(Host::Name("LocalHost"))),
            ("localhost.", Some(Host::Name("localhost"))),
            ("pgmemo:9187", Some(Host::Name("pgmemo"))),
            ("evil.example", Some(Host::Name("evil.example"))),
            (
                "my_service-1.internal",
                Some(Host::Name("my_service-1.internal")),
            ),
            // A dotted name that is not an address is a name (and not allowed unless listed).
            ("127.1", Some(Host::Name("127.1"))),
            ("999.0.0.1", Some(Host::Name("999.0.0.1"))),
            // Garbage.
            ("", None),
            (":9187", None),
            (".", None),
            ("::1", None),
            ("[::1", None),
            ("[::1]x", None),
            ("[::1]:http", None),
            ("[]", None),
            ("[evil.example]", None),
            ("host:port", None),
            ("host:123456", None),
            ("host:1:2", None),
            ("a b", None),
            ("evil.example/x", None),
            ("user@127.0.0.1", None),
            ("hôst", None),
        ] {
            assert_eq!(parse_host(value.as_bytes()), want, "{value:?}");
        }
        assert_eq!(parse_host(b"\xff\xfe"), None);
        assert_eq!(parse_host(b"[\xff]"), None);
        // Every prefix of every odd value, every byte: never a panic.
        for value in [
            "[2001:db8::7]:80",
            "a.b:1",
            "[::ffff:1.2.3.4]:",
            "\u{1F600}:1",
        ] {
            for end in 0..=value.len() {
                let _ = parse_host(&value.as_bytes()[..end]);
            }
        }
        for b in 0..=255u8 {
            let _ = parse_host(&[b]);
            let _ = parse_host(&[b'[', b, b']']);
        }
    }

    fn request(hosts: &[&str], uri: &str) -> Request {
        let mut builder = Request::builder().uri(uri);
        for h in hosts {
            builder = builder.header(header::HOST, *h);
        }
        builder
            .body(axum::body::Body::empty())
            .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn hosts_allowed_ignore_case_and_ports() {
        let allowed = ["pgmemo".to_owned(), "admin.example".to_owned()];
        for (hosts, uri, want) in [
            (&["127.0.0.1:9187"][..], "/", true),
            (&["[::1]:9187"], "/", true),
            (&["LOCALHOST"], "/", true),
            (&["pgmemo:9187"], "/", true),
            (&["Admin.Example."], "/", true),
            (&[], "/", true),
            (&["evil.example"], "/", false),
            (&["pgmemo.evil.example"], "/", false),
            (&["127.0.0.1", "evil.example"], "/", false),
            (&["127.0.0.1", "127.0.0.1"], "/", false),
            (&["not a host"], "/", false),
            // An absolute-form target names the host too.
            (&["127.0.0.1"], "http://evil.example/api/stats", false),
            (&[], "http://evil.example:9187/", false),
            (&["pgmemo"], "http://[::1]:9187/", true),
        ] {
            let got = host_allowed(&request(hosts, uri), &allowed);
            assert_eq!(got, want, "{hosts:?} {uri}");
        }
        assert!(!host_allowed(&request(&["pgmemo"], "/"), &[]));
    }

    #[test]
    fn configured_names_are_normalised_and_the_token_never_printed() {
        let access = AdminAccess::new(Some("a-long-admin-token-value"), &["PgMemo.".to_owned()]);
        let p = access.current.load();
        assert_eq!(p.allowed_hosts, ["pgmemo"]);
        assert!(!format!("{access:?}").contains("admin-token"));
    }

    #[test]
    fn content_type_must_be_json() {
        let mut h = HeaderMap::new();
        assert!(!is_json(&h));
        for (value, ok) in [
            ("application/json", true),
            ("Application/JSON; charset=utf-8", true),
            ("text/plain", false),
            ("application/x-www-form-urlencoded", false),
            ("multipart/form-data; boundary=x", false),
            ("application/jsonx", false),
        ] {
            h.insert(
                header::CONTENT_TYPE,
                value.parse().unwrap_or_else(|_| panic!("{value}")),
            );
            assert_eq!(is_json(&h), ok, "{value}");
        }
    }
}
