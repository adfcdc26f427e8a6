//! The ceiling for cache hits that need one Redis round trip each (`strict` counters, or the
//! L2 read of `cache.l1.enabled = false`), on this machine: the instant responder of
//! `../shared/tools/limit` (answers every pgbench point query from memory, no work at all),
//! plus, per query, what pgmemo's shared tier must at least do before it can answer — wait for
//! a Redis reply that was requested after the query arrived. Batching is as good as it gets:
//! one connection for the whole process, every query that arrives while a batch is out goes in
//! the next one, and a batch sends *one* counter read (`GET` marker + `HMGET` versions, as
//! pgmemo does) plus, in `l2` mode, one `GET` per query for its entry, all pipelined in one
//! write. No parsing of the values, no HMAC, no L1: whatever pgmemo does costs more.
//!
//! usage: ceiling LISTEN REDIS MODE [THREADS] [YIELDS] [LAYOUT]
//!   MODE: `none` (the plain instant responder), `counters` (strict with L1 on: one counter
//!   read per batch), `l2` (strict with L1 off: counters and each query's entry).
//!   THREADS: tokio worker threads (1: the Redis connection and every session on one thread,
//!   no cross-thread wake-ups; the best here). YIELDS: times the Redis task yields to the
//!   runtime before sending a batch, to let more queries join it (1 was best here).
//!   LAYOUT: `shared` (one multi-threaded runtime, one Redis connection) or `per-thread`
//!   (one single-threaded runtime per thread, each with its own connection, as pgmemo).
//!
//! At start it writes what it reads under `ceiling:` (a marker, a versions hash, 10,000
//! entries of 100 bytes), then prints `ready` and serves `-M simple` point queries.
//!
//! Everything read from the network is checked; a malformed message ends that connection.

use std::sync::Arc;

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    None,
    Counters,
    L2,
}

/// One query's wait: the entry key it needs (l2 mode) and where to say "answered".
type Request = (u32, oneshot::Sender<bool>);

fn msg(out: &mut BytesMut, tag: u8, body: &[u8]) {
    out.put_u8(tag);
    out.put_i32(i32::try_from(body.len() + 4).unwrap_or(i32::MAX));
    out.put_slice(body);
}

fn row_desc(out: &mut BytesMut) {
    let mut b = BytesMut::new();
    b.put_i16(1);
    b.put_slice(b"abalance\0");
    b.put_i32(0);
    b.put_i16(0);
    b.put_i32(23);
    b.put_i16(4);
    b.put_i32(-1);
    b.put_i16(0);
    msg(out, b'T', &b);
}

fn data_row(out: &mut BytesMut) {
    let mut b = BytesMut::new();
    b.put_i16(1);
    b.put_i32(1);
    b.put_slice(b"0");
    msg(out, b'D', &b);
}

fn be_u32(b: &[u8], at: usize) -> Option<usize> {
    let s = b.get(at..at + 4)?;
    usize::try_from(u32::from_be_bytes([s[0], s[1], s[2], s[3]])).ok()
}

/// RESP command as an array of bulk strings.
fn resp(out: &mut BytesMut, args: &[&[u8]]) {
    out.put_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        out.put_slice(format!("${}\r\n", a.len()).as_bytes());
        out.put_slice(a);
        out.put_slice(b"\r\n");
    }
}

/// Length of one complete RESP2 reply at the start of `b`, if it is all there.
fn reply_len(b: &[u8]) -> Option<usize> {
    let line_end = b.windows(2).position(|w| w == b"\r\n")?;
    let after = line_end + 2;
    let count = || -> Option<i64> { std::str::from_utf8(b.get(1..line_end)?).ok()?.parse().ok() };
    match b.first()? {
        b'+' | b'-' | b':' => Some(after),
        b'$' => match usize::try_from(count()?) {
            Err(_) => Some(after), // nil
            Ok(n) => {
                let end = after + n + 2;
                (b.len() >= end).then_some(end)
            }
        },
        b'*' => match usize::try_from(count()?) {
            Err(_) => Some(after),
            Ok(n) => {
                let mut at = after;
                for _ in 0..n {
                    at += reply_len(b.get(at..)?)?;
                }
                Some(at)
            }
        },
        _ => None,
    }
}

/// Sends `out` and reads `replies` replies (their content is not looked at).
async fn exchange(s: &mut TcpStream, out: &[u8], inb: &mut BytesMut, replies: usize) -> Option<()> {
    s.write_all(out).await.ok()?;
    let mut got = 0;
    while got < replies {
        match reply_len(inb) {
            Some(n) => {
                inb.advance(n);
                got += 1;
            }
            None => {
                if s.read_buf(inb).await.ok()? == 0 {
                    return None;
                }
            }
        }
    }
    Some(())
}

/// Connects and writes the keys the batches read.
async fn connect_and_seed(addr: &str) -> Option<TcpStream> {
    let mut s = TcpStream::connect(addr).await.ok()?;
    s.set_nodelay(true).ok()?;
    let mut out = BytesMut::new();
    resp(&mut out, &[b"SET", b"ceiling:gen", b"g1"]);
    resp(
        &mut out,
        &[
            b"HSET",
            b"ceiling:v",
            b"gen",
            b"g1",
            b"epoch",
            b"0",
            b"t1",
            b"1",
        ],
    );
    let value = [b'x'; 100];
    for k in 1..=10_000 {
        let key = format!("ceiling:e:{k}");
        resp(&mut out, &[b"SET", key.as_bytes(), &value]);
    }
    let mut inb = BytesMut::new();
    exchange(&mut s, &out, &mut inb, 10_002).await?;
    Some(s)
}

/// The process's one Redis connection: batches everything queued while a batch is out.
async fn redis_loop(mut s: TcpStream, mode: Mode, yields: usize, mut rx: mpsc::Receiver<Request>) {
    let mut out = BytesMut::new();
    let mut inb = BytesMut::with_capacity(64 * 1024);
    let mut batch: Vec<Request> = Vec::new();
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < 256 {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        for _ in 0..yields {
            tokio::task::yield_now().await;
            while let Ok(r) = rx.try_recv() {
                batch.push(r);
            }
        }
        out.clear();
        resp(&mut out, &[b"GET", b"ceiling:gen"]);
        resp(&mut out, &[b"HMGET", b"ceiling:v", b"gen", b"epoch", b"t1"]);
        let mut replies = 2;
        if mode == Mode::L2 {
            for (k, _) in &batch {
                let key = format!("ceiling:e:{k}");
                resp(&mut out, &[b"GET", key.as_bytes()]);
                replies += 1;
            }
        }
        if exchange(&mut s, &out, &mut inb, replies).await.is_none() {
            eprintln!("redis connection lost");
            std::process::exit(1);
        }
        for (_, done) in batch.drain(..) {
            let _ = done.send(true);
        }
    }
}

async fn serve(mut s: TcpStream, mode: Mode, redis: Arc<mpsc::Sender<Request>>) -> Option<()> {
    s.set_nodelay(true).ok()?;
    let mut buf = BytesMut::with_capacity(8192);
    loop {
        while buf.len() < 4 {
            if s.read_buf(&mut buf).await.ok()? == 0 {
                return None;
            }
        }
        let len = be_u32(&buf, 0)?;
        while buf.len() < len {
            if s.read_buf(&mut buf).await.ok()? == 0 {
                return None;
            }
        }
        let code = if len >= 8 { be_u32(&buf, 4)? } else { 0 };
        buf.advance(len);
        if code == 80877103 || code == 80877104 {
            s.write_all(b"N").await.ok()?;
            continue;
        }
        break;
    }
    let mut out = BytesMut::new();
    msg(&mut out, b'R', &0i32.to_be_bytes());
    for (k, v) in [
        ("server_version", "15.18"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"),
        ("integer_datetimes", "on"),
        ("standard_conforming_strings", "on"),
    ] {
        let mut b = BytesMut::new();
        b.put_slice(k.as_bytes());
        b.put_u8(0);
        b.put_slice(v.as_bytes());
        b.put_u8(0);
        msg(&mut out, b'S', &b);
    }
    msg(&mut out, b'K', &[0, 0, 0, 1, 0, 0, 0, 2]);
    msg(&mut out, b'Z', b"I");
    s.write_all(&out).await.ok()?;
    out.clear();
    let mut n: u32 = 0;
    loop {
        while buf.len() >= 5 {
            let len = be_u32(&buf, 1)?;
            if buf.len() < len + 1 {
                break;
            }
            let m = buf.split_to(len + 1);
            if m.first() == Some(&b'X') {
                return None;
            }
            if m.first() == Some(&b'Q') {
                if mode != Mode::None {
                    n = n.wrapping_add(1);
                    let (tx, rx) = oneshot::channel();
                    redis.send((n % 10_000 + 1, tx)).await.ok()?;
                    rx.await.ok()?;
                }
                row_desc(&mut out);
                data_row(&mut out);
                msg(&mut out, b'C', b"SELECT 1\0");
                msg(&mut out, b'Z', b"I");
            }
        }
        if !out.is_empty() {
            s.write_all(&out).await.ok()?;
            out.clear();
        }
        if s.read_buf(&mut buf).await.ok()? == 0 {
            return None;
        }
    }
}

/// `per-thread` layout: one single-threaded runtime per thread, each with its own Redis
/// connection and batches, sessions handed out round robin (pgmemo's layout).
fn per_thread(listen: &str, redis: &str, mode: Mode, threads: usize, yields: usize) {
    let mut queues = Vec::new();
    for _ in 0..threads.max(1) {
        let (tx, mut rx) = mpsc::unbounded_channel::<std::net::TcpStream>();
        let address = redis.to_string();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<bool>();
        std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                let _ = ready_tx.send(false);
                return;
            };
            rt.block_on(async move {
                let Some(conn) = connect_and_seed(&address).await else {
                    let _ = ready_tx.send(false);
                    return;
                };
                let (rtx, rrx) = mpsc::channel(4096);
                let rtx = Arc::new(rtx);
                tokio::spawn(redis_loop(conn, mode, yields, rrx));
                let _ = ready_tx.send(true);
                while let Some(s) = rx.recv().await {
                    if let Ok(s) = TcpStream::from_std(s) {
                        tokio::spawn(serve(s, mode, Arc::clone(&rtx)));
                    }
                }
            });
        });
        if ready_rx.recv() != Ok(true) {
            eprintln!("cannot connect to redis at {redis} and write the keys");
            std::process::exit(1);
        }
        queues.push(tx);
    }
    let Ok(l) = std::net::TcpListener::bind(listen) else {
        eprintln!("cannot listen on {listen}");
        std::process::exit(1);
    };
    println!("ready");
    for (i, s) in l.incoming().enumerate() {
        let Ok(s) = s else { continue };
        if s.set_nonblocking(true).is_err() {
            continue;
        }
        if let Some(q) = queues.get(i % queues.len()) {
            let _ = q.send(s);
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let listen = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "127.0.0.1:7432".into());
    let redis = args
        .get(2)
        .cloned()
        .unwrap_or_else(|| "127.0.0.1:6379".into());
    let mode = match args.get(3).map(String::as_str) {
        Some("counters") => Mode::Counters,
        Some("l2") => Mode::L2,
        _ => Mode::None,
    };
    let threads = args.get(4).and_then(|t| t.parse().ok()).unwrap_or(1);
    let yields = args.get(5).and_then(|t| t.parse().ok()).unwrap_or(1);
    if args.get(6).map(String::as_str) == Some("per-thread") {
        per_thread(&listen, &redis, mode, threads, yields);
        return;
    }
    let Ok(rt) = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
    else {
        eprintln!("cannot start runtime");
        std::process::exit(1);
    };
    rt.block_on(async move {
        let (tx, rx) = mpsc::channel(4096);
        let tx = Arc::new(tx);
        let Some(conn) = connect_and_seed(&redis).await else {
            eprintln!("cannot connect to redis at {redis} and write the keys");
            std::process::exit(1);
        };
        tokio::spawn(redis_loop(conn, mode, yields, rx));
        let Ok(l) = TcpListener::bind(&listen).await else {
            eprintln!("cannot listen on {listen}");
            std::process::exit(1);
        };
        println!("ready");
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(serve(s, mode, Arc::clone(&tx)));
        }
    });
}
