//! A CA made for one test and a server certificate it issued: for the DNS-over-TLS tests
//! (through tests/dnsclient) and the fake API server's HTTPS.

/// A CA made for one test, a server certificate it issued, and the CA as a PEM file.
pub struct Pki {
    _dir: tempfile::TempDir,
    /// The CA certificate (PEM), for `tls CA`.
    pub ca: std::path::PathBuf,
    pub server: std::sync::Arc<rustls::ServerConfig>,
}

/// A CA and a server certificate for `names` (DNS names or IP addresses).
pub fn pki(names: &[&str]) -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "clusterdns test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let cert = CertificateParams::new(names)
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, ca_cert.pem()).unwrap();
    let key_der = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let server = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert.der().clone()], key_der)
    .unwrap();
    Pki {
        _dir: dir,
        ca,
        server: std::sync::Arc::new(server),
    }
}
