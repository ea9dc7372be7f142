//! Transport security: every node-to-node connection is mutual TLS with
//! certificates from the cluster root CA. This module builds the rustls
//! configurations, reads a peer's identity (CN = node id, OU = role,
//! O = cluster id) from its certificate, pins the CA by the join token's digest,
//! and carries TLS streams into tonic on both sides. It never decides what a
//! peer may do: that is the services' job, from the [`PeerInfo`] it attaches.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tonic::transport::{Channel, Endpoint};

use crate::model::Role;

/// The DNS name every manager certificate carries, and that clients verify.
pub const MANAGER_SERVER_NAME: &str = "shoal-manager";
/// Certificates are back-dated by this much against clock skew; a node's
/// renewal schedule counts its certificate's life from `not_before` + this.
pub const CERT_BACKDATE: Duration = Duration::from_secs(3600);
/// How long a TLS handshake may take before the connection is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("bad PEM in {what}: {reason}")]
    Pem { what: &'static str, reason: String },
    #[error("tls configuration: {0}")]
    Config(#[from] rustls::Error),
    #[error("client verifier: {0}")]
    Verifier(String),
    #[error("certificate: {0}")]
    Certificate(String),
}

/// The crypto provider used everywhere (ring, one provider only).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Who is on the other end of a connection, read from its verified certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub node_id: String,
    pub role: Role,
    pub cluster_id: String,
    /// Validity, unix milliseconds.
    pub not_before_ms: u64,
    pub not_after_ms: u64,
}

impl Identity {
    /// Reads CN/OU/O and the expiry from a DER certificate.
    pub fn from_der(der: &[u8]) -> Result<Identity, TlsError> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| TlsError::Certificate(format!("unparsable certificate: {e}")))?;
        let subject = cert.subject();
        let first = |it: &mut dyn Iterator<Item = &x509_parser::x509::AttributeTypeAndValue>| {
            it.next().and_then(|a| a.as_str().ok()).map(str::to_string)
        };
        let node_id = first(&mut subject.iter_common_name()).unwrap_or_default();
        let ou = first(&mut subject.iter_organizational_unit()).unwrap_or_default();
        let cluster_id = first(&mut subject.iter_organization()).unwrap_or_default();
        let role = ou
            .parse::<Role>()
            .map_err(|_| TlsError::Certificate(format!("certificate role (OU) {ou:?} is not manager or worker")))?;
        if node_id.is_empty() || cluster_id.is_empty() {
            return Err(TlsError::Certificate("certificate lacks a node id (CN) or cluster id (O)".into()));
        }
        let not_before_ms = (cert.validity().not_before.timestamp().max(0) as u64) * 1000;
        let not_after_ms = (cert.validity().not_after.timestamp().max(0) as u64) * 1000;
        Ok(Identity { node_id, role, cluster_id, not_before_ms, not_after_ms })
    }

    pub fn from_pem(pem: &str) -> Result<Identity, TlsError> {
        let der = first_cert(pem, "certificate")?;
        Identity::from_der(der.as_ref())
    }
}

/// PEM material of a node: the cluster CA, its certificate and its key.
#[derive(Clone)]
pub struct NodeCerts {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for NodeCerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodeCerts(..)")
    }
}

fn certs(pem: &str, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(pem.as_bytes()).collect();
    let certs = certs.map_err(|e| TlsError::Pem { what, reason: e.to_string() })?;
    if certs.is_empty() {
        return Err(TlsError::Pem { what, reason: "no certificate found".into() });
    }
    Ok(certs)
}

fn first_cert(pem: &str, what: &'static str) -> Result<CertificateDer<'static>, TlsError> {
    Ok(certs(pem, what)?.remove(0))
}

fn key(pem: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| TlsError::Pem { what: "private key", reason: e.to_string() })
}

fn roots(ca_pem: &str) -> Result<Arc<RootCertStore>, TlsError> {
    let mut store = RootCertStore::empty();
    for c in certs(ca_pem, "CA certificate")? {
        store.add(c)?;
    }
    Ok(Arc::new(store))
}

/// DER of the first certificate in a PEM bundle (the root CA).
pub fn ca_der(ca_pem: &str) -> Result<Vec<u8>, TlsError> {
    Ok(first_cert(ca_pem, "CA certificate")?.as_ref().to_vec())
}

impl NodeCerts {
    /// A manager's server side. Client certificates are verified when given but
    /// optional, so joining nodes can reach the CA service; every other service
    /// requires a [`PeerInfo`] identity.
    pub fn server_config(&self) -> Result<ServerConfig, TlsError> {
        let provider = provider();
        let verifier = WebPkiClientVerifier::builder_with_provider(roots(&self.ca_pem)?, provider.clone())
            .allow_unauthenticated()
            .build()
            .map_err(|e| TlsError::Verifier(e.to_string()))?;
        let mut chain = certs(&self.cert_pem, "node certificate")?;
        chain.push(first_cert(&self.ca_pem, "CA certificate")?);
        let mut cfg = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key(&self.key_pem)?)?;
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        Ok(cfg)
    }

    /// A node calling a manager with its own certificate.
    pub fn client_config(&self) -> Result<ClientConfig, TlsError> {
        let mut cfg = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots(&self.ca_pem)?)
            .with_client_auth_cert(certs(&self.cert_pem, "node certificate")?, key(&self.key_pem)?)?;
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        Ok(cfg)
    }
}

/// A client for a node that holds no certificate yet: it trusts a manager only
/// if the manager's chain contains a CA whose SHA-256 equals `ca_digest` (from
/// the join token), and the manager's certificate verifies against that CA.
pub fn pinned_client_config(ca_digest: [u8; 32]) -> Result<ClientConfig, TlsError> {
    let provider = provider();
    let verifier = Arc::new(PinnedCa { digest: ca_digest, provider: provider.clone() });
    let mut cfg = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(cfg)
}

#[derive(Debug)]
struct PinnedCa {
    digest: [u8; 32],
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca =
            intermediates.iter().find(|c| crate::token::ca_digest(c.as_ref()) == self.digest).ok_or_else(|| {
                rustls::Error::General(
                    "the manager's CA does not match the join token's digest (wrong cluster, or an impostor)".into(),
                )
            })?;
        let mut store = RootCertStore::empty();
        store.add(ca.clone().into_owned())?;
        let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(store), self.provider.clone())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        inner.verify_server_cert(end_entity, &[], server_name, ocsp, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// Attached by the TLS acceptor to every request on a connection (tonic puts
/// the connection's info into the request extensions).
#[derive(Clone, Debug)]
pub struct PeerInfo {
    pub remote: Option<SocketAddr>,
    /// None: the peer presented no certificate (only the CA service accepts that).
    pub identity: Option<Identity>,
}

/// A connection that ended, reported by [`serve_tls`] so a manager can notice a
/// peer's death at once instead of waiting for timeouts.
#[derive(Clone, Debug)]
pub struct Disconnected {
    pub remote: Option<SocketAddr>,
    pub identity: Option<Identity>,
}

struct DropNotice {
    tx: mpsc::UnboundedSender<Disconnected>,
    event: Option<Disconnected>,
}

impl Drop for DropNotice {
    fn drop(&mut self) {
        if let Some(ev) = self.event.take() {
            let _ = self.tx.send(ev);
        }
    }
}

/// A server-side TLS stream that tonic serves, carrying the peer's identity.
pub struct PeerIo {
    inner: tokio_rustls::server::TlsStream<TcpStream>,
    info: PeerInfo,
    _notice: Option<DropNotice>,
}

impl tonic::transport::server::Connected for PeerIo {
    type ConnectInfo = PeerInfo;
    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for PeerIo {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for PeerIo {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Accepts TCP connections, completes TLS handshakes with the current server
/// configuration (a `watch`, so certificates rotate without a restart) and
/// yields streams for `tonic::transport::Server::serve_with_incoming`. Handshakes
/// run concurrently; a slow or failed one never blocks the others.
pub fn serve_tls(
    listener: TcpListener,
    config: watch::Receiver<Arc<ServerConfig>>,
    disconnects: Option<mpsc::UnboundedSender<Disconnected>>,
) -> tokio_stream::wrappers::ReceiverStream<io::Result<PeerIo>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            // The listener closes (and its port frees) as soon as the server
            // stops taking connections.
            let accepted = tokio::select! {
                _ = tx.closed() => return,
                a = listener.accept() => a,
            };
            let (tcp, remote) = match accepted {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = tokio_rustls::TlsAcceptor::from(config.borrow().clone());
            let tx = tx.clone();
            let disconnects = disconnects.clone();
            tokio::spawn(async move {
                let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        tracing::debug!(peer = %remote, error = %e, "tls handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(peer = %remote, "tls handshake timed out");
                        return;
                    }
                };
                let identity = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .and_then(|c| Identity::from_der(c.as_ref()).ok());
                let notice = disconnects.map(|tx| DropNotice {
                    tx,
                    event: Some(Disconnected { remote: Some(remote), identity: identity.clone() }),
                });
                let io = PeerIo { inner: tls, info: PeerInfo { remote: Some(remote), identity }, _notice: notice };
                let _ = tx.send(Ok(io)).await;
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// A lazily connecting gRPC channel to `addr` (`host:port`) over TLS with
/// `config`. It reconnects by itself after failures.
pub fn channel(
    addr: &str,
    config: Arc<ClientConfig>,
    connect_timeout: Duration,
) -> Result<Channel, tonic::transport::Error> {
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true);
    let target = addr.to_string();
    let connector = tower::service_fn(move |_uri: tonic::transport::Uri| {
        let config = config.clone();
        let target = target.clone();
        async move {
            let connect = async {
                let tcp = TcpStream::connect(&target).await?;
                tcp.set_nodelay(true)?;
                let name = ServerName::try_from(MANAGER_SERVER_NAME).map_err(io::Error::other)?;
                tokio_rustls::TlsConnector::from(config).connect(name, tcp).await
            };
            let tls = tokio::time::timeout(connect_timeout + HANDSHAKE_TIMEOUT, connect)
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, format!("connecting to {target} timed out")))??;
            Ok::<_, io::Error>(hyper_util::rt::TokioIo::new(tls))
        }
    });
    Ok(endpoint.connect_with_connector_lazy(connector))
}

/// A node's new private key (PEM) and a certificate signing request (DER) for
/// it. The key never leaves the node; the CA decides the CSR's subject.
pub fn new_key_and_csr() -> Result<(String, Vec<u8>), TlsError> {
    let key = rcgen::KeyPair::generate().map_err(|e| TlsError::Certificate(e.to_string()))?;
    let params =
        rcgen::CertificateParams::new(Vec::<String>::new()).map_err(|e| TlsError::Certificate(e.to_string()))?;
    let csr = params.serialize_request(&key).map_err(|e| TlsError::Certificate(e.to_string()))?;
    Ok((key.serialize_pem(), csr.der().to_vec()))
}
