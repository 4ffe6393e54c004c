//! Where `auspex events` connects: the agent's Unix socket, or TCP in
//! clear text or over TLS (mutual with a client certificate).

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context};
use rustls::ClientConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tonic::transport::{Channel, Endpoint};

use crate::cli::EventsArgs;
use crate::server::tls::certificates;

trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

pub enum Target {
    Unix(PathBuf),
    Tcp {
        authority: String,
        tls: Option<(Arc<ClientConfig>, ServerName<'static>)>,
    },
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Unix(path) => write!(f, "unix:{}", path.display()),
            Target::Tcp {
                authority,
                tls: None,
            } => write!(f, "http://{authority}"),
            Target::Tcp { authority, .. } => write!(f, "https://{authority}"),
        }
    }
}

impl Target {
    pub fn parse(args: &EventsArgs) -> anyhow::Result<Target> {
        let address = args.address.as_str();
        if let Some(path) = address.strip_prefix("unix:") {
            if args.tls_ca.is_some() {
                bail!("--tls-ca is for TCP addresses: a Unix socket's access is its file mode");
            }
            return Ok(Target::Unix(path.into()));
        }
        let (authority, https) = match address.split_once("://") {
            Some(("https", rest)) => (rest, true),
            Some(("http", rest)) => (rest, false),
            Some((scheme, _)) => {
                bail!("--address {address}: unknown scheme {scheme} (unix:, http://, https://)")
            }
            None => (address, args.tls_ca.is_some()),
        };
        let authority = authority.trim_end_matches('/').to_string();
        if !authority.contains(':') {
            bail!("--address {address}: no port (example: 127.0.0.1:50051)");
        }
        let tls = match https {
            false => None,
            true => Some(client_tls(args, &authority)?),
        };
        Ok(Target::Tcp { authority, tls })
    }

    /// Connects; a certificate refused (ours by the agent, or the agent's
    /// by us) is fatal, anything else worth retrying.
    pub(super) async fn connect(&self) -> Result<Channel, super::Failure> {
        let endpoint = Endpoint::from_static("http://localhost");
        let channel = match self {
            Target::Unix(path) => {
                let path = path.clone();
                endpoint
                    .connect_with_connector(tower::service_fn(move |_| {
                        let path = path.clone();
                        async move {
                            let s = tokio::net::UnixStream::connect(path).await?;
                            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                                Box::new(s) as Box<dyn Io>
                            ))
                        }
                    }))
                    .await
            }
            Target::Tcp { authority, tls } => {
                let authority = authority.clone();
                let tls = tls.clone();
                endpoint
                    .connect_with_connector(tower::service_fn(move |_| {
                        let (authority, tls) = (authority.clone(), tls.clone());
                        async move {
                            let tcp = tokio::net::TcpStream::connect(&authority).await?;
                            tcp.set_nodelay(true)?;
                            let io: Box<dyn Io> = match tls {
                                None => Box::new(tcp),
                                Some((config, name)) => Box::new(
                                    tokio_rustls::TlsConnector::from(config)
                                        .connect(name, tcp)
                                        .await?,
                                ),
                            };
                            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(io))
                        }
                    }))
                    .await
            }
        };
        channel.map_err(|e| {
            // tonic's error says only "transport error": the cause is below.
            let mut text = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                let cause = s.to_string();
                if !text.contains(&cause) {
                    text = format!("{text}: {cause}");
                }
                source = s.source();
            }
            match refused_certificate(&e) {
                Some(why) => super::Failure::Fatal(anyhow::anyhow!(
                    "{self}: a certificate was refused ({why}): {text}"
                )),
                None => super::Failure::Retry(text),
            }
        })
    }
}

/// The rustls error below `e`, if it says a certificate was refused: ours
/// by the agent (an alert), or the agent's by us. Retrying cannot help.
pub(super) fn refused_certificate(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    use rustls::AlertDescription as A;
    const ALERTS: [A; 8] = [
        A::BadCertificate,
        A::UnsupportedCertificate,
        A::CertificateRevoked,
        A::CertificateExpired,
        A::CertificateUnknown,
        A::UnknownCA,
        A::CertificateRequired,
        A::AccessDenied,
    ];
    let mut next = Some(e);
    while let Some(e) = next {
        // io::Error's source() skips the error it wraps: look inside.
        let inner = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .map(|inner| inner as &(dyn std::error::Error + 'static));
        for candidate in [Some(e), inner].into_iter().flatten() {
            if let Some(tls) = candidate.downcast_ref::<rustls::Error>() {
                let refused = match tls {
                    rustls::Error::InvalidCertificate(_)
                    | rustls::Error::NoCertificatesPresented
                    | rustls::Error::InvalidCertRevocationList(_) => true,
                    rustls::Error::AlertReceived(alert) => ALERTS.contains(alert),
                    _ => false,
                };
                return refused.then(|| tls.to_string());
            }
        }
        // An alert that came after our side of the handshake (TLS 1.3: the
        // agent refusing our certificate) reaches the call through h2,
        // which keeps only the io::Error's text: rustls' own wording.
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            let text = io.to_string();
            if ALERTS
                .iter()
                .any(|a| text == format!("received fatal alert: {a:?}"))
            {
                return Some(text);
            }
        }
        next = e.source();
    }
    None
}

fn client_tls(
    args: &EventsArgs,
    authority: &str,
) -> anyhow::Result<(Arc<ClientConfig>, ServerName<'static>)> {
    let Some(ca) = &args.tls_ca else {
        bail!("https needs --tls-ca: the CA that signed the agent's certificate");
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in certificates(ca, "--tls-ca")? {
        roots
            .add(cert)
            .with_context(|| format!("--tls-ca {}", ca.display()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let mut config = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            let certs = certificates(cert, "--tls-cert")?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| anyhow::anyhow!("--tls-key {}: {e}", key.display()))?;
            builder.with_client_auth_cert(certs, key)?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => bail!("--tls-cert and --tls-key go together"),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    let host = match &args.tls_server_name {
        Some(name) => name.clone(),
        None => {
            let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h);
            host.trim_start_matches('[')
                .trim_end_matches(']')
                .to_string()
        }
    };
    let name = ServerName::try_from(host.clone())
        .with_context(|| format!("{host:?} is not a server name"))?;
    Ok((Arc::new(config), name))
}
