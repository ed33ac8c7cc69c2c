//! SIP over TLS: the node's certificate (served to TLS clients, and presented to trunks
//! that ask for one), optional mutual TLS for inbound connections, the CAs trunks are
//! verified against, and reloading of the certificate files without a restart: a task
//! checks their modification times every `sip.tls.reload_seconds` and swaps in the new
//! pair when both load and the certificate is within its validity period; until then
//! (or if they do not) the old one keeps serving.

use prometheus_client::metrics::counter::Counter;
use rustls::client::ResolvesClientCert;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, SignatureScheme};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};
use tsunagu_config::SipTlsConfig;
use tsunagu_sip::TlsSetup;

/// The crypto provider of every TLS use of the node (ring: a smaller build than aws-lc).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The node's current certificate and key, swapped whole on reload.
#[derive(Debug)]
pub struct CertStore {
    cert_file: PathBuf,
    key_file: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
    stamp: RwLock<(Option<SystemTime>, Option<SystemTime>)>,
    /// Why the files as they are now could not be used (reported once; they are read
    /// again at every check until they can be).
    failed: RwLock<Option<String>>,
}

fn modified(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{what} {}: {e}", path.display()))
}

/// Loads a certificate chain and its private key (PEM).
pub fn load_pair(cert_file: &Path, key_file: &Path) -> Result<CertifiedKey, String> {
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(&read(cert_file, "cert_file")?)
            .collect::<Result<_, _>>()
            .map_err(|e| format!("cert_file {}: {e}", cert_file.display()))?;
    if certs.is_empty() {
        return Err(format!("cert_file {}: no certificate", cert_file.display()));
    }
    let key = PrivateKeyDer::from_pem_slice(&read(key_file, "key_file")?)
        .map_err(|e| format!("key_file {}: {e}", key_file.display()))?;
    let signer = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("key_file {}: {e}", key_file.display()))?;
    let pair = CertifiedKey::new(certs, signer);
    pair.keys_match().map_err(|e| {
        format!(
            "key_file {} does not match cert_file: {e}",
            key_file.display()
        )
    })?;
    Ok(pair)
}

/// Whether `leaf` is within its validity period at `now`: a reload to an expired or
/// not-yet-valid certificate (a backup copied back by mistake, a renewal dated ahead)
/// was taken, and every TLS peer that checks dates refused the node (a review). Asks
/// rustls's own checker, with the certificate as its own anchor: it checks the dates
/// before anything else, so only its date errors count (a leaf issued by a CA fails
/// this check for its issuer, which is not what is asked here).
fn in_date(leaf: &CertificateDer<'_>, now: rustls::pki_types::UnixTime) -> Result<(), String> {
    let (Ok(ee), Ok(anchor)) = (
        webpki::EndEntityCert::try_from(leaf),
        webpki::anchor_from_trusted_cert(leaf),
    ) else {
        return Ok(()); // not for this check to judge: the handshake's
    };
    let provider = provider();
    let anchors = [anchor];
    let verified = ee.verify_for_usage(
        provider.signature_verification_algorithms.all,
        &anchors,
        &[],
        now,
        webpki::KeyUsage::server_auth(),
        None,
        None,
    );
    match verified {
        Err(webpki::Error::CertExpired { .. }) => Err("the certificate has expired".into()),
        Err(webpki::Error::CertNotValidYet { .. }) => {
            Err("the certificate is not valid yet".into())
        }
        _ => Ok(()),
    }
}

fn roots(file: &Path, what: &str) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&read(file, what)?) {
        let cert = cert.map_err(|e| format!("{what} {}: {e}", file.display()))?;
        roots
            .add(cert)
            .map_err(|e| format!("{what} {}: {e}", file.display()))?;
    }
    if roots.is_empty() {
        return Err(format!("{what} {}: no certificate", file.display()));
    }
    Ok(roots)
}

/// Mozilla's roots and, if given, the CAs in a PEM file (`what` names it in errors).
pub fn trusted_roots(ca_file: Option<&Path>, what: &str) -> Result<RootCertStore, String> {
    let mut trusted = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(file) = ca_file {
        trusted.roots.extend(roots(file, what)?.roots);
    }
    Ok(trusted)
}

impl CertStore {
    fn load(cert_file: &Path, key_file: &Path) -> Result<CertStore, String> {
        let pair = load_pair(cert_file, key_file)?;
        if let Err(e) = in_date(&pair.cert[0], rustls::pki_types::UnixTime::now()) {
            // Served all the same at start (SIP over UDP and the rest of the node must
            // not stop for it); a reload to such a pair is refused.
            tracing::warn!("{e}: TLS peers that check it will refuse it");
        }
        Ok(CertStore {
            cert_file: cert_file.to_path_buf(),
            key_file: key_file.to_path_buf(),
            current: RwLock::new(Arc::new(pair)),
            stamp: RwLock::new((modified(cert_file), modified(key_file))),
            failed: RwLock::new(None),
        })
    }

    fn current(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Re-reads the files if either changed, or if they could not be used when they
    /// last changed: Ok(true) when a new pair is in use; an error once per reason. A
    /// pair that failed once (a key file the node could not read yet) was not tried
    /// again until a file's modification time changed, which `chown` and `chmod` do not
    /// change: the old pair stayed in use until a restart (a review).
    pub fn reload_if_changed(&self) -> Result<bool, String> {
        self.reload_at(rustls::pki_types::UnixTime::now())
    }

    /// [`CertStore::reload_if_changed`] with the time to judge the certificate's
    /// validity period at.
    fn reload_at(&self, at: rustls::pki_types::UnixTime) -> Result<bool, String> {
        let now = (modified(&self.cert_file), modified(&self.key_file));
        let changed = *self.stamp.read().unwrap_or_else(|p| p.into_inner()) != now;
        let failing = self
            .failed
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if !changed && failing.is_none() {
            return Ok(false);
        }
        *self.stamp.write().unwrap_or_else(|p| p.into_inner()) = now;
        let loaded = load_pair(&self.cert_file, &self.key_file)
            .and_then(|pair| in_date(&pair.cert[0], at).map(|()| pair));
        match loaded {
            Ok(pair) => {
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(pair);
                *self.failed.write().unwrap_or_else(|p| p.into_inner()) = None;
                Ok(true)
            }
            Err(e) => {
                *self.failed.write().unwrap_or_else(|p| p.into_inner()) = Some(e.clone());
                if !changed && failing.as_deref() == Some(e.as_str()) {
                    return Ok(false); // reported already
                }
                Err(e)
            }
        }
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

impl ResolvesClientCert for CertStore {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Builds the acceptor and connector of `[sip.tls]`.
pub fn setup(cfg: &SipTlsConfig) -> Result<(TlsSetup, Arc<CertStore>), String> {
    let store = Arc::new(CertStore::load(&cfg.cert_file, &cfg.key_file)?);
    let versions = |e: rustls::Error| e.to_string();
    let server = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(versions)?;
    let server = match &cfg.client_ca_file {
        Some(file) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots(file, "client_ca_file")?),
                provider(),
            )
            .build()
            .map_err(|e| format!("client_ca_file {}: {e}", file.display()))?;
            server.with_client_cert_verifier(verifier)
        }
        None => server.with_no_client_auth(),
    }
    .with_cert_resolver(store.clone());
    let trunk_roots = trusted_roots(cfg.ca_file.as_deref(), "ca_file")?;
    let client = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(versions)?
        .with_root_certificates(trunk_roots)
        .with_client_cert_resolver(store.clone());
    Ok((
        TlsSetup {
            acceptor: Some(tokio_rustls::TlsAcceptor::from(Arc::new(server))),
            connector: Some(tokio_rustls::TlsConnector::from(Arc::new(client))),
        },
        store,
    ))
}

/// Checks the certificate files every `every` and swaps in changed ones.
pub fn spawn_reloader(store: Arc<CertStore>, every: Duration, ok: Counter, failed: Counter) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tick.tick().await;
            let s = store.clone();
            match tokio::task::spawn_blocking(move || s.reload_if_changed()).await {
                Ok(Ok(true)) => {
                    ok.inc();
                    tracing::info!(cert_file = %store.cert_file.display(), "TLS certificate reloaded");
                }
                Ok(Ok(false)) => {}
                Ok(Err(e)) => {
                    failed.inc();
                    tracing::warn!(%e, "TLS certificate reload failed; the previous one stays in use");
                }
                Err(e) => tracing::error!(%e, "TLS reload task failed"),
            }
        }
    });
}

/// Mutual TLS between cluster nodes (`[cluster.tls]`): the node's certificate, served
/// and presented; only the cluster's CA is trusted, both ways (never Mozilla's roots: a
/// certificate any public CA signed must not make a node).
pub fn cluster(
    cfg: &tsunagu_config::ClusterTlsConfig,
) -> Result<(tokio_rustls::TlsAcceptor, tokio_rustls::TlsConnector), String> {
    let pair = Arc::new(load_pair(&cfg.cert_file, &cfg.key_file)?);
    let ca = Arc::new(roots(&cfg.ca_file, "ca_file")?);
    let versions = |e: rustls::Error| e.to_string();
    let verifier = WebPkiClientVerifier::builder_with_provider(ca.clone(), provider())
        .build()
        .map_err(|e| format!("ca_file {}: {e}", cfg.ca_file.display()))?;
    let server = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(versions)?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(FixedCert(pair.clone())));
    let client = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(versions)?
        .with_root_certificates(ca)
        .with_client_cert_resolver(Arc::new(FixedCert(pair)));
    Ok((
        tokio_rustls::TlsAcceptor::from(Arc::new(server)),
        tokio_rustls::TlsConnector::from(Arc::new(client)),
    ))
}

/// One certificate, as server and as client.
#[derive(Debug)]
struct FixedCert(Arc<CertifiedKey>);

impl ResolvesServerCert for FixedCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

impl ResolvesClientCert for FixedCert {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::UnixTime;

    /// A certificate and key made by openssl (EC P-256, self-signed, 30 days).
    fn make_pair(dir: &Path) -> (PathBuf, PathBuf) {
        let (cert, key) = (dir.join("node.pem"), dir.join("node.key"));
        let made = std::process::Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
            ])
            .args(["-nodes", "-days", "30", "-subj", "/CN=node", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .status()
            .expect("openssl (scripts/test.sh installs it)");
        assert!(made.success(), "openssl req");
        (cert, key)
    }

    /// A reload is refused while the certificate is outside its validity period
    /// (expired, or not valid yet), the pair in use kept; inside it, it is taken.
    #[test]
    fn a_reload_out_of_its_dates_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = make_pair(dir.path());
        let store = CertStore::load(&cert, &key).unwrap();
        let before = store.current();
        let after = |days: u64| {
            let now = UnixTime::now().as_secs();
            UnixTime::since_unix_epoch(Duration::from_secs(now + days * 86_400))
        };
        // The same files written again: their times change, a reload is due.
        std::fs::write(&cert, std::fs::read(&cert).unwrap()).unwrap();
        let expired = store.reload_at(after(31));
        assert!(
            expired.as_ref().is_err_and(|e| e.contains("expired")),
            "{expired:?}"
        );
        assert!(
            Arc::ptr_eq(&store.current(), &before),
            "the pair in use kept"
        );
        let early = store.reload_at(UnixTime::since_unix_epoch(Duration::from_secs(1)));
        assert!(
            early.as_ref().is_err_and(|e| e.contains("not valid yet")),
            "{early:?}"
        );
        assert!(Arc::ptr_eq(&store.current(), &before));
        assert_eq!(store.reload_at(UnixTime::now()), Ok(true), "in date: taken");
        assert!(!Arc::ptr_eq(&store.current(), &before));
    }
}
