//! The ceiling for write-behind acknowledgements on this machine (issue 20): an instant
//! responder for pgbench's single-row INSERT (`-M prepared` or `-M simple`) that answers each
//! INSERT only once a record for it is durable, the least any durable write-behind queue must
//! do. No parsing of the statement, no planning, no checks, no flusher, no PostgreSQL load:
//! whatever pgmemo does costs more.
//!
//! usage: durable LISTEN FILE [RECORD_BYTES] [PREALLOC] [THREADS] [WRITERS]
//!   FILE: the journal file (created; removed and recreated at start; with WRITERS > 1,
//!   FILE.0, FILE.1, ...).
//!   RECORD_BYTES: bytes stored per INSERT (default 400, about pgmemo's record for the
//!   bench's INSERT with its settings and statement text).
//!   PREALLOC: `zeroed` (default: the file is written with zeros and fsync'd before serving,
//!   so a group's fdatasync flushes data only, no metadata) or `append` (the file grows with
//!   every group, as pgmemo's journal does today).
//!   THREADS: tokio worker threads for the sessions (default 2).
//!   WRITERS: writer threads, each with its own file (default 1). With more than one, a
//!   group's fdatasync may overlap another's: records that arrive while one writer syncs are
//!   taken by the next idle one (a real journal would then order them by sequence number at
//!   recovery; the ceiling skips that).
//!
//! Group commit as good as it gets: a writer thread takes every record queued while the
//! previous group was being written, writes them with one `pwrite` and one `fdatasync`, then
//! wakes their sessions. On SIGINT/EOF of stdin nothing special happens: kill it. Every 5 s it
//! prints groups, records and mean records per group to stderr.
//!
//! Everything read from the network is checked; a malformed message ends that connection.

use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// The preallocated size of the file in `zeroed` mode (the bench's runs fit in it; once past
/// it the file grows as in `append` mode).
const PREALLOC_BYTES: u64 = 2 << 30;

type Request = (usize, oneshot::Sender<()>);

fn msg(out: &mut BytesMut, tag: u8, body: &[u8]) {
    out.put_u8(tag);
    out.put_i32(i32::try_from(body.len() + 4).unwrap_or(i32::MAX));
    out.put_slice(body);
}

fn ready(out: &mut BytesMut) {
    msg(out, b'Z', b"I");
}

/// Reads one length-prefixed startup-phase packet; `None` at EOF or on a bad length.
async fn startup_packet(s: &mut TcpStream, buf: &mut BytesMut) -> std::io::Result<Option<i32>> {
    while buf.len() < 8 {
        if s.read_buf(buf).await? == 0 {
            return Ok(None);
        }
    }
    let len = usize::try_from(buf.get_i32()).unwrap_or(0);
    if !(8..=10_000).contains(&len) {
        return Ok(None);
    }
    let code = buf.get_i32();
    while buf.len() < len - 8 {
        if s.read_buf(buf).await? == 0 {
            return Ok(None);
        }
    }
    buf.advance(len - 8);
    Ok(Some(code))
}

async fn serve(mut s: TcpStream, journal: mpsc::Sender<Request>, record: usize) -> std::io::Result<()> {
    s.set_nodelay(true)?;
    let mut buf = BytesMut::with_capacity(8192);
    loop {
        match startup_packet(&mut s, &mut buf).await? {
            None => return Ok(()),
            Some(80877103 | 80877104) => s.write_all(b"N").await?,
            Some(_) => break,
        }
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
    let mut k = BytesMut::new();
    k.put_i32(1);
    k.put_i32(2);
    msg(&mut out, b'K', &k);
    ready(&mut out);
    s.write_all(&out).await?;
    out.clear();
    // INSERTs of the current Sync group not yet durable.
    let mut waits: Vec<oneshot::Receiver<()>> = Vec::new();
    loop {
        while buf.len() >= 5 {
            let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
            if !(4..=1 << 20).contains(&len) {
                return Ok(());
            }
            if buf.len() < len + 1 {
                break;
            }
            let m = buf.split_to(len + 1);
            let durable = |waits: &mut Vec<_>| {
                let (tx, rx) = oneshot::channel();
                let _ = journal.send((record, tx));
                waits.push(rx);
            };
            match m[0] {
                b'Q' => {
                    durable(&mut waits);
                    for w in waits.drain(..) {
                        let _ = w.await;
                    }
                    msg(&mut out, b'C', b"INSERT 0 1\0");
                    ready(&mut out);
                }
                b'P' => msg(&mut out, b'1', b""),
                b'B' => msg(&mut out, b'2', b""),
                b'D' => {
                    if m.get(5) == Some(&b'S') {
                        let mut b = BytesMut::new();
                        b.put_i16(2);
                        b.put_i32(20);
                        b.put_i32(23);
                        msg(&mut out, b't', &b);
                    }
                    msg(&mut out, b'n', b"");
                }
                b'E' => {
                    durable(&mut waits);
                    msg(&mut out, b'C', b"INSERT 0 1\0");
                }
                b'S' => {
                    for w in waits.drain(..) {
                        let _ = w.await;
                    }
                    ready(&mut out);
                }
                b'H' => {}
                b'C' => msg(&mut out, b'3', b""),
                b'X' => return Ok(()),
                _ => return Ok(()),
            }
        }
        if !out.is_empty() {
            s.write_all(&out).await?;
            out.clear();
        }
        if s.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
    }
}

/// A writer thread: group commit into `file`, from offset 0. Writers share the inbox: the
/// one holding its lock waits for the next record and takes what is queued with it.
fn writer(
    file: std::fs::File,
    inbox: Arc<std::sync::Mutex<mpsc::Receiver<Request>>>,
    stats: Arc<[AtomicU64; 2]>,
) {
    let mut offset = 0u64;
    let mut data = Vec::with_capacity(4 << 20);
    let mut group = Vec::with_capacity(4096);
    loop {
        {
            let Ok(inbox) = inbox.lock() else { return };
            let Ok(first) = inbox.recv() else { return };
            group.push(first);
            while group.len() < 4096 {
                match inbox.try_recv() {
                    Ok(r) => group.push(r),
                    Err(_) => break,
                }
            }
        }
        data.clear();
        for (n, _) in &group {
            data.resize(data.len() + n, 0x5a);
        }
        if let Err(e) = file.write_all_at(&data, offset).and_then(|()| file.sync_data()) {
            eprintln!("durable: write failed: {e}");
            std::process::exit(1);
        }
        offset += data.len() as u64;
        stats[0].fetch_add(1, Ordering::Relaxed);
        stats[1].fetch_add(group.len() as u64, Ordering::Relaxed);
        for (_, done) in group.drain(..) {
            let _ = done.send(());
        }
    }
}

/// Creates `path` afresh, zero-filled to `bytes` and fsync'd when `zeroed`.
fn open_file(path: &str, zeroed: bool, bytes: u64) -> std::io::Result<std::fs::File> {
    let _ = std::fs::remove_file(path);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(path)?;
    if zeroed {
        let zeros = vec![0u8; 8 << 20];
        let mut at = 0;
        while at < bytes {
            file.write_all_at(&zeros, at)?;
            at += zeros.len() as u64;
        }
        file.sync_all()?;
    }
    Ok(file)
}

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let listen = args.get(1).cloned().unwrap_or_else(|| "127.0.0.1:7432".into());
    let path = args.get(2).cloned().unwrap_or_else(|| "/tmp/durable.journal".into());
    let record: usize = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(400);
    let prealloc = args.get(4).map(String::as_str).unwrap_or("zeroed");
    let threads: usize = args.get(5).and_then(|a| a.parse().ok()).unwrap_or(2);
    let writers: usize = args.get(6).and_then(|a| a.parse().ok()).unwrap_or(1);
    if !matches!(prealloc, "zeroed" | "append") {
        eprintln!("durable: PREALLOC must be zeroed or append, not {prealloc}");
        std::process::exit(2);
    }

    let stats = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
    let (journal, inbox) = mpsc::channel();
    let inbox = Arc::new(std::sync::Mutex::new(inbox));
    for i in 0..writers.max(1) {
        let path = if writers > 1 { format!("{path}.{i}") } else { path.clone() };
        let file = open_file(&path, prealloc == "zeroed", PREALLOC_BYTES / writers.max(1) as u64)?;
        let (inbox, s) = (Arc::clone(&inbox), Arc::clone(&stats));
        std::thread::Builder::new()
            .name(format!("journal-{i}"))
            .spawn(move || writer(file, inbox, s))?;
    }
    let s = Arc::clone(&stats);
    std::thread::spawn(move || {
        let mut last = [0u64; 2];
        loop {
            std::thread::sleep(std::time::Duration::from_secs(5));
            let now = [s[0].load(Ordering::Relaxed), s[1].load(Ordering::Relaxed)];
            let (g, r) = (now[0] - last[0], now[1] - last[1]);
            if g > 0 {
                eprintln!("durable: {g} groups, {r} records, {:.1} per group", r as f64 / g as f64);
            }
            last = now;
        }
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = TcpListener::bind(&listen).await?;
        println!("ready {}", listener.local_addr()?);
        loop {
            let (s, _) = listener.accept().await?;
            let journal = journal.clone();
            tokio::spawn(async move {
                let _ = serve(s, journal, record).await;
            });
        }
    })
}
