//! The upstream leg over PostgreSQL's Unix socket (`?host=/socket/dir`, as in libpq): sessions
//! relay exactly as over TCP, and PostgreSQL sees them as `local` connections.

mod common;

use common::{PgOptions, PgServer, Proxy, ProxyArgs, SCRAM_USER, SUPERUSER};

#[tokio::test]
async fn sessions_relay_over_the_upstream_unix_socket() {
    let pg = PgServer::start(PgOptions::default().hba_line("local all scram_user scram-sha-256"));
    // The socket path embeds the port (`.s.PGSQL.PORT`), so the URL carries it in the
    // authority, with the directory percent-encoded as the host.
    let dir = pg.socket_dir().display().to_string().replace('/', "%2F");
    let url = format!("postgres://{dir}:{}/postgres", pg.port());
    let proxy = Proxy::start(ProxyArgs::new(url));

    let client = proxy.connect(SUPERUSER, "", "app").await;
    // PostgreSQL reports no client address for Unix-socket sessions.
    let row = client
        .query_one("SELECT inet_client_addr() IS NULL, current_user", &[])
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0), "upstream leg is not a Unix socket");
    assert_eq!(row.get::<_, String>(1), SUPERUSER);

    // Extended protocol and a SCRAM login through the socket leg.
    let stmt = client.prepare("SELECT $1::int + 1").await.unwrap();
    let n: i32 = client.query_one(&stmt, &[&41i32]).await.unwrap().get(0);
    assert_eq!(n, 42);
    let scram = proxy.connect(SCRAM_USER.0, SCRAM_USER.1, "app").await;
    let who: String = scram
        .query_one("SELECT current_user", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(who, SCRAM_USER.0);
    let err = proxy
        .try_connect(SCRAM_USER.0, "wrong", "app")
        .await
        .err()
        .unwrap_or_else(|| panic!("wrong password must fail"));
    assert_eq!(common::db_error(&err).code().code(), "28P01");
}
