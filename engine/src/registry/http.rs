//! A minimal HTTP/1.1 client for registries: one connection per request
//! (TCP, then TLS with rustls/ring unless the URL is `http://`), hyper's
//! connection API on top, streaming bodies both ways. Registries answer a
//! handful of requests per pull, so no pool; redirects are followed by the
//! caller, which knows when credentials may travel.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, Uri, header};
use http_body_util::{BodyExt, Empty, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::{AsyncRead, AsyncWrite};

pub type Body = BoxBody<Bytes, std::io::Error>;

/// Time to connect (TCP and TLS) and to receive a response's head.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
const HEAD_TIMEOUT: Duration = Duration::from_secs(60);

pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}

pub fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into()).map_err(|never| match never {}).boxed()
}

/// A body streamed from a file, 64 KiB at a time.
pub async fn file_body(path: &std::path::Path) -> std::io::Result<Body> {
    use tokio::io::AsyncReadExt;
    let file = tokio::fs::File::open(path).await?;
    let chunks = futures::stream::unfold(file, |mut f| async move {
        let mut buf = vec![0u8; 64 * 1024];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(Frame::data(Bytes::from(buf))), f))
            }
            Err(e) => Some((Err(e), f)),
        }
    });
    Ok(BodyExt::boxed(StreamBody::new(Box::pin(chunks))))
}

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("{0}")]
    Connect(String),
    #[error("{0}")]
    Tls(String),
    #[error("{0}")]
    Protocol(String),
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Sends one request to an absolute `url` (`http` or `https`) and returns
/// the response with its body still streaming.
pub async fn send(
    tls: &Arc<ClientConfig>,
    method: Method,
    url: &Uri,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response<Incoming>, HttpError> {
    let host = url.host().ok_or_else(|| HttpError::Protocol(format!("no host in {url}")))?;
    let https = match url.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(HttpError::Protocol(format!("unsupported URL {url}"))),
    };
    let port = url.port_u16().unwrap_or(if https { 443 } else { 80 });
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect((bare, port)))
        .await
        .map_err(|_| HttpError::Connect(format!("connecting to {host}:{port} timed out")))?
        .map_err(|e| HttpError::Connect(connect_reason(&e)))?;
    let _ = tcp.set_nodelay(true);
    let io: Box<dyn Io> = if https {
        let name =
            ServerName::try_from(bare.to_string()).map_err(|e| HttpError::Tls(format!("bad server name: {e}")))?;
        let connector = tokio_rustls::TlsConnector::from(tls.clone());
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(name, tcp))
            .await
            .map_err(|_| HttpError::Tls("TLS handshake timed out".into()))?
            .map_err(|e| HttpError::Tls(e.to_string()))?;
        Box::new(stream)
    } else {
        Box::new(tcp)
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, Body>(TokioIo::new(io))
        .await
        .map_err(|e| HttpError::Protocol(e.to_string()))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "registry connection ended");
        }
    });
    let path = url.path_and_query().map_or("/", |p| p.as_str());
    let mut req = Request::builder().method(method).uri(path);
    if let Some(h) = req.headers_mut() {
        h.extend(headers.clone());
        let authority = url.authority().map_or(host, |a| a.as_str());
        let value = HeaderValue::from_str(authority).map_err(|e| HttpError::Protocol(e.to_string()))?;
        h.insert(header::HOST, value);
        h.insert(header::USER_AGENT, HeaderValue::from_static(concat!("shoal/", env!("CARGO_PKG_VERSION"))));
    }
    let req = req.body(body).map_err(|e| HttpError::Protocol(e.to_string()))?;
    tokio::time::timeout(HEAD_TIMEOUT, sender.send_request(req))
        .await
        .map_err(|_| HttpError::Protocol(format!("no response from {host}:{port} within {HEAD_TIMEOUT:?}")))?
        .map_err(|e| HttpError::Protocol(e.to_string()))
}

fn connect_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => "connection refused".into(),
        _ if e.to_string().contains("lookup") || e.to_string().contains("Name or service") => {
            format!("no such host ({e})")
        }
        _ => e.to_string(),
    }
}

/// Reads a whole (small) body, refusing more than `limit` bytes.
pub async fn read_limited(body: Incoming, limit: usize) -> Result<Vec<u8>, HttpError> {
    let mut out = Vec::new();
    let mut body = body;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| HttpError::Protocol(e.to_string()))?;
        if let Ok(data) = frame.into_data() {
            if out.len() + data.len() > limit {
                return Err(HttpError::Protocol(format!("response larger than {limit} bytes")));
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out)
}

/// A rustls config trusting `roots`, or (insecure) any certificate.
pub fn client_config(roots: rustls::RootCertStore, insecure: bool) -> Result<ClientConfig, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions()?;
    let mut cfg = if insecure {
        builder.dangerous().with_custom_certificate_verifier(Arc::new(AnyCertificate(provider))).with_no_client_auth()
    } else {
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

/// `--insecure-registry`: the registry's certificate is not checked (the
/// handshake's signatures still are, so the peer holds the key it shows).
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
