//! TLS towards the upstream per libpq's `sslmode` semantics: `prefer`/`require` encrypt without
//! verifying (unless `require` has an `sslrootcert`, which libpq treats as `verify-ca`),
//! `verify-ca` checks the chain only, `verify-full` checks chain and host name.

use std::path::Path;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, Error, RootCertStore, SignatureScheme,
};

use crate::config::{SslMode, UpstreamTarget};

#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("cannot read sslrootcert {path}: {source}")]
    RootCert {
        path: String,
        source: std::io::Error,
    },
    #[error("sslrootcert {0} holds no usable certificate")]
    NoRoots(String),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The rustls client config for `target`, or `None` when TLS is never attempted.
pub fn client_config(target: &UpstreamTarget) -> Result<Option<Arc<ClientConfig>>, TlsSetupError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verify = match target.sslmode {
        SslMode::Disable | SslMode::Allow => return Ok(None),
        SslMode::Prefer => Verify::Nothing,
        SslMode::Require if target.sslrootcert.is_some() => Verify::Chain,
        SslMode::Require => Verify::Nothing,
        SslMode::VerifyCa => Verify::Chain,
        SslMode::VerifyFull => Verify::Full,
    };
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let verifier: Arc<dyn ServerCertVerifier> = match verify {
        Verify::Nothing => Arc::new(NoVerification(provider)),
        Verify::Chain | Verify::Full => {
            let roots = Arc::new(roots(target.sslrootcert.as_deref())?);
            let inner = WebPkiServerVerifier::builder_with_provider(roots, provider)
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
            if matches!(verify, Verify::Full) {
                inner
            } else {
                Arc::new(ChainOnly(inner))
            }
        }
    };
    let mut config = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(Some(Arc::new(config)))
}

enum Verify {
    Nothing,
    Chain,
    Full,
}

fn roots(path: Option<&Path>) -> Result<RootCertStore, TlsSetupError> {
    let mut store = RootCertStore::empty();
    match path {
        None => store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        Some(p) => {
            let shown = p.display().to_string();
            let pem = std::fs::read(p).map_err(|source| TlsSetupError::RootCert {
                path: shown.clone(),
                source,
            })?;
            for cert in rustls_pemfile::certs(&mut pem.as_slice()).flatten() {
                // A bad certificate among several is skipped, like libpq's loader.
                let _ = store.add(cert);
            }
            if store.is_empty() {
                return Err(TlsSetupError::NoRoots(shown));
            }
        }
    }
    Ok(store)
}

/// `sslmode=prefer/require`: encryption without authentication of the server, as libpq.
/// Handshake signatures are still checked so the session keys belong to the presented cert.
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `sslmode=verify-ca`: the chain must lead to a trusted root; the host name is not checked.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}
