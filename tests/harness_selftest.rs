//! Self-test of the integration harness (`tests/common`): the throwaway Postgres has
//! the users, auth methods, settings and extension every other test relies on, it
//! restarts on the same port, Redis answers, and `Proxy` parses a ready line.

mod common;

use std::time::Duration;

use common::{
    MD5_USER, PLAIN_USER, PgOptions, PgServer, Proxy, ProxyArgs, RedisServer, SCRAM_USER,
};
use common::{SUPERUSER, Signal, TRUST_USER, db_error};

#[tokio::test]
async fn password_users_log_in_with_the_right_password_only() {
    let pg = PgServer::start(PgOptions::default());
    for (user, password) in [MD5_USER, SCRAM_USER, PLAIN_USER] {
        for db in ["postgres", "app"] {
            let client = pg.connect(user, password, db).await;
            let row = client
                .query_one("SELECT current_user, current_database()", &[])
                .await
                .unwrap();
            assert_eq!(row.get::<_, String>(0), user);
            assert_eq!(row.get::<_, String>(1), db);
        }
        let err = match pg.try_connect(user, "wrong", "postgres").await {
            Ok(_) => panic!("{user} logged in with a wrong password"),
            Err(e) => e,
        };
        assert_eq!(db_error(&err).code().code(), "28P01", "{user}: {err}");
    }
    pg.connect(TRUST_USER, "", "app").await;
    pg.connect(SUPERUSER, "", "postgres").await;
}

#[tokio::test]
async fn passwords_are_stored_and_checked_with_the_intended_methods() {
    let pg = PgServer::start(PgOptions::default());
    let client = pg.connect(SUPERUSER, "", "postgres").await;
    let stored = |user: &'static str| {
        let client = &client;
        async move {
            client
                .query_one(
                    "SELECT rolpassword FROM pg_authid WHERE rolname = $1",
                    &[&user],
                )
                .await
                .unwrap()
                .get::<_, Option<String>>(0)
        }
    };
    assert!(stored("md5_user").await.unwrap().starts_with("md5"));
    assert!(
        stored("scram_user")
            .await
            .unwrap()
            .starts_with("SCRAM-SHA-256$")
    );
    assert!(
        stored("plain_user")
            .await
            .unwrap()
            .starts_with("SCRAM-SHA-256$")
    );
    assert_eq!(stored("trust_user").await, None);
    let methods = client
        .query("SELECT user_name[1], auth_method FROM pg_hba_file_rules WHERE type = 'host' AND database = '{all}'", &[])
        .await
        .unwrap();
    let methods: Vec<(String, String)> = methods.iter().map(|r| (r.get(0), r.get(1))).collect();
    for expected in [
        ("md5_user", "md5"),
        ("scram_user", "scram-sha-256"),
        ("plain_user", "password"),
        ("trust_user", "trust"),
    ] {
        assert!(
            methods.contains(&(expected.0.to_string(), expected.1.to_string())),
            "{expected:?} not in {methods:?}"
        );
    }
}

#[tokio::test]
async fn server_settings_and_pg_stat_statements() {
    let pg = PgServer::start(
        PgOptions::default()
            .max_connections(150)
            .setting("work_mem", "'7MB'"),
    );
    let client = pg.connect(SUPERUSER, "", "postgres").await;
    let show = |name: &'static str| {
        let client = &client;
        async move {
            let rows = client.simple_query(&format!("SHOW {name}")).await.unwrap();
            match rows.iter().find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                _ => None,
            }) {
                Some(v) => v,
                None => panic!("SHOW {name} returned no row"),
            }
        }
    };
    assert_eq!(show("wal_level").await, "logical");
    assert_eq!(show("max_connections").await, "150");
    assert_eq!(show("work_mem").await, "7MB");
    assert_eq!(show("fsync").await, "off");
    assert_eq!(show("listen_addresses").await, "127.0.0.1");
    assert_eq!(show("port").await, pg.port().to_string());

    for db in ["postgres", "app"] {
        let client = pg.connect(SUPERUSER, "", db).await;
        // Constants are normalised away by pg_stat_statements; a column alias is kept.
        let marker = format!("SELECT 1 AS harness_marker_{db}");
        client.simple_query(&marker).await.unwrap();
        let calls: i64 = client
            .query_one(
                "SELECT coalesce(sum(calls), 0)::int8 FROM pg_stat_statements WHERE query LIKE $1",
                &[&format!("%harness_marker_{db}%")],
            )
            .await
            .unwrap()
            .get(0);
        assert!(
            calls >= 1,
            "pg_stat_statements did not count the marker in {db}"
        );
    }

    // psql helper and environment for libpq tools.
    assert_eq!(pg.psql("app", "SELECT 40 + 2").trim(), "42");
    let out = std::process::Command::new(pg.bin("psql"))
        .args(["-X", "-A", "-t", "-c", "SELECT current_database()"])
        .envs(pg.psql_env())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "postgres");
}

#[tokio::test]
async fn restart_keeps_port_and_data() {
    let mut pg = PgServer::start(PgOptions::default());
    let port = pg.port();
    pg.psql(
        "app",
        "CREATE TABLE kept(x int); INSERT INTO kept VALUES (7);",
    );
    pg.stop();
    assert!(
        pg.try_connect(SUPERUSER, "", "app").await.is_err(),
        "connected to a stopped server"
    );
    pg.start_again();
    assert_eq!(pg.port(), port);
    let client = pg.connect(SUPERUSER, "", "app").await;
    let x: i32 = client
        .query_one("SELECT x FROM kept", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(x, 7);
    drop(client);
    pg.stop_immediate();
    pg.start_again();
    pg.connect(SCRAM_USER.0, SCRAM_USER.1, "app").await;
}

#[tokio::test]
async fn tls_server_verified_against_generated_ca() {
    let pg = PgServer::start(PgOptions::default().tls());
    assert!(pg.ca_pem_path().unwrap().is_file());
    let client = pg
        .try_connect_tls(SCRAM_USER.0, SCRAM_USER.1, "app")
        .await
        .unwrap();
    let ssl: bool = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(ssl);
    // A CA the server's certificate does not chain to must be refused.
    let other_dir = tempfile::tempdir().unwrap();
    let other_ca = common::TestCa::new(other_dir.path());
    let refused = common::client::try_connect_tls(pg.addr(), SUPERUSER, "", "app", &other_ca).await;
    assert!(
        refused.is_err(),
        "TLS accepted a certificate from an unknown CA"
    );
}

#[test]
fn redis_answers_ping_over_raw_tcp() {
    use std::io::{Read, Write};
    let mut redis = RedisServer::start();
    let mut stream = std::net::TcpStream::connect(redis.addr()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream.write_all(b"PING\r\n").unwrap();
    let mut buf = [0u8; 7];
    stream.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"+PONG\r\n");
    assert!(redis.url().starts_with("redis://127.0.0.1:"));
    redis.stop();
    assert!(common::redis::raw_command(redis.addr(), "PING").is_err());
    redis.start_again();
    assert_eq!(redis.command("PING"), "+PONG\r\n");
}

#[test]
fn ready_line_parsing() {
    let (a, b) =
        common::proxy::parse_ready_line("pgmemo listening on 127.0.0.1:6432 admin 127.0.0.1:9187")
            .unwrap();
    assert_eq!(a.to_string(), "127.0.0.1:6432");
    assert_eq!(b.to_string(), "127.0.0.1:9187");
    assert!(common::proxy::parse_ready_line("pgmemo starting").is_none());
    assert!(common::proxy::parse_ready_line("pgmemo listening on nowhere admin 1").is_none());
}

/// Drives `Proxy` with a stand-in script, so the harness is checked independently of
/// the proxy's own progress: argument passing, ready line, stderr capture, RSS,
/// signals and exit status.
#[test]
fn proxy_handle_against_a_stand_in_binary() {
    use std::os::unix::process::ExitStatusExt;
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("fake-pgmemo");
    std::fs::write(
        &script,
        "#!/bin/sh\n\
         echo \"args: $*\" >&2\n\
         echo \"env: $FAKE_VAR\" >&2\n\
         echo 'some log line'\n\
         echo 'pgmemo listening on 127.0.0.1:40001 admin 127.0.0.1:40002'\n\
         exec sleep 60\n",
    )
    .unwrap();
    common::tls::set_mode(&script, 0o755);
    let mut proxy = Proxy::start(
        ProxyArgs::new("postgres://u@127.0.0.1:1/db")
            .config("[server]\n")
            .arg("--extra")
            .env("FAKE_VAR", "hello")
            .binary(&script),
    );
    assert_eq!(proxy.addr().port(), 40001);
    assert_eq!(proxy.admin_addr().port(), 40002);
    assert!(proxy.rss_kib() > 0);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !proxy.stderr().contains("env: hello") && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let stderr = proxy.stderr();
    assert!(
        stderr.contains("--listen 127.0.0.1:0 --admin-listen 127.0.0.1:0"),
        "{stderr}"
    );
    assert!(
        stderr.contains("--upstream postgres://u@127.0.0.1:1/db"),
        "{stderr}"
    );
    assert!(stderr.contains("--config /"), "{stderr}");
    assert!(stderr.contains("--extra"), "{stderr}");
    assert!(stderr.contains("env: hello"), "{stderr}");
    assert!(proxy.stdout().contains("some log line"));
    assert!(proxy.config_path().unwrap().is_file());
    proxy.signal(Signal::Term);
    let status = proxy.wait_exit(Duration::from_secs(5));
    assert_eq!(status.signal(), Some(15));
}

#[test]
#[should_panic(expected = "closed stdout before its ready line")]
fn proxy_start_panics_with_output_when_binary_exits_early() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("dying-pgmemo");
    std::fs::write(&script, "#!/bin/sh\necho 'bad config: nope' >&2\nexit 2\n").unwrap();
    common::tls::set_mode(&script, 0o755);
    Proxy::start(ProxyArgs::new("postgres://u@127.0.0.1:1/db").binary(&script));
}
