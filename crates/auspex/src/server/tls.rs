//! TLS for the TCP listeners (rustls with ring), mutual when a client CA is
//! given, and the certificates re-read when they change on disk: a
//! Kubernetes Secret or cert-manager rotates them in place (the mounted
//! files are swapped under a symlink), and an agent that kept the old ones
//! would serve an expired certificate until restarted.
//!
//! Each handshake looks at the files' metadata at most once a second; on a
//! change they are read again and the next handshakes use them, while a
//! change that does not parse (a half-written file) keeps the last good
//! ones, with a warning.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// How often the files' metadata is looked at, at most.
const RECHECK: Duration = Duration::from_secs(1);

/// The files of one listener's TLS, with the flags that named them.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
    /// The flags' prefix, for messages: `--grpc-tls`, `--http-tls`.
    pub flags: &'static str,
}

impl TlsFiles {
    fn paths(&self) -> impl Iterator<Item = &Path> {
        [Some(&self.cert), Some(&self.key), self.client_ca.as_ref()]
            .into_iter()
            .flatten()
            .map(PathBuf::as_path)
    }
}

/// What identifies a version of a file: a rotation changes one of these.
type Stamp = Option<(SystemTime, u64, u64)>;

fn stamp(path: &Path) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.ino(), m.len()))
}

struct Current {
    acceptor: TlsAcceptor,
    stamps: Vec<Stamp>,
    checked: Instant,
}

pub struct Tls {
    files: TlsFiles,
    current: Mutex<Current>,
}

impl Tls {
    /// Reads the files now: an error names the flag and the file.
    pub fn load(files: TlsFiles) -> anyhow::Result<Arc<Tls>> {
        let stamps = files.paths().map(stamp).collect();
        let config = build(&files)?;
        Ok(Arc::new(Tls {
            current: Mutex::new(Current {
                acceptor: TlsAcceptor::from(Arc::new(config)),
                stamps,
                checked: Instant::now(),
            }),
            files,
        }))
    }

    /// Whether clients need a certificate.
    pub fn mutual(&self) -> bool {
        self.files.client_ca.is_some()
    }

    /// The acceptor for the next handshake, with the files as they are now.
    pub fn acceptor(&self) -> TlsAcceptor {
        let mut current = self.current.lock().unwrap();
        if current.checked.elapsed() >= RECHECK {
            current.checked = Instant::now();
            let stamps: Vec<Stamp> = self.files.paths().map(stamp).collect();
            if stamps != current.stamps {
                match build(&self.files) {
                    Ok(config) => {
                        tracing::info!(
                            "{}-cert: read {} again: it changed",
                            self.files.flags,
                            self.files.cert.display()
                        );
                        current.acceptor = TlsAcceptor::from(Arc::new(config));
                        current.stamps = stamps;
                    }
                    // Retried at the next check; meanwhile the last good
                    // certificate serves.
                    Err(e) => tracing::warn!("{e:#}: keeping the certificate read before"),
                }
            }
        }
        current.acceptor.clone()
    }
}

pub fn certificates(path: &Path, flag: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("{flag} {}", path.display()))?;
    if certs.is_empty() {
        bail!("{flag} {}: no PEM certificate in it", path.display());
    }
    Ok(certs)
}

fn build(files: &TlsFiles) -> anyhow::Result<ServerConfig> {
    let flags = files.flags;
    let certs = certificates(&files.cert, &format!("{flags}-cert"))?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("{flags}-key {}", files.key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()?;
    let builder = match &files.client_ca {
        Some(ca) => {
            let flag = format!("{flags}-client-ca");
            let mut roots = RootCertStore::empty();
            for cert in certificates(ca, &flag)? {
                roots
                    .add(cert)
                    .with_context(|| format!("{flag} {}", ca.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .with_context(|| format!("{flag} {}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(certs, key).with_context(|| {
        format!(
            "{flags}-cert {} and {flags}-key {}",
            files.cert.display(),
            files.key.display()
        )
    })?;
    // gRPC needs HTTP/2 negotiated; HTTP clients may take either.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// One API's TLS options, as given.
pub struct TlsOptions<'a> {
    /// `grpc` or `http`: the flags are `--{api}-tls-cert`, ...
    pub api: &'static str,
    /// The flag of its address, and the address.
    pub listen_flag: &'static str,
    pub endpoints: &'a [crate::config::values::Endpoint],
    pub cert: Option<&'a Path>,
    pub key: Option<&'a Path>,
    pub client_ca: Option<&'a Path>,
    pub insecure: bool,
}

/// The API's TLS, read now; or an error when the options do not go
/// together, or when a TCP address other than loopback would be served
/// in clear text without the insecure option (issue 18: anyone on the
/// network could read every process's argv).
pub fn from_options(o: TlsOptions<'_>) -> anyhow::Result<Option<Arc<Tls>>> {
    use crate::config::values::Endpoint;
    let api = o.api;
    let (cert, key) = match (o.cert, o.key) {
        (Some(cert), Some(key)) => (cert, key),
        (Some(_), None) => bail!("--{api}-tls-cert needs --{api}-tls-key"),
        (None, Some(_)) => bail!("--{api}-tls-key needs --{api}-tls-cert"),
        (None, None) => {
            if o.client_ca.is_some() {
                bail!("--{api}-tls-client-ca needs --{api}-tls-cert and --{api}-tls-key");
            }
            let exposed = o.endpoints.iter().find_map(|e| match e {
                Endpoint::Tcp(addr) if !addr.ip().is_loopback() => Some(addr),
                _ => None,
            });
            if let (Some(addr), false) = (exposed, o.insecure) {
                bail!(
                    "{} {addr} is not a loopback address: give --{api}-tls-cert and \
                     --{api}-tls-key to serve it over TLS, or --{api}-insecure to serve it in \
                     clear text",
                    o.listen_flag
                );
            }
            return Ok(None);
        }
    };
    let flags = match api {
        "grpc" => "--grpc-tls",
        _ => "--http-tls",
    };
    Tls::load(TlsFiles {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        client_ca: o.client_ca.map(Path::to_path_buf),
        flags,
    })
    .map(Some)
}
