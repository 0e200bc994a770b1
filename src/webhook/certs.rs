//! The serving certificate: read from PEM files, swapped in whole when the files change
//! (cert-manager renews into the Secret; the kubelet replaces the mounted files with a
//! `..data` symlink swap), and a self-signed CA for clusters without cert-manager.
//!
//! Each TLS handshake asks the resolver for the current key, so a swap never touches a
//! connection in flight: old connections finish on the old certificate, new ones get the new.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("--tls-cert {0}: cannot read: {1}")]
    ReadCert(PathBuf, std::io::Error),
    #[error("--tls-key {0}: cannot read: {1}")]
    ReadKey(PathBuf, std::io::Error),
    #[error("--tls-cert {0}: no PEM certificate in the file")]
    NoCert(PathBuf),
    #[error("--tls-cert {0}: bad PEM: {1}")]
    BadCert(PathBuf, String),
    #[error("--tls-key {0}: no usable PEM private key (PKCS#8, PKCS#1 or SEC1): {1}")]
    BadKey(PathBuf, String),
    #[error("--tls-key {key} does not belong to the certificate in --tls-cert {cert}: {reason}")]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
}

/// The file contents a key was built from, to notice a change without parsing again.
#[derive(PartialEq, Eq, Debug)]
struct Source {
    cert: Vec<u8>,
    key: Vec<u8>,
}

fn read(cert_path: &Path, key_path: &Path) -> Result<Source, CertError> {
    Ok(Source {
        cert: std::fs::read(cert_path).map_err(|e| CertError::ReadCert(cert_path.to_owned(), e))?,
        key: std::fs::read(key_path).map_err(|e| CertError::ReadKey(key_path.to_owned(), e))?,
    })
}

fn parse(src: &Source, cert_path: &Path, key_path: &Path) -> Result<CertifiedKey, CertError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&src.cert)
        .collect::<Result<_, _>>()
        .map_err(|e| CertError::BadCert(cert_path.to_owned(), e.to_string()))?;
    if certs.is_empty() {
        return Err(CertError::NoCert(cert_path.to_owned()));
    }
    let key = PrivateKeyDer::from_pem_slice(&src.key)
        .map_err(|e| CertError::BadKey(key_path.to_owned(), e.to_string()))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| CertError::BadKey(key_path.to_owned(), e.to_string()))?;
    let certified = CertifiedKey::new(certs, signing);
    // A rotation writes the two files one after the other: never pair a new certificate
    // with the old key.
    certified.keys_match().map_err(|e| CertError::Mismatch {
        cert: cert_path.to_owned(),
        key: key_path.to_owned(),
        reason: e.to_string(),
    })?;
    Ok(certified)
}

/// The current certificate and key, for every new TLS handshake.
#[derive(Debug)]
pub struct Reloading {
    current: ArcSwap<CertifiedKey>,
    /// What `current` was built from: the baseline the watcher compares the files with (not
    /// what they hold when it starts, which may already be a change).
    loaded: std::sync::Mutex<Option<Source>>,
    cert_path: PathBuf,
    key_path: PathBuf,
}

impl ResolvesServerCert for Reloading {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

impl Reloading {
    /// Loads the pair; an error names the file.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Arc<Reloading>, CertError> {
        let src = read(cert_path, key_path)?;
        let key = parse(&src, cert_path, key_path)?;
        Ok(Arc::new(Reloading {
            current: ArcSwap::from_pointee(key),
            loaded: std::sync::Mutex::new(Some(src)),
            cert_path: cert_path.to_owned(),
            key_path: key_path.to_owned(),
        }))
    }

    /// The leaf certificate now served (DER).
    pub fn leaf(&self) -> Option<CertificateDer<'static>> {
        self.current.load().cert.first().cloned()
    }

    /// Polls both files every `interval` and swaps in a changed, valid pair; a broken or
    /// half-written pair is logged (once per distinct error) and the served one stays.
    /// `on_reload(ok)` counts the attempts.
    pub async fn watch(
        self: Arc<Self>,
        interval: Duration,
        on_reload: impl Fn(bool) + Send + 'static,
        cancel: CancellationToken,
    ) {
        // Polling rather than inotify: Secret volumes change by symlink swaps of the parent
        // directory, and reading two small files each interval catches every kind of update.
        let mut last = self.loaded.lock().unwrap_or_else(|e| e.into_inner()).take();
        let mut last_error: Option<String> = None;
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = ticker.tick() => {}
            }
            let result = read(&self.cert_path, &self.key_path).and_then(|src| {
                if last.as_ref() == Some(&src) {
                    return Ok(None);
                }
                let key = parse(&src, &self.cert_path, &self.key_path)?;
                Ok(Some((src, key)))
            });
            match result {
                Ok(None) => tracing::trace!("webhook: certificate files unchanged"),
                Ok(Some((src, key))) => {
                    self.current.store(Arc::new(key));
                    last = Some(src);
                    last_error = None;
                    on_reload(true);
                    tracing::info!(
                        cert = %self.cert_path.display(),
                        "webhook: serving the renewed certificate"
                    );
                }
                Err(e) => {
                    let text = e.to_string();
                    if last_error.as_deref() != Some(&text) {
                        on_reload(false);
                        tracing::warn!("webhook: keeping the current certificate: {text}");
                        last_error = Some(text);
                    }
                }
            }
        }
    }
}

/// A self-signed CA and a serving certificate for `<service>.<namespace>.svc`, for clusters
/// without cert-manager. Returns (ca.crt, tls.crt, tls.key) in PEM.
pub fn self_signed(
    service: &str,
    namespace: &str,
    extra_names: &[String],
    days: u32,
) -> Result<(String, String, String), rcgen::Error> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let now = time_now();
    let until = now + Duration::from_secs(u64::from(days) * 86_400);
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.distinguished_name.push(
        DnType::CommonName,
        format!("clusterdns webhook CA ({namespace})"),
    );
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.not_before = now.into();
    ca.not_after = until.into();
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);

    let mut names = vec![
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
        format!("{service}.{namespace}"),
        service.to_string(),
    ];
    names.extend(extra_names.iter().cloned());
    let mut leaf = CertificateParams::new(names)?;
    leaf.distinguished_name
        .push(DnType::CommonName, format!("{service}.{namespace}.svc"));
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    leaf.not_before = now.into();
    leaf.not_after = until.into();
    let leaf_key = KeyPair::generate()?;
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer)?;
    Ok((ca_cert.pem(), leaf_cert.pem(), leaf_key.serialize_pem()))
}

fn time_now() -> std::time::SystemTime {
    // A minute back: clocks of the API server and the webhook are rarely exactly in step.
    std::time::SystemTime::now() - Duration::from_secs(60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_pair_loads_and_a_mismatch_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let (_, cert, key) = self_signed("wh", "ns", &[], 1).unwrap();
        let (_, cert2, _) = self_signed("wh", "ns", &[], 1).unwrap();
        let (c, k) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        std::fs::write(&c, cert).unwrap();
        std::fs::write(&k, &key).unwrap();
        assert!(Reloading::load(&c, &k).is_ok());
        std::fs::write(&c, cert2).unwrap();
        let e = Reloading::load(&c, &k).unwrap_err().to_string();
        assert!(e.contains("does not belong"), "{e}");
        std::fs::write(&c, "garbage").unwrap();
        let e = Reloading::load(&c, &k).unwrap_err().to_string();
        assert!(e.contains("tls.crt"), "{e}");
        let e = Reloading::load(&dir.path().join("nope"), &k)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("--tls-cert ") && e.contains("nope"), "{e}");
    }

    #[tokio::test]
    async fn watch_swaps_in_a_renewed_pair_only_when_it_matches() {
        let dir = tempfile::tempdir().unwrap();
        let (_, cert, key) = self_signed("wh", "ns", &[], 1).unwrap();
        let (c, k) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        std::fs::write(&c, cert).unwrap();
        std::fs::write(&k, &key).unwrap();
        let r = Reloading::load(&c, &k).unwrap();
        let first = r.leaf().unwrap();
        let cancel = CancellationToken::new();
        let refused = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = refused.clone();
        let task = tokio::spawn(r.clone().watch(
            Duration::from_millis(10),
            move |ok| {
                if !ok {
                    counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            },
            cancel.clone(),
        ));
        let (_, cert2, key2) = self_signed("wh", "ns", &[], 1).unwrap();
        std::fs::write(&c, &cert2).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while refused.load(std::sync::atomic::Ordering::SeqCst) == 0 {
            assert!(std::time::Instant::now() < deadline, "mismatch not noticed");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(
            r.leaf().unwrap(),
            first,
            "a mismatched pair is never served"
        );
        std::fs::write(&k, &key2).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while r.leaf().unwrap() == first {
            assert!(std::time::Instant::now() < deadline, "not reloaded");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        cancel.cancel();
        task.await.unwrap();
    }
}
