//! Robustness and limits of the proxy: malformed and oversized frames, garbage before the
//! startup packet, silent clients, the connection limit (and cancels at the limit), an
//! unreachable upstream, an upstream restarted under live sessions, and backpressure against
//! clients that do not read or that pipeline huge messages. Every test keeps a well-behaved
//! session busy on the same proxy, because a misbehaving client must never affect the others
//! (DESIGN.md §1.6).

mod common;
#[path = "support/serving.rs"]
mod serving;
#[path = "support/wire.rs"]
mod wire;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{PgOptions, PgServer, Proxy, ProxyArgs, SUPERUSER};
use pgmemo::protocol::startup::encode_startup;
use serving::{Heartbeat, PROMPT, assert_alive_and_serving, select_one, wait_until_sleeping};
use tokio::io::AsyncWriteExt;
use tokio_postgres::NoTls;
use wire::Read;

const DB: &str = "postgres";

fn start(config: &str) -> (PgServer, Proxy) {
    let pg = PgServer::start(PgOptions::default());
    let proxy = Proxy::start(ProxyArgs::new(pg.url(SUPERUSER, DB)).config(config));
    (pg, proxy)
}

/// Frames of a connection the proxy must end with exactly one FATAL 08P01.
fn assert_protocol_violation(frames: &[Bytes], what: &str) {
    let errors: Vec<_> = frames.iter().filter(|f| f[0] == b'E').collect();
    assert_eq!(
        errors.len(),
        1,
        "{what}: expected one ErrorResponse, got {:?}",
        frames.iter().map(|f| wire::describe(f)).collect::<Vec<_>>()
    );
    assert_eq!(
        wire::field(errors[0], b'C').as_deref(),
        Some("08P01"),
        "{what}: {}",
        wire::describe(errors[0])
    );
    assert_eq!(
        wire::field(errors[0], b'S').as_deref(),
        Some("FATAL"),
        "{what}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_after_startup_get_08p01_and_a_close() {
    let (_pg, mut proxy) = start("");
    let mut hb = Heartbeat::start(&proxy).await;
    let cases: [(&str, &[u8]); 4] = [
        ("length -1", b"Q\xff\xff\xff\xff"),
        ("length 3", b"Q\x00\x00\x00\x03"),
        ("length 0 of an unknown type", b"~\x00\x00\x00\x00garbage"),
        ("i32::MIN length", b"P\x80\x00\x00\x00\x01\x02\x03"),
    ];
    for (what, garbage) in cases {
        let mut s = wire::trust_session(proxy.addr(), SUPERUSER, DB).await;
        // A valid round trip first, so the garbage lands on an established session.
        s.write_all(&wire::query("SELECT 1")).await.unwrap();
        wire::frames_until_ready(&mut s, PROMPT).await;
        hb.assert_serving(&format!("before {what}")).await;
        s.write_all(garbage).await.unwrap();
        let frames = wire::frames_until_closed(&mut s, PROMPT).await;
        assert_protocol_violation(&frames, what);
        hb.assert_serving(&format!("after {what}")).await;
    }
    assert_alive_and_serving(&mut proxy, "after malformed frames").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_frame_gets_08p01_and_a_close() {
    let (_pg, mut proxy) = start("[server]\nmax_message_bytes = 65536\n");
    let mut hb = Heartbeat::start(&proxy).await;

    // Just under the limit is fine.
    let mut s = wire::trust_session(proxy.addr(), SUPERUSER, DB).await;
    let near = format!("SELECT length('{}')", "a".repeat(60_000));
    s.write_all(&wire::query(&near)).await.unwrap();
    let frames = wire::frames_until_ready(&mut s, PROMPT).await;
    assert!(
        frames.iter().any(|f| f[0] == b'D'),
        "no row for a 60 kB query"
    );

    // A Query announcing 1 MiB: rejected from its header, before the body arrives.
    let mut oversized = vec![b'Q'];
    oversized.extend_from_slice(&(1i32 << 20).to_be_bytes());
    oversized.extend_from_slice(&[b'a'; 1000]);
    s.write_all(&oversized).await.unwrap();
    let frames = wire::frames_until_closed(&mut s, PROMPT).await;
    assert_protocol_violation(&frames, "1 MiB Query");
    let message = wire::field(wire::first_error(&frames).unwrap(), b'M').unwrap();
    assert!(
        message.contains("65536"),
        "message should name the limit: {message}"
    );
    hb.assert_serving("after the oversized frame").await;

    // The same for an opaque frame type the proxy would otherwise stream (CopyData).
    let mut s = wire::trust_session(proxy.addr(), SUPERUSER, DB).await;
    let mut copy_data = vec![b'd'];
    copy_data.extend_from_slice(&(1i32 << 20).to_be_bytes());
    copy_data.extend_from_slice(&[0u8; 100]);
    s.write_all(&copy_data).await.unwrap();
    let frames = wire::frames_until_closed(&mut s, PROMPT).await;
    assert_protocol_violation(&frames, "1 MiB CopyData");
    hb.assert_serving("after the oversized CopyData").await;
    assert_alive_and_serving(&mut proxy, "after oversized frames").await;
}

/// A startup packet with an arbitrary 32-bit code (major << 16 | minor) and raw body.
fn startup_packet(code: u32, body: &[u8]) -> Vec<u8> {
    let mut out = ((8 + body.len()) as i32).to_be_bytes().to_vec();
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(body);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_before_startup_never_crashes_the_proxy() {
    let (_pg, mut proxy) = start("[server]\nstartup_timeout = \"2s\"\n");
    let mut hb = Heartbeat::start(&proxy).await;

    let mut cases: Vec<(String, Vec<u8>)> = Vec::new();
    for seed in 1..=12u64 {
        let mut g = wire::Garbage::new(seed * 0x9E37_79B9);
        let len = 1 + (g.next_u64() % 300) as usize;
        cases.push((format!("{len} random bytes (seed {seed})"), g.bytes(len)));
    }
    let mut big = 100_000i32.to_be_bytes().to_vec();
    big.extend_from_slice(&0x0003_0000u32.to_be_bytes());
    big.extend_from_slice(&[b'u'; 4096]);
    cases.push(("startup packet of length 100000".into(), big));
    cases.push(("startup packet of length -1".into(), vec![0xff; 12]));
    cases.push(("startup packet of length 4".into(), vec![0, 0, 0, 4]));
    cases.push(("two bytes".into(), vec![0, 0]));
    cases.push((
        "protocol 3.0 with an unterminated parameter".into(),
        startup_packet(0x0003_0000, b"user\0postgres"),
    ));
    cases.push((
        "cancel request with a 2-byte key".into(),
        startup_packet(80_877_102, &[1, 2]),
    ));
    let ssl = startup_packet(80_877_103, &[]);
    cases.push(("SSLRequest three times".into(), ssl.repeat(3)));
    let gss = startup_packet(80_877_104, &[]);
    cases.push(("GSSENCRequest four times".into(), gss.repeat(4)));
    for (what, bytes) in &cases {
        let mut s = wire::connect(proxy.addr()).await;
        // The peer may already have closed on an early byte; that is fine.
        let _ = s.write_all(bytes).await;
        // Half-close so a packet that announces more than was sent ends at EOF.
        let _ = s.shutdown().await;
        let bytes = wire::bytes_until_closed(&mut s, PROMPT).await;
        if what.contains("Request") {
            // Each SSL/GSS request is answered with a single 'N' until the proxy gives up.
            assert!(bytes.iter().all(|&b| b == b'N'), "{what}: got {bytes:?}");
        } else {
            // Nothing, or an error: never anything a client could take for a session.
            let frames = wire::split_frames(&bytes);
            assert!(
                frames.iter().all(|f| f[0] == b'E'),
                "{what}: unexpected frames {:?}",
                frames.iter().map(|f| wire::describe(f)).collect::<Vec<_>>()
            );
        }
        assert_alive_and_serving(&mut proxy, what).await;
    }
    hb.assert_serving("after garbage first packets").await;

    // Unknown protocol majors go to the server, which refuses them; the client is told.
    for major in [4u32, 9, 1234] {
        let mut s = wire::connect(proxy.addr()).await;
        let packet = startup_packet(major << 16, b"user\0postgres\0\0");
        s.write_all(&packet).await.unwrap();
        let frames = wire::frames_until_closed(&mut s, PROMPT).await;
        let err = wire::first_error(&frames)
            .unwrap_or_else(|| panic!("protocol {major}.0: no ErrorResponse, got {frames:?}"));
        assert_eq!(
            wire::field(err, b'S').as_deref(),
            Some("FATAL"),
            "{}",
            wire::describe(err)
        );
        assert_alive_and_serving(&mut proxy, &format!("after protocol {major}.0")).await;
    }
    // Below 3.0 PostgreSQL answers in the old, unframed format: pgmemo passes it through.
    for major in [0u32, 1, 2] {
        let mut s = wire::connect(proxy.addr()).await;
        let packet = startup_packet(major << 16, b"user\0postgres\0\0");
        s.write_all(&packet).await.unwrap();
        let bytes = wire::bytes_until_closed(&mut s, PROMPT).await;
        // PostgreSQL's pre-3.0 error is relayed verbatim, as a direct client would see it.
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            bytes.first() == Some(&b'E') && text.contains("unsupported frontend protocol"),
            "protocol {major}.0: expected the server's own refusal, got {text:?}"
        );
        assert_alive_and_serving(&mut proxy, &format!("after protocol {major}.0")).await;
    }
    hb.assert_serving("after unknown protocol majors").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_clients_are_closed_after_startup_timeout() {
    let (_pg, mut proxy) = start("[server]\nstartup_timeout = \"1s\"\n");
    let mut hb = Heartbeat::start(&proxy).await;
    let silent = async {
        let mut s = wire::connect(proxy.addr()).await;
        let t0 = Instant::now();
        let r = wire::read_frame(&mut s, Duration::from_secs(3)).await;
        (t0.elapsed(), r)
    };
    let partial = async {
        // Four bytes announcing a 100-byte startup packet, then nothing.
        let mut s = wire::connect(proxy.addr()).await;
        s.write_all(&100i32.to_be_bytes()).await.unwrap();
        let t0 = Instant::now();
        let r = wire::read_frame(&mut s, Duration::from_secs(3)).await;
        (t0.elapsed(), r)
    };
    let during = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let c = proxy.connect(SUPERUSER, "", DB).await;
        select_one(&c).await
    };
    let mute_at_password = async {
        // A complete startup for a password user, then no answer to the password request:
        // the authentication phase is bounded by the same timeout.
        let mut s = wire::connect(proxy.addr()).await;
        let user = common::PLAIN_USER.0;
        s.write_all(&encode_startup(3, 0, &[("user", user), ("database", DB)]))
            .await
            .unwrap();
        let request = wire::read_frame(&mut s, PROMPT).await;
        assert!(
            matches!(&request, Read::Frame(f) if f[0] == b'R'),
            "expected a password request, got {request:?}"
        );
        let t0 = Instant::now();
        let frames = wire::frames_until_closed(&mut s, Duration::from_secs(3)).await;
        (t0.elapsed(), frames)
    };
    let ((t_silent, r_silent), (t_partial, r_partial), (t_mute, mute_frames), served) =
        tokio::join!(silent, partial, mute_at_password, during);
    served.expect("a session opened while others were silent");
    assert!(
        t_mute >= Duration::from_millis(800),
        "client mute at the password prompt closed after {t_mute:?}"
    );
    assert!(
        mute_frames.iter().all(|f| f[0] == b'E'),
        "after the timeout only an error may come: {mute_frames:?}"
    );
    for (what, elapsed, r) in [
        ("silent client", t_silent, r_silent),
        ("partial startup packet", t_partial, r_partial),
    ] {
        assert!(
            matches!(r, Read::Closed),
            "{what}: expected a close, got {r:?}"
        );
        assert!(
            elapsed >= Duration::from_millis(800),
            "{what}: closed after {elapsed:?}, before the 1 s startup_timeout"
        );
    }
    hb.assert_serving("after the startup timeouts").await;
    assert_alive_and_serving(&mut proxy, "after the startup timeouts").await;
}

fn code(e: &tokio_postgres::Error) -> String {
    common::db_error(e).code().code().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limit_gives_53300_and_cancels_still_work_at_the_limit() {
    let (pg, mut proxy) = start("[server]\nmax_client_connections = 3\n");
    let mut sessions = Vec::new();
    for _ in 0..3 {
        let c = proxy.connect(SUPERUSER, "", DB).await;
        select_one(&c).await.unwrap();
        sessions.push(c);
    }
    let err = match proxy.try_connect(SUPERUSER, "", DB).await {
        Ok(_) => panic!("a 4th session was accepted over max_client_connections = 3"),
        Err(e) => e,
    };
    assert_eq!(code(&err), "53300", "{err}");
    assert_eq!(
        common::db_error(&err).message(),
        "sorry, too many clients already"
    );

    // A cancel still gets through at the limit.
    let token = sessions[0].cancel_token();
    let t0 = Instant::now();
    let (slept, cancelled) = tokio::join!(sessions[0].simple_query("SELECT pg_sleep(30)"), async {
        wait_until_sleeping(&pg).await;
        token.cancel_query(NoTls).await
    });
    cancelled.expect("sending the CancelRequest at the connection limit");
    let err = slept.expect_err("pg_sleep(30) was not cancelled");
    assert_eq!(code(&err), "57014", "{err}");
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "cancel took {:?}",
        t0.elapsed()
    );

    // A cancel with an unknown key (a real backend pid, a wrong secret) changes nothing.
    let pid: i32 = sessions[1]
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let mut bad_key = pid.to_be_bytes().to_vec();
    bad_key.extend_from_slice(&[0x5a, 0xa5, 0x5a, 0xa5]);
    let (slept, ()) = tokio::join!(sessions[1].simple_query("SELECT pg_sleep(1.5)"), async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        wire::send_cancel(proxy.addr(), &bad_key).await;
        wire::send_cancel(proxy.addr(), &[0xff; 40]).await;
    });
    slept.expect("a cancel with an unknown key cancelled a query");
    for c in &sessions {
        select_one(c).await.unwrap();
    }

    // Closing one frees a slot.
    drop(sessions.pop());
    let deadline = Instant::now() + PROMPT;
    let replacement = loop {
        match proxy.try_connect(SUPERUSER, "", DB).await {
            Ok(c) => break c,
            Err(e) if Instant::now() < deadline && code(&e) == "53300" => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("no slot after closing a session: {e}"),
        }
    };
    select_one(&replacement).await.unwrap();
    assert!(proxy.try_exit_status().is_none());
}

/// Connections opened at once over the limit (issue 15, item 8: past 64 rejections in
/// progress, the rest used to be closed without a word).
const FLOOD: usize = 1000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_connections_at_once_over_the_limit_all_get_53300() {
    let (_pg, proxy) = start("[server]\nmax_client_connections = 1\n");
    let held = proxy.connect(SUPERUSER, "", DB).await;
    select_one(&held).await.unwrap();

    // All connected first, so that the rejections are all in progress at once; then each
    // sends its startup packet and reads until the proxy closes.
    let mut sockets = Vec::with_capacity(FLOOD);
    for _ in 0..FLOOD {
        sockets.push(wire::connect(proxy.addr()).await);
    }
    let startup = encode_startup(3, 0, &[("user", SUPERUSER), ("database", DB)]);
    let codes = futures_util::future::join_all(sockets.into_iter().map(|mut s| {
        let startup = startup.clone();
        async move {
            // The answer may already be there and the socket closed: a failed write is fine.
            let _ = s.write_all(&startup).await;
            let frames = wire::frames_until_closed(&mut s, Duration::from_secs(30)).await;
            wire::first_error(&frames).and_then(|e| wire::field(e, b'C'))
        }
    }))
    .await;
    let refused = codes
        .iter()
        .filter(|c| c.as_deref() == Some("53300"))
        .count();
    let silent = codes.iter().filter(|c| c.is_none()).count();
    assert_eq!(
        refused, FLOOD,
        "{refused} of {FLOOD} connections over the limit got 53300, {silent} were closed without \
         an ErrorResponse"
    );
    // The session inside the limit is unaffected.
    select_one(&held).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_upstream_gives_08001_naming_the_upstream() {
    let port = common::ports::free_port();
    let mut proxy = Proxy::start(ProxyArgs::new(format!(
        "postgres://postgres@127.0.0.1:{port}/postgres"
    )));
    for attempt in 0..2 {
        let t0 = Instant::now();
        let err = match tokio::time::timeout(
            Duration::from_secs(15),
            proxy.try_connect(SUPERUSER, "", DB),
        )
        .await
        .expect("connecting through a proxy with no upstream hung")
        {
            Ok(_) => panic!("connected although nothing listens on {port}"),
            Err(e) => e,
        };
        let db = common::db_error(&err);
        assert_eq!(db.code().code(), "08001", "attempt {attempt}: {err}");
        let addr = format!("127.0.0.1:{port}");
        assert!(
            db.message().contains(&addr) || db.detail().is_some_and(|d| d.contains(&addr)),
            "the error should name the upstream {addr}: {db:?}"
        );
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "took {:?}",
            t0.elapsed()
        );
    }
    assert!(proxy.try_exit_status().is_none(), "{}", proxy.stderr());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_stopped_mid_session_then_restarted() {
    let mut pg = PgServer::start(PgOptions::default());
    let mut proxy = Proxy::start(ProxyArgs::new(pg.url(SUPERUSER, DB)));
    let idle = proxy.connect(SUPERUSER, "", DB).await;
    let busy = proxy.connect(SUPERUSER, "", DB).await;
    select_one(&idle).await.unwrap();
    let busy_query = tokio::spawn(async move {
        let r = busy.simple_query("SELECT pg_sleep(60)").await;
        (r, busy)
    });
    wait_until_sleeping(&pg).await;

    let t0 = Instant::now();
    tokio::task::block_in_place(|| pg.stop());
    let (r, _busy) = tokio::time::timeout(Duration::from_secs(10), busy_query)
        .await
        .expect("a query in flight when the upstream stopped hung")
        .unwrap();
    let err = r.expect_err("pg_sleep(60) succeeded although the server stopped");
    assert_upstream_gone(&err, "in-flight query");
    let r = tokio::time::timeout(Duration::from_secs(10), idle.simple_query("SELECT 1"))
        .await
        .expect("the next query of an idle session hung after the upstream stopped");
    let err = r.expect_err("a query succeeded although the server is stopped");
    assert_upstream_gone(&err, "idle session's next query");
    assert!(t0.elapsed() < Duration::from_secs(30));

    // While it is down, new sessions get 08001 naming it.
    let err = match proxy.try_connect(SUPERUSER, "", DB).await {
        Ok(_) => panic!("connected while the upstream is stopped"),
        Err(e) => e,
    };
    assert_eq!(code(&err), "08001", "{err}");
    let named = format!("127.0.0.1:{}", pg.port());
    assert!(common::db_error(&err).message().contains(&named), "{err:?}");

    tokio::task::block_in_place(|| pg.start_again());
    assert_alive_and_serving(&mut proxy, "after the upstream came back").await;
}

/// The error a client sees when its upstream went away: pgmemo's 08006, Postgres's own
/// 57P01 (relayed), or the driver's "connection closed" after either.
fn assert_upstream_gone(err: &tokio_postgres::Error, what: &str) {
    if let Some(db) = err.as_db_error() {
        assert!(
            ["08006", "57P01"].contains(&db.code().code()),
            "{what}: unexpected error {db:?}"
        );
    } else {
        assert!(
            err.is_closed(),
            "{what}: expected a closed connection, got {err:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_that_never_reads_is_held_back_without_growing_the_proxy() {
    let (_pg, mut proxy) = start("");
    let mut hb = Heartbeat::start(&proxy).await;
    let rss_before = proxy.rss_kib();
    let mut s = wire::trust_session(proxy.addr(), SUPERUSER, DB).await;
    // Pipelined queries whose results are never read: backpressure must stop the client's
    // writes instead of buffering results (or queries) in the proxy.
    let batch = wire::query("SELECT 1").repeat(4096);
    let cap = 256usize << 20;
    let mut written = 0usize;
    let stalled = loop {
        match tokio::time::timeout(Duration::from_secs(2), s.write_all(&batch)).await {
            Err(_) => break true,
            Ok(r) => r.expect("write to the proxy"),
        }
        written += batch.len();
        if written >= cap {
            break false;
        }
    };
    assert!(
        stalled,
        "wrote {written} bytes of queries without the proxy pushing back"
    );
    hb.assert_serving("while a client refuses to read").await;
    let grown = proxy.rss_kib().saturating_sub(rss_before);
    eprintln!("non-reading client: {written} bytes written before the stall; RSS +{grown} KiB");
    assert!(
        grown < 32 * 1024,
        "pgmemo grew by {grown} KiB for one non-reading client"
    );
    drop(s);
    hb.assert_serving("after the non-reading client left").await;
    assert_alive_and_serving(&mut proxy, "after the non-reading client").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_large_parse_messages_keep_the_proxy_bounded() {
    let (_pg, mut proxy) = start("");
    let mut hb = Heartbeat::start(&proxy).await;
    let rss_before = proxy.rss_kib();
    let sampler = common::memory::RssSampler::start(proxy.pid(), Duration::from_millis(50));
    let mut s = wire::trust_session(proxy.addr(), SUPERUSER, DB).await;
    // A legitimate pipeline: many unnamed-statement Parse messages with 512 kB of SQL each,
    // then one Sync. PostgreSQL answers each with a 5-byte ParseComplete and flushes them
    // only every 8 kB, so ~1600 Parses are "in flight" at any time; whatever the proxy keeps
    // per in-flight message must be bounded in bytes, not only in count.
    const SQL_BYTES: usize = 512 * 1024;
    const PARSES: usize = 1800;
    let mut body = b"\0SELECT 1 -- ".to_vec();
    body.extend_from_slice(&vec![b'x'; SQL_BYTES]);
    body.extend_from_slice(b"\0\0\0");
    let parse = wire::frame(b'P', &body);
    let (mut rd, mut wr) = s.split();
    let writer = async {
        for _ in 0..PARSES {
            wr.write_all(&parse).await.expect("write Parse");
        }
        wr.write_all(&wire::frame(b'S', &[]))
            .await
            .expect("write Sync");
    };
    let reader = async {
        // Read (and count) the answers as they come, like a pipelining driver.
        let mut parse_complete = 0usize;
        let mut buf = vec![0u8; 64 * 1024];
        let mut pending = Vec::new();
        loop {
            use tokio::io::AsyncReadExt;
            let n = rd.read(&mut buf).await.expect("read answers");
            assert!(n > 0, "proxy closed the pipelining session");
            pending.extend_from_slice(&buf[..n]);
            let mut done = false;
            let mut used = 0;
            while let Some(f) = pending.get(used..).filter(|r| r.len() >= 5) {
                let len = i32::from_be_bytes([f[1], f[2], f[3], f[4]]) as usize;
                if f.len() < len + 1 {
                    break;
                }
                match f[0] {
                    b'1' => parse_complete += 1,
                    b'Z' => done = true,
                    other => panic!("unexpected {}", char::from(other)),
                }
                used += len + 1;
            }
            pending.drain(..used);
            if done {
                return parse_complete;
            }
        }
    };
    let ((), parsed) = tokio::time::timeout(Duration::from_secs(240), async {
        tokio::join!(writer, reader)
    })
    .await
    .expect("the Parse pipeline did not finish within 240 s");
    assert_eq!(parsed, PARSES);
    let peak = sampler.finish();
    let grown = peak.saturating_sub(rss_before);
    eprintln!("pipeline of {PARSES} x {SQL_BYTES}-byte Parse messages: peak RSS +{grown} KiB");
    assert!(
        grown < 64 * 1024,
        "pgmemo's RSS peaked {grown} KiB above its start for one pipelining client"
    );
    hb.assert_serving("after the Parse pipeline").await;
    assert_alive_and_serving(&mut proxy, "after the Parse pipeline").await;
}
