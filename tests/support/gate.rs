//! A TCP relay between pgmemo and PostgreSQL that a test can slow down at chosen points, to
//! make races deterministic: it delays the connections that carry a CancelRequest, and it
//! can hold what the server sends on one session's connection (chosen by its
//! `application_name`) from the ReadyForQuery after it is armed until it is released, or
//! delay what pgmemo sends on it.
//! Point pgmemo at [`Gate::url`] (`sslmode=disable`: the relay parses the plain protocol).
//! Included by path (`#[path = "support/gate.rs"] mod gate;`).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

const CANCEL_REQUEST_CODE: i32 = 80_877_102;
/// Largest startup packet or frame the gate parses (tests never send more).
const MAX_FRAME: usize = 64 << 20;

const OPEN: u8 = 0;
const ARMED: u8 = 1;
const HOLDING: u8 = 2;

#[derive(Default)]
struct Shared {
    cancel_delay: Mutex<Duration>,
    /// The `application_name` whose server-to-client bytes can be held.
    target: Mutex<Option<String>>,
    hold: AtomicU8,
    released: Notify,
    /// Bytes pgmemo sent on the target connection while its server bytes were held.
    sent_while_holding: AtomicU64,
    sent: Notify,
    cancels: AtomicU64,
    /// Delay of what pgmemo sends on the target connection.
    up_delay: Mutex<Duration>,
}

pub struct Gate {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl Gate {
    /// Relays to `upstream` from a fresh local port (a task on the test's runtime).
    pub async fn start(upstream: SocketAddr) -> Gate {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind gate");
        let addr = listener.local_addr().expect("gate addr");
        let shared = Arc::new(Shared::default());
        let s = Arc::clone(&shared);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(relay(client, upstream, Arc::clone(&s)));
            }
        });
        Gate { addr, shared }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// An upstream URL for pgmemo that goes through the gate.
    pub fn url(&self, user: &str, db: &str) -> String {
        format!("postgres://{user}@{}/{db}?sslmode=disable", self.addr)
    }

    /// Connections whose first packet is a CancelRequest reach the server `delay` late.
    pub fn delay_cancels(&self, delay: Duration) {
        *self.shared.cancel_delay.lock().unwrap() = delay;
    }

    /// CancelRequests relayed so far.
    pub fn cancels(&self) -> u64 {
        self.shared.cancels.load(Ordering::SeqCst)
    }

    /// Arms the hold for the session connected with `application_name`: the next
    /// ReadyForQuery the server sends it still passes, everything after waits for
    /// [`Gate::release`].
    pub fn hold_after_next_ready(&self, application_name: &str) {
        *self.shared.target.lock().unwrap() = Some(application_name.to_owned());
        self.shared.sent_while_holding.store(0, Ordering::SeqCst);
        self.shared.hold.store(ARMED, Ordering::SeqCst);
    }

    /// What pgmemo sends on the session connected with `application_name` from now on
    /// reaches the server `delay` late.
    pub fn delay_upstream(&self, application_name: &str, delay: Duration) {
        *self.shared.target.lock().unwrap() = Some(application_name.to_owned());
        *self.shared.up_delay.lock().unwrap() = delay;
    }

    /// Holds what the server sends, from now on, on every connection named
    /// `application_name`, until [`Gate::release`].
    pub fn hold_now(&self, application_name: &str) {
        *self.shared.target.lock().unwrap() = Some(application_name.to_owned());
        self.shared.sent_while_holding.store(0, Ordering::SeqCst);
        self.shared.hold.store(HOLDING, Ordering::SeqCst);
    }

    /// Lets the held bytes go (and stops holding).
    pub fn release(&self) {
        self.shared.hold.store(OPEN, Ordering::SeqCst);
        self.shared.released.notify_waiters();
    }

    /// Waits until pgmemo has sent something on the held connection since the hold began
    /// (it queued work behind the ReadyForQuery); false after `timeout`.
    pub async fn wait_sent_while_holding(&self, timeout: Duration) -> bool {
        let wait = async {
            loop {
                let notified = self.shared.sent.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if self.shared.sent_while_holding.load(Ordering::SeqCst) > 0 {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(timeout, wait).await.is_ok()
    }
}

async fn read_packet(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).await.ok()?;
    let n = usize::try_from(i32::from_be_bytes(len)).ok()?;
    if !(8..=MAX_FRAME).contains(&n) {
        return None;
    }
    let mut packet = len.to_vec();
    packet.resize(n, 0);
    s.read_exact(&mut packet[4..]).await.ok()?;
    Some(packet)
}

/// The `application_name` in a StartupMessage, if any.
fn application_name(packet: &[u8]) -> Option<String> {
    let mut fields = packet.get(8..)?.split(|b| *b == 0);
    while let Some(k) = fields.next() {
        let v = fields.next()?;
        if k == b"application_name" {
            return Some(String::from_utf8_lossy(v).into_owned());
        }
    }
    None
}

async fn relay(mut client: TcpStream, upstream: SocketAddr, shared: Arc<Shared>) {
    let _ = client.set_nodelay(true);
    let Some(first) = read_packet(&mut client).await else {
        return;
    };
    let code = first
        .get(4..8)
        .map(|c| i32::from_be_bytes([c[0], c[1], c[2], c[3]]));
    if code == Some(CANCEL_REQUEST_CODE) {
        let delay = *shared.cancel_delay.lock().unwrap();
        tokio::time::sleep(delay).await;
        shared.cancels.fetch_add(1, Ordering::SeqCst);
    }
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = server.set_nodelay(true);
    if server.write_all(&first).await.is_err() {
        return;
    }
    // Whether this connection is the one a hold is armed for (checked as frames pass: the
    // test arms the hold after the session connected).
    let name = application_name(&first);
    let is_target = {
        let shared = Arc::clone(&shared);
        move || name.is_some() && *shared.target.lock().unwrap() == name
    };
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let up = {
        let shared = Arc::clone(&shared);
        let is_target = is_target.clone();
        async move {
            let mut buf = vec![0u8; 16 * 1024];
            while let Ok(n) = cr.read(&mut buf).await {
                if n > 0 && is_target() {
                    let delay = *shared.up_delay.lock().unwrap();
                    tokio::time::sleep(delay).await;
                }
                if n == 0 || sw.write_all(&buf[..n]).await.is_err() {
                    break;
                }
                if shared.hold.load(Ordering::SeqCst) == HOLDING && is_target() {
                    shared
                        .sent_while_holding
                        .fetch_add(n as u64, Ordering::SeqCst);
                    shared.sent.notify_waiters();
                }
            }
            let _ = sw.shutdown().await;
        }
    };
    let down = async move {
        loop {
            // One tagged frame at a time, so the hold starts right after a ReadyForQuery.
            let mut head = [0u8; 5];
            if sr.read_exact(&mut head).await.is_err() {
                break;
            }
            let len = i32::from_be_bytes([head[1], head[2], head[3], head[4]]);
            let Some(len) = usize::try_from(len)
                .ok()
                .filter(|l| (4..=MAX_FRAME).contains(l))
            else {
                break;
            };
            let mut frame = head.to_vec();
            frame.resize(len + 1, 0);
            if sr.read_exact(&mut frame[5..]).await.is_err() {
                break;
            }
            if is_target() {
                loop {
                    let released = shared.released.notified();
                    tokio::pin!(released);
                    released.as_mut().enable();
                    if shared.hold.load(Ordering::SeqCst) != HOLDING {
                        break;
                    }
                    released.await;
                }
            }
            if cw.write_all(&frame).await.is_err() {
                break;
            }
            if head[0] == b'Z' && is_target() {
                let _ = shared.hold.compare_exchange(
                    ARMED,
                    HOLDING,
                    Ordering::SeqCst,
                    Ordering::SeqCst,
                );
            }
        }
        let _ = cw.shutdown().await;
    };
    tokio::join!(up, down);
}
