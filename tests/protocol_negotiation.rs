//! Protocol negotiation against a scripted fake upstream (the machine's PostgreSQL is 15, so
//! protocol 3.2 and what servers may send in the future are emulated): NegotiateProtocolVersion
//! and `_pq_.*` options relayed untouched, 3.2 variable-length cancel keys relayed and used,
//! asynchronous and unknown messages relayed raw both ways, and the authentication methods
//! that cannot be relayed refused clearly.

mod common;
#[path = "support/fake_upstream.rs"]
mod fake_upstream;
#[path = "support/wire.rs"]
mod wire;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Proxy, ProxyArgs};
use fake_upstream::{FakeConn, FakeUpstream, msg};
use pgmemo::protocol::response::frame;
use pgmemo::protocol::startup::encode_startup;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use wire::Read;

const WAIT: Duration = Duration::from_secs(5);

struct Setup {
    fake: FakeUpstream,
    proxy: Proxy,
}

impl Setup {
    async fn new() -> Setup {
        let fake = FakeUpstream::start().await;
        // The fake server speaks only what each test scripts: no result cache, so pgmemo
        // sends nothing of its own (no settings probe).
        let proxy = tokio::task::block_in_place(|| {
            Proxy::start(
                ProxyArgs::new(fake.url())
                    .config("[cache]\nenabled = false\n\n[invalidation]\ncdc = \"off\"\n"),
            )
        });
        Setup { fake, proxy }
    }

    /// A client that sent `startup` through the proxy, and the fake's side of it.
    async fn open(&self, startup: &[u8]) -> (TcpStream, FakeConn) {
        let mut client = wire::connect(self.proxy.addr()).await;
        client.write_all(startup).await.unwrap();
        let up = self.fake.accept().await;
        assert_eq!(
            up.startup.as_ref(),
            startup,
            "the fake upstream must receive the client's startup packet byte for byte"
        );
        (client, up)
    }

    /// A logged-in 3.2 session whose backend key has `secret`.
    async fn session(&self, pid: i32, secret: &[u8]) -> (TcpStream, FakeConn, Vec<Bytes>) {
        let startup = encode_startup(3, 2, &[("user", "alice"), ("database", "shop")]);
        let (mut client, mut up) = self.open(&startup).await;
        let login = msg::trust_login(pid, secret);
        up.send(&login).await;
        let frames = wire::frames_until_ready(&mut client, WAIT).await;
        assert_eq!(frames.concat(), login, "login answer changed on its way");
        (client, up, frames)
    }
}

/// One query round trip through the established session, checked byte for byte.
async fn round_trip(client: &mut TcpStream, up: &mut FakeConn) {
    let q = wire::query("SELECT 1");
    client.write_all(&q).await.unwrap();
    let got = up.read_frame(WAIT).await.expect("query reached the fake");
    assert_eq!(got.as_ref(), q.as_slice());
    let answer = [
        frame(
            b'T',
            b"\0\x01one\0\0\0\0\0\0\0\0\0\0\x17\0\x04\xff\xff\xff\xff\0\0",
        ),
        frame(b'D', b"\0\x01\0\0\0\x011"),
        frame(b'C', b"SELECT 1\0"),
        msg::ready_for_query(b'I'),
    ]
    .concat();
    up.send(&answer).await;
    let frames = wire::frames_until_ready(client, WAIT).await;
    assert_eq!(frames.concat(), answer);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_3_2_and_unknown_pq_option_are_negotiated_down_by_the_server() {
    let s = Setup::new().await;
    let startup = encode_startup(
        3,
        2,
        &[
            ("user", "alice"),
            ("database", "shop"),
            ("_pq_.test_option", "1"),
            ("application_name", "negotiation-test"),
        ],
    );
    let (mut client, mut up) = s.open(&startup).await;
    // What PostgreSQL 15 answers: newest minor 0, one unrecognized option.
    let answer = [
        msg::negotiate_protocol_version(0, &["_pq_.test_option"]),
        msg::auth_ok(),
        msg::parameter_status("server_version", "15.99 (fake)"),
        msg::backend_key_data(4242, &[1, 2, 3, 4]),
        msg::ready_for_query(b'I'),
    ]
    .concat();
    up.send(&answer).await;
    let frames = wire::frames_until_ready(&mut client, WAIT).await;
    assert_eq!(
        frames[0][0], b'v',
        "NegotiateProtocolVersion must come first"
    );
    assert_eq!(
        frames.concat(),
        answer,
        "the answer changed on its way to the client"
    );
    round_trip(&mut client, &mut up).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_3_2_long_cancel_key_is_relayed_and_used() {
    let s = Setup::new().await;
    let secret: Vec<u8> = (0..32u8).map(|i| i.wrapping_mul(37) ^ 0xa5).collect();
    let (mut client, mut up, frames) = s.session(777, &secret).await;
    let key_frame = frames
        .iter()
        .find(|f| f[0] == b'K')
        .expect("BackendKeyData");
    assert_eq!(
        key_frame.len(),
        1 + 4 + 4 + 32,
        "32-byte secret arrives unchanged"
    );
    let key = key_frame.slice(5..);

    // Wrong secret (same pid) and a wrong pid: neither may reach the upstream.
    let mut wrong_secret = key.to_vec();
    *wrong_secret.last_mut().unwrap() ^= 0xff;
    let mut wrong_pid = key.to_vec();
    wrong_pid[3] ^= 0x01;
    for bad in [&wrong_secret, &wrong_pid, &key[..8].to_vec()] {
        wire::send_cancel(s.proxy.addr(), bad).await;
        if let Some(c) = s.fake.try_accept(Duration::from_secs(1)).await {
            panic!(
                "a cancel with an unknown key was forwarded: {:?}",
                c.startup.as_ref()
            );
        }
    }

    // The right key: forwarded exactly, on a new connection.
    let expected = wire::cancel_request(&key);
    assert_eq!(expected.len(), 44);
    let ((), forwarded) = tokio::join!(wire::send_cancel(s.proxy.addr(), &key), async {
        // A server closes the cancel connection once it has read the packet (pgmemo closes
        // the client's only after that).
        s.fake.accept().await.startup
    });
    assert_eq!(forwarded.as_ref(), expected.as_slice());
    assert!(
        s.fake.try_accept(Duration::from_secs(1)).await.is_none(),
        "one cancel request was forwarded more than once"
    );
    // The session itself is untouched by all this.
    round_trip(&mut client, &mut up).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notification_reaches_an_idle_client_promptly() {
    let s = Setup::new().await;
    let (mut client, mut up, _) = s.session(11, &[9, 9, 9, 9]).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let note = msg::notification(12, "events", "payload-1");
    let sent = Instant::now();
    up.send(&note).await;
    match wire::read_frame(&mut client, Duration::from_secs(1)).await {
        Read::Frame(f) => assert_eq!(f.as_ref(), note.as_ref()),
        other => panic!("no NotificationResponse within 1 s of the server sending it: {other:?}"),
    }
    assert!(sent.elapsed() < Duration::from_secs(1));
    // A NoticeResponse and a ParameterStatus while idle are relayed the same way.
    let more = [
        frame(b'N', b"SNOTICE\0VNOTICE\0C00000\0Mhello\0\0"),
        msg::parameter_status("application_name", "changed"),
    ]
    .concat();
    up.send(&more).await;
    let mut got = Vec::new();
    while got.len() < more.len() {
        match wire::read_frame(&mut client, Duration::from_secs(1)).await {
            Read::Frame(f) => got.extend_from_slice(&f),
            other => panic!("async messages did not arrive: {other:?}"),
        }
    }
    assert_eq!(got, more);
    round_trip(&mut client, &mut up).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_message_types_are_relayed_raw_both_ways() {
    let s = Setup::new().await;
    let (mut client, mut up, _) = s.session(21, &[1, 1, 2, 2]).await;

    // Backend → client, while idle.
    let from_server = frame(b'~', b"opaque\0\x00\x01\x02\xff future message");
    up.send(&from_server).await;
    match wire::read_frame(&mut client, WAIT).await {
        Read::Frame(f) => assert_eq!(f.as_ref(), from_server.as_ref()),
        other => panic!("unknown backend message not relayed: {other:?}"),
    }

    // Client → backend, a lone unknown type and one sandwiched between known ones.
    let lone = frame(b'~', b"\x00\x01client extension\0");
    client.write_all(&lone).await.unwrap();
    assert_eq!(up.read_frame(WAIT).await.as_deref(), Some(lone.as_ref()));
    let big = frame(b'!', &vec![0x42; 200_000]);
    let batch = [
        wire::query("SELECT 1"),
        big.to_vec(),
        wire::query("SELECT 2"),
    ]
    .concat();
    client.write_all(&batch).await.unwrap();
    let mut got = Vec::new();
    for _ in 0..3 {
        got.extend_from_slice(&up.read_frame(WAIT).await.expect("frame reached the fake"));
    }
    assert_eq!(got, batch, "client frames changed on their way upstream");

    // An unknown backend type in the middle of a response.
    let answer = [
        frame(b'C', b"SELECT 0\0"),
        frame(b'~', b"mid-response"),
        msg::ready_for_query(b'I'),
    ]
    .concat();
    up.send(&answer).await;
    let frames = wire::frames_until_ready(&mut client, WAIT).await;
    assert_eq!(frames.concat(), answer);
    round_trip(&mut client, &mut up).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gssapi_authentication_is_refused_with_a_clear_fatal() {
    let s = Setup::new().await;
    for code in [7, 9] {
        let startup = encode_startup(3, 0, &[("user", "alice"), ("database", "shop")]);
        let (mut client, mut up) = s.open(&startup).await;
        up.send(&msg::auth_request(code)).await;
        let frames = wire::frames_until_closed(&mut client, WAIT).await;
        let err = wire::first_error(&frames)
            .unwrap_or_else(|| panic!("auth code {code}: no ErrorResponse, got {frames:?}"));
        assert_eq!(wire::field(err, b'S').as_deref(), Some("FATAL"));
        let message = wire::field(err, b'M').unwrap_or_default();
        let method = if code == 7 { "GSSAPI" } else { "SSPI" };
        assert!(
            message.contains(method) && message.contains("cannot be relayed"),
            "auth code {code}: the message should say {method} cannot be relayed: {message}"
        );
        assert!(
            frames.iter().all(|f| f[0] != b'R'),
            "the unrelayable request itself must not reach the client"
        );
        // The upstream side is closed too.
        assert!(
            up.read_to_close(WAIT, 1 << 16).await.is_some(),
            "the upstream connection was left open"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_plus_is_not_offered_on_a_plain_client_connection() {
    let s = Setup::new().await;
    let startup = encode_startup(3, 0, &[("user", "alice"), ("database", "shop")]);
    let (mut client, mut up) = s.open(&startup).await;
    up.send(&msg::auth_sasl(&["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]))
        .await;
    match wire::read_frame(&mut client, WAIT).await {
        Read::Frame(f) => assert_eq!(
            f.as_ref(),
            msg::auth_sasl(&["SCRAM-SHA-256"]).as_ref(),
            "the client must see only SCRAM-SHA-256"
        ),
        other => panic!("no AuthenticationSASL: {other:?}"),
    }
    // The client's answer goes upstream unchanged, and the server's verdict comes back.
    let mut body = b"SCRAM-SHA-256\0".to_vec();
    let first = b"n,,n=,r=clientnonce123";
    body.extend_from_slice(&(first.len() as i32).to_be_bytes());
    body.extend_from_slice(first);
    let initial = frame(b'p', &body);
    client.write_all(&initial).await.unwrap();
    assert_eq!(up.read_frame(WAIT).await.as_deref(), Some(initial.as_ref()));
    let refusal = frame(
        b'E',
        b"SFATAL\0VFATAL\0C28P01\0Mpassword authentication failed for user \"alice\"\0\0",
    );
    up.send(&refusal).await;
    drop(up);
    let frames = wire::frames_until_closed(&mut client, WAIT).await;
    assert_eq!(frames.concat(), refusal.as_ref());
}
