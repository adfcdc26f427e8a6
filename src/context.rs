//! AppContext: the services every session shares, passed explicitly (no globals). The live
//! config is swapped atomically on SIGHUP; the parts that cannot change at runtime (listen
//! addresses, TLS, upstream URL) are fixed here at start-up.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;
use tokio_rustls::TlsAcceptor;

use crate::config::Config;
use crate::session::cancel::CancelRegistry;
use crate::upstream::Upstream;

pub struct AppContext {
    config: ArcSwap<Config>,
    pub upstream: Upstream,
    /// Client-leg TLS, when `server.tls` is configured.
    pub tls: Option<ClientTls>,
    pub cancel_keys: Arc<CancelRegistry>,
    next_session_id: AtomicU64,
}

/// The acceptor and the DER of the leaf certificate pgmemo presents (for channel binding:
/// SCRAM-SHA-256-PLUS only works end to end when it equals the upstream's certificate).
pub struct ClientTls {
    pub acceptor: TlsAcceptor,
    pub leaf_der: Vec<u8>,
}

impl AppContext {
    pub fn new(config: Config, upstream: Upstream, tls: Option<ClientTls>) -> Self {
        Self {
            config: ArcSwap::from_pointee(config),
            upstream,
            tls,
            cancel_keys: Arc::new(CancelRegistry::default()),
            next_session_id: AtomicU64::new(1),
        }
    }

    /// The current configuration (cheap; a session reads it once at start).
    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    pub fn replace_config(&self, config: Config) {
        self.config.store(Arc::new(config));
    }

    pub fn next_session_id(&self) -> u64 {
        self.next_session_id.fetch_add(1, Ordering::Relaxed)
    }
}
