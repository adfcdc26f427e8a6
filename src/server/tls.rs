//! Client-leg TLS: loads the configured PEM certificate chain and key into a rustls (ring)
//! server config that accepts both SSLRequest-negotiated TLS and PostgreSQL 17 direct TLS
//! (ALPN `postgresql`).

use std::sync::Arc;

use rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

use crate::config::TlsConfig;
use crate::context::ClientTls;
use crate::session::negotiate::ALPN_POSTGRESQL;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{0} holds no PEM certificate")]
    NoCert(String),
    #[error("{0} holds no PEM private key")]
    NoKey(String),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

pub fn acceptor(cfg: &TlsConfig) -> Result<ClientTls, TlsError> {
    let read = |p: &std::path::Path| {
        std::fs::read(p).map_err(|source| TlsError::Read {
            path: p.display().to_string(),
            source,
        })
    };
    let cert_pem = read(&cfg.cert)?;
    let key_pem = read(&cfg.key)?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .filter_map(Result::ok)
        .collect();
    let leaf_der = certs
        .first()
        .map(|c| c.as_ref().to_vec())
        .ok_or_else(|| TlsError::NoCert(cfg.cert.display().to_string()))?;
    let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .ok()
        .flatten()
        .ok_or_else(|| TlsError::NoKey(cfg.key.display().to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    // Clients without ALPN (SSLRequest path, older libpq) still connect; direct TLS is checked
    // for ALPN after the handshake.
    config.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
    Ok(ClientTls {
        acceptor: TlsAcceptor::from(Arc::new(config)),
        leaf_der,
    })
}
