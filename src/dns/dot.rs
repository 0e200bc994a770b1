//! DNS over TLS (RFC 7858) to `forward`'s `tls://` upstreams: the client side of the
//! handshake, configured by `tls [CERT KEY] [CA]` and `tls_servername`. After the handshake
//! queries use TCP framing, so forward's TCP path (pool, `expire`, health checks) serves both.
//!
//! As in CoreDNS, one configuration is shared by every `tls://` upstream of a `forward`, and
//! the name verified is `tls_servername` or else the upstream's IP address (what Go's TLS
//! client does with an empty ServerName). Only the `ring` provider is used.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::corefile::UpstreamTls;

/// How to open TLS to the `tls://` upstreams of one `forward`.
#[derive(Clone)]
pub struct DotClient {
    connector: TlsConnector,
    /// `tls_servername`, if set.
    server_name: Option<ServerName<'static>>,
}

impl std::fmt::Debug for DotClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DotClient")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl DotClient {
    /// Reads the certificate files now, so that a bad file is a configuration error rather
    /// than a SERVFAIL for every query. Errors name the file and what is wrong with it.
    pub fn new(tls: Option<&UpstreamTls>, server_name: Option<&str>) -> Result<Self, String> {
        let none = UpstreamTls::default();
        let UpstreamTls { cert, key, ca } = tls.unwrap_or(&none);
        let server_name = server_name
            .map(|n| {
                ServerName::try_from(n.to_string())
                    .map_err(|e| format!("tls_servername '{n}' is not a valid server name: {e}"))
            })
            .transpose()?;
        if cert.is_some() != key.is_some() {
            return Err("a client certificate needs both CERT and KEY".into());
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS setup: {e}"))?
            .with_root_certificates(roots(ca.as_deref())?);
        let config = match (cert, key) {
            (Some(cert), Some(key)) => builder
                .with_client_auth_cert(read_certs(cert)?, read_key(key)?)
                .map_err(|e| {
                    format!(
                        "client certificate {} with key {}: {e}",
                        cert.display(),
                        key.display()
                    )
                })?,
            _ => builder.with_no_client_auth(),
        };
        Ok(DotClient {
            connector: TlsConnector::from(Arc::new(config)),
            server_name,
        })
    }

    /// The name the upstream at `addr` must present a certificate for.
    pub fn server_name(&self, addr: SocketAddr) -> ServerName<'static> {
        self.server_name
            .clone()
            .unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()))
    }

    /// The TLS handshake on a connected socket, verifying the upstream's certificate.
    pub async fn handshake(
        &self,
        tcp: TcpStream,
        addr: SocketAddr,
    ) -> std::io::Result<TlsStream<TcpStream>> {
        self.connector.connect(self.server_name(addr), tcp).await
    }
}

fn roots(ca: Option<&Path>) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    match ca {
        Some(path) => {
            let (added, _) = roots.add_parsable_certificates(read_certs(path)?);
            if added == 0 {
                return Err(format!(
                    "{}: no usable CA certificate in the file",
                    path.display()
                ));
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                let why = found
                    .errors
                    .first()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default();
                return Err(format!(
                    "no CA file given and no system root certificates found{why}; name one: tls CA"
                ));
            }
        }
    }
    Ok(roots)
}

fn read_file(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = read_file(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: bad PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{}: no PEM CERTIFICATE block in the file",
            path.display()
        ));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let pem = read_file(path)?;
    PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| format!("{}: no usable PEM private key: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_files_and_names_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let tls = |ca: &Path| UpstreamTls {
            ca: Some(ca.to_path_buf()),
            ..Default::default()
        };
        let e = DotClient::new(Some(&tls(&missing)), None).unwrap_err();
        assert!(
            e.contains("cannot read") && e.contains("missing.pem"),
            "{e}"
        );

        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate\n").unwrap();
        let e = DotClient::new(Some(&tls(&junk)), None).unwrap_err();
        assert!(e.contains("junk.pem") && e.contains("CERTIFICATE"), "{e}");

        let e = DotClient::new(None, Some("bad name!")).unwrap_err();
        assert!(e.contains("tls_servername 'bad name!'"), "{e}");

        let half = UpstreamTls {
            cert: Some(junk.clone()),
            ..Default::default()
        };
        let e = DotClient::new(Some(&half), None).unwrap_err();
        assert!(e.contains("both CERT and KEY"), "{e}");
    }
}
