//! Test certificates: a throwaway CA and server certificates it signs (for 127.0.0.1
//! and localhost), written as PEM files, plus a rustls client connector trusting the CA.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::CertificateDer;

/// A CA generated for one test, with its certificate written to `ca_pem_path()`.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    ca_der: CertificateDer<'static>,
    ca_pem_path: PathBuf,
}

/// A server certificate and key, as PEM files.
#[derive(Debug, Clone)]
pub struct ServerCert {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
}

impl TestCa {
    /// Generates a CA and writes its certificate to `dir/ca.crt`.
    pub fn new(dir: &Path) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "pgmemo test CA");
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
        ];
        let key = KeyPair::generate().expect("generate CA key");
        let cert = params.self_signed(&key).expect("self-sign CA");
        let ca_pem_path = dir.join("ca.crt");
        std::fs::write(&ca_pem_path, cert.pem()).expect("write ca.crt");
        TestCa {
            issuer: Issuer::new(params, key),
            ca_der: cert.der().clone(),
            ca_pem_path,
        }
    }

    /// Path of the CA certificate (PEM), for clients that verify the server.
    pub fn ca_pem_path(&self) -> &Path {
        &self.ca_pem_path
    }

    /// Issues a server certificate for 127.0.0.1 and localhost, written to
    /// `dir/{name}.crt` and `dir/{name}.key` (key mode 0600, as Postgres demands).
    pub fn issue_server_cert(&self, dir: &Path, name: &str) -> ServerCert {
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
                .expect("server cert params");
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().expect("generate server key");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("sign server cert");
        let cert_path = dir.join(format!("{name}.crt"));
        let key_path = dir.join(format!("{name}.key"));
        std::fs::write(&cert_path, cert.pem()).expect("write server cert");
        std::fs::write(&key_path, key.serialize_pem()).expect("write server key");
        set_mode(&key_path, 0o600);
        ServerCert {
            cert_path,
            key_path,
        }
    }

    /// A rustls client config that trusts only this CA.
    pub fn client_config(&self) -> rustls::ClientConfig {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(self.ca_der.clone())
            .expect("add test CA to root store");
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("rustls protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth()
    }

    /// A tokio-postgres TLS connector that trusts only this CA.
    pub fn make_tls_connect(&self) -> tokio_postgres_rustls::MakeRustlsConnect {
        tokio_postgres_rustls::MakeRustlsConnect::new(self.client_config())
    }
}

pub fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {mode:o} {}: {e}", path.display()));
}
