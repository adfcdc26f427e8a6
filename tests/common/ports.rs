//! Free-port selection for spawned servers: ask the kernel for an ephemeral port on
//! 127.0.0.1 and hand the number to the server (callers retry if it was taken meanwhile).

use std::net::TcpListener;

/// Returns a port that was free on 127.0.0.1 a moment ago.
///
/// The listener is dropped before the port is used, so another process can grab it in
/// between; every caller therefore retries with a new port when the server cannot bind.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0 to pick a free port");
    listener
        .local_addr()
        .expect("local_addr of a bound listener")
        .port()
}
