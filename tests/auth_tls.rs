//! Authentication and TLS through pgmemo: every relayable method (trust, password, md5,
//! SCRAM-SHA-256) with right and wrong passwords from tokio-postgres and from libpq (psql),
//! compared with a direct connection; TLS on the client leg (SSLRequest and PostgreSQL 17
//! direct TLS with ALPN), SSLRequest/GSSENCRequest refusals, TLS on the upstream leg per
//! sslmode, SCRAM channel binding, and the clean refusal of methods that cannot be relayed.

#[path = "support/auth_fixture.rs"]
mod auth_fixture;
#[path = "support/auth_wire.rs"]
mod auth_wire;
mod common;
#[path = "support/run.rs"]
mod run;

use std::sync::Arc;
use std::time::Duration;

use auth_fixture::{
    Certs, DB, conninfo, current_user, direct_tls, mask_ports, proxy_with_tls, psql, refused,
    start_plain, upstream_leg_encrypted, upstream_url,
};
use common::client::try_connect_tls;
use common::compare::error_fields;
use common::{
    MD5_USER, PLAIN_USER, PgOptions, PgServer, Proxy, ProxyArgs, SCRAM_USER, SUPERUSER, TRUST_USER,
    TestCa, pg_config,
};
use tokio::net::TcpStream;
use tokio_postgres::config::{ChannelBinding, SslMode};

const PASSWORD_USERS: [(&str, &str); 3] = [MD5_USER, SCRAM_USER, PLAIN_USER];
const WRONG_PASSWORD: &str = "not-the-password";

#[tokio::test]
async fn password_methods_through_proxy_match_direct() {
    let (pg, proxy) = start_plain();
    for (user, password) in PASSWORD_USERS {
        let client = proxy
            .try_connect(user, password, DB)
            .await
            .unwrap_or_else(|e| panic!("{user} with the right password through pgmemo: {e:?}"));
        assert_eq!(current_user(&client).await, user);

        let direct = refused(
            pg.try_connect(user, WRONG_PASSWORD, DB).await,
            &format!("{user}: wrong password accepted directly"),
        );
        let proxied = refused(
            proxy.try_connect(user, WRONG_PASSWORD, DB).await,
            &format!("{user}: wrong password accepted through pgmemo"),
        );
        let (direct, proxied) = (error_fields(&direct), error_fields(&proxied));
        assert_eq!(proxied.code, "28P01", "{user}: {proxied:?}");
        assert_eq!(
            proxied.message,
            format!("password authentication failed for user \"{user}\"")
        );
        assert_eq!(
            proxied, direct,
            "{user}: wrong-password error differs from direct"
        );
    }
    // trust ignores whatever password the client has.
    for password in ["", "anything"] {
        let client = proxy
            .try_connect(TRUST_USER, password, DB)
            .await
            .unwrap_or_else(|e| panic!("trust_user through pgmemo: {e:?}"));
        assert_eq!(current_user(&client).await, TRUST_USER);
    }
    // Refusals before and after authentication reach the client field for field.
    for (user, password, db, code) in [
        ("no_such_role", "x", DB, "28000"),
        (SCRAM_USER.0, SCRAM_USER.1, "no_such_db", "3D000"),
    ] {
        let direct = refused(
            pg.try_connect(user, password, db).await,
            &format!("{user}@{db} directly"),
        );
        let proxied = refused(
            proxy.try_connect(user, password, db).await,
            &format!("{user}@{db} through pgmemo"),
        );
        let (direct, proxied) = (error_fields(&direct), error_fields(&proxied));
        assert_eq!(proxied.code, code, "{proxied:?}");
        assert_eq!(proxied, direct, "{user}@{db}: refusal differs from direct");
    }
}

#[test]
fn password_methods_through_proxy_with_psql_match_direct() {
    let (pg, proxy) = start_plain();
    let ports = [pg.port(), proxy.port()];
    for (user, password) in PASSWORD_USERS {
        let ok = psql(
            &pg,
            &conninfo(proxy.port(), user, ""),
            Some(password),
            &["SELECT current_user"],
        );
        assert!(
            ok.success(),
            "{user} via psql through pgmemo:\n{}",
            ok.describe()
        );
        assert_eq!(ok.stdout.trim(), user);

        let direct = psql(
            &pg,
            &conninfo(pg.port(), user, ""),
            Some(WRONG_PASSWORD),
            &["SELECT 1"],
        );
        let proxied = psql(
            &pg,
            &conninfo(proxy.port(), user, ""),
            Some(WRONG_PASSWORD),
            &["SELECT 1"],
        );
        assert!(
            !proxied.success(),
            "{user}: wrong password accepted:\n{}",
            proxied.describe()
        );
        assert_eq!(proxied.status.code(), direct.status.code());
        let expected = format!("password authentication failed for user \"{user}\"");
        assert!(proxied.stderr.contains(&expected), "{}", proxied.describe());
        assert_eq!(
            mask_ports(&proxied.stderr, &ports),
            mask_ports(&direct.stderr, &ports),
            "{user}: psql's wrong-password message differs from direct"
        );
    }
    let trust = psql(
        &pg,
        &conninfo(proxy.port(), TRUST_USER, ""),
        None,
        &["SELECT current_user"],
    );
    assert!(trust.success(), "{}", trust.describe());
    assert_eq!(trust.stdout.trim(), TRUST_USER);
}

#[tokio::test]
async fn client_tls_with_tokio_postgres() {
    let certs = Certs::new();
    let pg = PgServer::start(PgOptions::default());
    let proxy = proxy_with_tls(
        pg.url(SUPERUSER, DB),
        &certs.cert.cert_path,
        &certs.cert.key_path,
    );
    let users = [(SUPERUSER, ""), (TRUST_USER, "")]
        .into_iter()
        .chain(PASSWORD_USERS);
    for (user, password) in users {
        // SslMode::Require with a verifying connector: success proves the leg is TLS.
        let client = try_connect_tls(proxy.addr(), user, password, DB, &certs.ca)
            .await
            .unwrap_or_else(|e| panic!("{user} over TLS through pgmemo: {e:?}"));
        assert_eq!(current_user(&client).await, user);
        let one: i32 = client
            .query_one("SELECT 1", &[])
            .await
            .expect("SELECT 1")
            .get(0);
        assert_eq!(one, 1);
    }
    // SCRAM over TLS: tokio-postgres sees no -PLUS offer and signals "client supports
    // channel binding" ('y'); the upstream leg is plain, so Postgres accepts that.
    let wrong = refused(
        try_connect_tls(proxy.addr(), SCRAM_USER.0, WRONG_PASSWORD, DB, &certs.ca).await,
        "wrong SCRAM password accepted over TLS",
    );
    let direct = refused(
        pg.try_connect(SCRAM_USER.0, WRONG_PASSWORD, DB).await,
        "wrong SCRAM password directly",
    );
    assert_eq!(error_fields(&wrong), error_fields(&direct));
    // Channel binding cannot be offered here (pgmemo's certificate is not the upstream's),
    // so a client that requires it must fail cleanly, not hang.
    let mut config = pg_config(proxy.addr(), SCRAM_USER.0, SCRAM_USER.1, DB);
    config
        .ssl_mode(SslMode::Require)
        .channel_binding(ChannelBinding::Require);
    let outcome = tokio::time::timeout(
        Duration::from_secs(10),
        config.connect(certs.ca.make_tls_connect()),
    )
    .await
    .expect("channel_binding=require hung");
    assert!(
        outcome.is_err(),
        "channel_binding=require succeeded without -PLUS"
    );
    // The listener still accepts plain connections when TLS is configured.
    let plain = proxy
        .try_connect(SCRAM_USER.0, SCRAM_USER.1, DB)
        .await
        .expect("plain");
    assert_eq!(current_user(&plain).await, SCRAM_USER.0);
}

#[test]
fn client_tls_with_psql() {
    let certs = Certs::new();
    let pg = PgServer::start(PgOptions::default());
    let proxy = proxy_with_tls(
        pg.url(SUPERUSER, DB),
        &certs.cert.cert_path,
        &certs.cert.key_path,
    );
    let root = certs.ca.ca_pem_path().display().to_string();
    let port = proxy.port();
    for extra in [
        "sslmode=require".to_string(),
        format!("sslmode=verify-ca sslrootcert={root}"),
        format!("sslmode=verify-full sslrootcert={root}"),
        format!("host=localhost hostaddr=127.0.0.1 sslmode=verify-full sslrootcert={root}"),
    ] {
        let out = psql(
            &pg,
            &conninfo(port, SUPERUSER, &extra),
            None,
            &["SELECT 1", "\\conninfo"],
        );
        assert!(out.success(), "psql {extra}:\n{}", out.describe());
        assert!(out.stdout.starts_with("1\n"), "{}", out.describe());
        assert!(
            out.stdout.contains("SSL connection (protocol: TLSv1."),
            "{}",
            out.describe()
        );
    }
    // libpq's SCRAM over TLS (channel_binding=prefer: it sends 'y', as no -PLUS is offered).
    for (user, password) in PASSWORD_USERS {
        let out = psql(
            &pg,
            &conninfo(
                port,
                user,
                &format!("sslmode=verify-full sslrootcert={root}"),
            ),
            Some(password),
            &["SELECT current_user"],
        );
        assert!(
            out.success(),
            "{user} over TLS via psql:\n{}",
            out.describe()
        );
        assert_eq!(out.stdout.trim(), user);
    }
    let out = psql(
        &pg,
        &conninfo(
            port,
            SCRAM_USER.0,
            "sslmode=require channel_binding=require",
        ),
        Some(SCRAM_USER.1),
        &["SELECT 1"],
    );
    assert!(
        !out.success(),
        "channel_binding=require succeeded:\n{}",
        out.describe()
    );
    assert!(
        out.stderr.contains("channel binding"),
        "unclear failure:\n{}",
        out.describe()
    );
    // A CA that did not sign pgmemo's certificate must fail verification.
    let other = Certs::new();
    let out = psql(
        &pg,
        &conninfo(
            port,
            SUPERUSER,
            &format!(
                "sslmode=verify-ca sslrootcert={}",
                other.ca.ca_pem_path().display()
            ),
        ),
        None,
        &["SELECT 1"],
    );
    assert!(
        !out.success(),
        "untrusted certificate accepted:\n{}",
        out.describe()
    );
    assert!(
        out.stderr.contains("certificate verify failed"),
        "{}",
        out.describe()
    );
}

#[tokio::test]
async fn direct_tls_requires_alpn_postgresql() {
    let certs = Certs::new();
    let pg = PgServer::start(PgOptions::default());
    let proxy = proxy_with_tls(
        pg.url(SUPERUSER, DB),
        &certs.cert.cert_path,
        &certs.cert.key_path,
    );

    let mut tls = direct_tls(proxy.addr(), &certs.ca, true)
        .await
        .expect("direct TLS handshake with ALPN postgresql");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"postgresql"[..]));
    auth_wire::trust_login_and_select_one(&mut tls, SUPERUSER, DB).await;

    // Without ALPN the connection must be refused: no authentication exchange may start.
    if let Ok(mut tls) = direct_tls(proxy.addr(), &certs.ca, false).await {
        let _ =
            tokio::io::AsyncWriteExt::write_all(&mut tls, &auth_wire::startup(SUPERUSER, DB)).await;
        match auth_wire::read_frame(&mut tls).await {
            Ok(None) | Err(_) => {}
            Ok(Some(frame)) => assert!(
                frame.tag == b'E',
                "direct TLS without ALPN was served: got {frame:?}"
            ),
        }
    }
    // The proxy still serves others afterwards.
    let client = try_connect_tls(proxy.addr(), SUPERUSER, "", DB, &certs.ca)
        .await
        .expect("TLS after a refused direct-TLS client");
    assert_eq!(current_user(&client).await, SUPERUSER);
}

#[tokio::test]
async fn without_tls_ssl_and_gssenc_requests_get_n() {
    let (pg, proxy) = start_plain();
    // SSLRequest → 'N', then the same socket carries a plain session.
    let mut tcp = TcpStream::connect(proxy.addr()).await.expect("connect");
    auth_wire::send(&mut tcp, &auth_wire::ssl_request()).await;
    assert_eq!(auth_wire::read_answer_byte(&mut tcp).await, b'N');
    auth_wire::trust_login_and_select_one(&mut tcp, SUPERUSER, DB).await;

    // GSSENCRequest → 'N', then SSLRequest → 'N' (libpq's order), then a session.
    let mut tcp = TcpStream::connect(proxy.addr()).await.expect("connect");
    auth_wire::send(&mut tcp, &auth_wire::gssenc_request()).await;
    assert_eq!(auth_wire::read_answer_byte(&mut tcp).await, b'N');
    auth_wire::send(&mut tcp, &auth_wire::ssl_request()).await;
    assert_eq!(auth_wire::read_answer_byte(&mut tcp).await, b'N');
    auth_wire::trust_login_and_select_one(&mut tcp, SUPERUSER, DB).await;

    // A direct-TLS ClientHello to a proxy without TLS is closed, not misread as a startup.
    let ca_dir = tempfile::tempdir().expect("ca dir");
    let ca = TestCa::new(ca_dir.path());
    assert!(
        direct_tls(proxy.addr(), &ca, true).await.is_err(),
        "a TLS handshake succeeded on a proxy without TLS"
    );

    // libpq: sslmode=prefer falls back to plain; sslmode=require fails like it does directly.
    let ok = psql(
        &pg,
        &conninfo(proxy.port(), SUPERUSER, "sslmode=prefer"),
        None,
        &["SELECT 1"],
    );
    assert!(ok.success(), "{}", ok.describe());
    let ports = [pg.port(), proxy.port()];
    let direct = psql(
        &pg,
        &conninfo(pg.port(), SUPERUSER, "sslmode=require"),
        None,
        &["SELECT 1"],
    );
    let proxied = psql(
        &pg,
        &conninfo(proxy.port(), SUPERUSER, "sslmode=require"),
        None,
        &["SELECT 1"],
    );
    assert!(!proxied.success(), "sslmode=require succeeded without TLS");
    assert!(
        proxied
            .stderr
            .contains("server does not support SSL, but SSL was required"),
        "{}",
        proxied.describe()
    );
    assert_eq!(
        mask_ports(&proxied.stderr, &ports),
        mask_ports(&direct.stderr, &ports)
    );
    // gssencmode=prefer (libpq's default when built with GSSAPI) must not get in the way.
    let gss = psql(
        &pg,
        &conninfo(proxy.port(), SUPERUSER, "gssencmode=prefer"),
        None,
        &["SELECT 1"],
    );
    assert!(gss.success(), "{}", gss.describe());
}

#[tokio::test]
async fn gssenc_then_ssl_request_with_tls_configured() {
    let certs = Certs::new();
    let pg = PgServer::start(PgOptions::default());
    let proxy = proxy_with_tls(
        pg.url(SUPERUSER, DB),
        &certs.cert.cert_path,
        &certs.cert.key_path,
    );
    let mut tcp = TcpStream::connect(proxy.addr()).await.expect("connect");
    auth_wire::send(&mut tcp, &auth_wire::gssenc_request()).await;
    assert_eq!(auth_wire::read_answer_byte(&mut tcp).await, b'N');
    auth_wire::send(&mut tcp, &auth_wire::ssl_request()).await;
    assert_eq!(auth_wire::read_answer_byte(&mut tcp).await, b'S');
    let connector = tokio_rustls::TlsConnector::from(Arc::new(certs.ca.client_config()));
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("server name");
    let mut tls = connector
        .connect(name, tcp)
        .await
        .expect("TLS after SSLRequest");
    auth_wire::trust_login_and_select_one(&mut tls, SUPERUSER, DB).await;
}

#[tokio::test]
async fn upstream_tls_per_sslmode() {
    let pg = PgServer::start(PgOptions::default().tls());
    let root = pg
        .ca_pem_path()
        .expect("TLS PgServer has a CA")
        .display()
        .to_string();
    for (host, query, encrypted) in [
        (
            "127.0.0.1",
            format!("sslmode=verify-full&sslrootcert={root}"),
            true,
        ),
        (
            "localhost",
            format!("sslmode=verify-full&sslrootcert={root}"),
            true,
        ),
        (
            "127.0.0.1",
            format!("sslmode=verify-ca&sslrootcert={root}"),
            true,
        ),
        ("127.0.0.1", "sslmode=require".to_string(), true),
        ("127.0.0.1", "sslmode=prefer".to_string(), true),
        ("127.0.0.1", "sslmode=disable".to_string(), false),
    ] {
        let proxy = Proxy::start(ProxyArgs::new(upstream_url(&pg, host, &query)));
        for (user, password) in [(SUPERUSER, ""), SCRAM_USER, MD5_USER] {
            let client = proxy
                .try_connect(user, password, DB)
                .await
                .unwrap_or_else(|e| panic!("{user} via upstream {host}?{query}: {e:?}"));
            assert_eq!(current_user(&client).await, user);
            assert_eq!(
                upstream_leg_encrypted(&client).await,
                encrypted,
                "upstream leg encryption with {host}?{query}"
            );
        }
    }
    // A CA that did not sign the server's certificate: the session fails with 08001
    // naming the upstream, and the client is told why.
    let other_dir = tempfile::tempdir().expect("ca dir");
    let other = TestCa::new(other_dir.path());
    let proxy = Proxy::start(ProxyArgs::new(upstream_url(
        &pg,
        "127.0.0.1",
        &format!(
            "sslmode=verify-full&sslrootcert={}",
            other.ca_pem_path().display()
        ),
    )));
    let err = refused(
        proxy.try_connect(SUPERUSER, "", DB).await,
        "unverified upstream",
    );
    let fields = error_fields(&err);
    assert_eq!(fields.code, "08001", "{fields:?}");
    assert!(
        fields.message.contains(&pg.port().to_string()),
        "{fields:?}"
    );
}

/// Both legs TLS and pgmemo presents the upstream's own certificate and key: channel
/// binding (SCRAM-SHA-256-PLUS) verifies end to end, so pgmemo must offer it and a client
/// that requires channel binding logs in.
#[test]
fn scram_plus_works_when_pgmemo_presents_the_upstream_certificate() {
    let pg = PgServer::start(PgOptions::default().tls());
    let root = pg.ca_pem_path().expect("CA").display().to_string();
    let upstream = upstream_url(
        &pg,
        "127.0.0.1",
        &format!("sslmode=verify-full&sslrootcert={root}"),
    );
    let proxy = proxy_with_tls(
        upstream,
        &pg.data_dir().join("server.crt"),
        &pg.data_dir().join("server.key"),
    );
    let out = psql(
        &pg,
        &conninfo(
            proxy.port(),
            SCRAM_USER.0,
            &format!("sslmode=verify-full sslrootcert={root} channel_binding=require"),
        ),
        Some(SCRAM_USER.1),
        &["SELECT current_user"],
    );
    assert!(
        out.success(),
        "SCRAM-SHA-256-PLUS end to end:\n{}",
        out.describe()
    );
    assert_eq!(out.stdout.trim(), SCRAM_USER.0);
}

/// Both legs TLS, pgmemo with its own certificate. Channel binding cannot verify end to
/// end, so pgmemo withholds SCRAM-SHA-256-PLUS; libpq (channel_binding=prefer, the
/// default) then sends the gs2 flag 'y', which PostgreSQL rejects on a TLS connection
/// ("SCRAM channel binding negotiation error") and which pgmemo cannot rewrite (the flag
/// is covered by the client proof). The login must therefore either work or fail with a
/// message that says pgmemo is the reason and what to do; `channel_binding=disable` works.
#[test]
fn scram_over_tls_on_both_legs_with_pgmemo_certificate() {
    let pg = PgServer::start(PgOptions::default().tls());
    let root = pg.ca_pem_path().expect("CA").display().to_string();
    let upstream = upstream_url(
        &pg,
        "127.0.0.1",
        &format!("sslmode=verify-full&sslrootcert={root}"),
    );
    let certs = Certs::new();
    let proxy = proxy_with_tls(upstream, &certs.cert.cert_path, &certs.cert.key_path);

    let out = psql(
        &pg,
        &conninfo(
            proxy.port(),
            SCRAM_USER.0,
            "sslmode=require channel_binding=disable",
        ),
        Some(SCRAM_USER.1),
        &["SELECT current_user"],
    );
    assert!(
        out.success(),
        "channel_binding=disable:\n{}",
        out.describe()
    );
    assert_eq!(out.stdout.trim(), SCRAM_USER.0);

    let out = psql(
        &pg,
        &conninfo(proxy.port(), SCRAM_USER.0, "sslmode=require"),
        Some(SCRAM_USER.1),
        &["SELECT current_user"],
    );
    if out.success() {
        assert_eq!(out.stdout.trim(), SCRAM_USER.0);
    } else {
        assert!(
            out.stderr.contains("pgmemo") && out.stderr.contains("channel binding"),
            "SCRAM with libpq's default channel_binding=prefer failed with a message that \
             does not explain pgmemo's part:\n{}",
            out.describe()
        );
    }
}

#[tokio::test]
async fn cert_and_gss_authentication_are_refused_clearly() {
    let certs = Certs::new();
    let ca_file = certs.ca.ca_pem_path().display().to_string();
    let pg = PgServer::start(
        PgOptions::default()
            .tls()
            .setting("ssl_ca_file", &format!("'{ca_file}'"))
            .hba_line("hostssl all cert_user 127.0.0.1/32 cert")
            .hba_line("host all gss_user 127.0.0.1/32 gss"),
    );
    pg.psql(
        DB,
        "CREATE ROLE cert_user LOGIN; CREATE ROLE gss_user LOGIN;",
    );
    let proxy = Proxy::start(ProxyArgs::new(upstream_url(
        &pg,
        "127.0.0.1",
        "sslmode=require",
    )));

    let err = refused(
        proxy.try_connect("cert_user", "", DB).await,
        "cert_user through pgmemo",
    );
    let fields = error_fields(&err);
    assert_eq!(fields.code, "28000", "{fields:?}");
    assert_eq!(fields.severity, "FATAL");
    assert!(
        fields.message.contains("certificate authentication")
            && fields.message.contains("cannot be relayed through pgmemo"),
        "unclear message: {fields:?}"
    );

    let err = refused(
        proxy.try_connect("gss_user", "", DB).await,
        "gss_user through pgmemo",
    );
    let fields = error_fields(&err);
    assert_eq!(fields.code, "28000", "{fields:?}");
    assert!(
        fields.message.contains("GSSAPI")
            && fields.message.contains("cannot be relayed through pgmemo"),
        "unclear message: {fields:?}"
    );

    // libpq shows the same clear message, and the proxy keeps serving.
    let out = psql(
        &pg,
        &conninfo(proxy.port(), "cert_user", ""),
        None,
        &["SELECT 1"],
    );
    assert!(!out.success());
    assert!(
        out.stderr.contains("cannot be relayed through pgmemo"),
        "{}",
        out.describe()
    );
    let client = proxy
        .try_connect(SUPERUSER, "", DB)
        .await
        .expect("superuser");
    assert!(upstream_leg_encrypted(&client).await);
}

/// Every connection pgmemo opens to PostgreSQL honours `upstream.url`'s sslmode, not only the
/// sessions' (the catalog's and the change stream's side connections were once opened
/// without TLS whatever the URL said): with plain TCP to the database refused by
/// pg_hba.conf, reads are still cached (the catalog answers) and a direct write is still
/// seen (the change stream runs), and PostgreSQL reports every pgmemo backend encrypted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgmemo_own_connections_use_the_upstream_tls_too() {
    // The harness sets PostgreSQL up over plain TCP; this database is TLS-only.
    const APP: &str = "tls_only";
    let pg = PgServer::start(
        PgOptions::default()
            .tls()
            .hba_line(&format!("hostnossl {APP} all 127.0.0.1/32 reject"))
            .hba_line("hostnossl replication all 127.0.0.1/32 reject"),
    );
    pg.connect(SUPERUSER, "", "postgres")
        .await
        .batch_execute(&format!("CREATE DATABASE {APP}"))
        .await
        .unwrap();
    let ca = pg.ca().expect("TLS PgServer has a CA");
    let direct = try_connect_tls(pg.addr(), SUPERUSER, "", APP, ca)
        .await
        .expect("TLS to the database");
    direct
        .batch_execute(
            "CREATE TABLE tls_t (id int PRIMARY KEY, v int); INSERT INTO tls_t VALUES (1, 1);",
        )
        .await
        .unwrap();
    let proxy = Proxy::start(
        ProxyArgs::new(format!(
            "postgres://{SUPERUSER}@127.0.0.1:{}/{APP}?sslmode=require",
            pg.port()
        ))
        .config("[invalidation]\ncdc = \"on\"\n"),
    );
    let app = proxy.connect(SUPERUSER, "", APP).await;
    let read = "SELECT v FROM tls_t WHERE id = 1";
    let value = |rows: Vec<tokio_postgres::SimpleQueryMessage>| {
        rows.into_iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
    };
    // Cached: needs the catalog's side connections.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let before = proxy.metric("pgmemo_cache_hits_total", &[]);
        assert_eq!(
            value(app.simple_query(read).await.unwrap()).as_deref(),
            Some("1")
        );
        if proxy.metric("pgmemo_cache_hits_total", &[]) > before {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never a cache hit");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A write straight to PostgreSQL reaches the cache through the change stream.
    direct
        .batch_execute("UPDATE tls_t SET v = 2 WHERE id = 1")
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while value(app.simple_query(read).await.unwrap()).as_deref() != Some("2") {
        assert!(
            std::time::Instant::now() < deadline,
            "the direct write was never seen"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rows = direct
        .query(
            "SELECT a.application_name, s.ssl FROM pg_stat_activity a \
             JOIN pg_stat_ssl s USING (pid) \
             WHERE a.application_name LIKE 'pgmemo%' AND a.pid <> pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    let seen: Vec<(String, bool)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert!(
        seen.iter().any(|(name, _)| name == "pgmemo-catalog"),
        "{seen:?}"
    );
    assert!(seen.iter().all(|(_, ssl)| *ssl), "unencrypted: {seen:?}");
}

/// `server.tls.require`: a client that did not negotiate TLS is refused (28000) before any
/// login is relayed, counted; a TLS client gets in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_clients_are_refused_when_tls_is_required() {
    let certs = Certs::new();
    let pg = PgServer::start(PgOptions::default());
    let config = format!(
        "{}require = true\n",
        auth_fixture::tls_config(&certs.cert.cert_path, &certs.cert.key_path)
    );
    let proxy = Proxy::start(ProxyArgs::new(pg.url(SUPERUSER, DB)).config(config));
    let e = refused(
        proxy.try_connect(SUPERUSER, "", DB).await,
        "a plaintext client got in",
    );
    let db = e.as_db_error().unwrap_or_else(|| panic!("{e:?}"));
    assert_eq!(db.code().code(), "28000");
    assert_eq!(db.message(), "pgmemo accepts only TLS connections");
    assert_eq!(
        proxy.metric(
            "pgmemo_client_connections_rejected_total",
            &["reason=\"tls_required\""]
        ),
        1.0
    );
    let client = try_connect_tls(proxy.addr(), SUPERUSER, "", DB, &certs.ca)
        .await
        .expect("a TLS client gets in");
    assert_eq!(current_user(&client).await, SUPERUSER);
}
