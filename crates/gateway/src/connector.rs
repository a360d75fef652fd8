//! Our own TLS connector for tonic. We do the handshake ourselves (rather than
//! through tonic's TLS options) for two reasons: "skip server verification"
//! must still present the client certificate, which tonic cannot express, and
//! handshake failures must keep their rustls cause so they can be classified
//! (untrusted CA vs expired vs wrong host).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::GatewayError;
use crate::config::{ClientIdentity, GatewayAddress};

/// Largest PEM bundle we parse; real CA bundles are a few KiB.
const MAX_PEM_BYTES: usize = 256 * 1024;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub(crate) fn parse_certs(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, GatewayError> {
    if pem.len() > MAX_PEM_BYTES {
        return Err(GatewayError::Config { message: format!("{what} is larger than 256 KiB") });
    }
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| GatewayError::Config { message: format!("{what} is not valid PEM: {e}") })?;
    if certs.is_empty() {
        return Err(GatewayError::Config { message: format!("{what} contains no certificate") });
    }
    Ok(certs)
}

/// Builds the rustls client configuration for a TLS or mTLS gateway.
pub(crate) fn client_config(
    ca_pem: Option<&[u8]>,
    client: Option<&ClientIdentity>,
    skip_server_verification: bool,
) -> Result<ClientConfig, GatewayError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| GatewayError::Config { message: e.to_string() })?;
    let builder = if skip_server_verification {
        builder.dangerous().with_custom_certificate_verifier(Arc::new(AcceptAnyServerCert(provider())))
    } else {
        let mut roots = RootCertStore::empty();
        if let Some(pem) = ca_pem {
            for cert in parse_certs(pem, "CA certificate")? {
                roots
                    .add(cert)
                    .map_err(|e| GatewayError::Config { message: format!("CA certificate rejected: {e}") })?;
            }
        } else {
            for cert in rustls_native_certs::load_native_certs().certs {
                // A broken system certificate must not stop us using the others.
                let _ = roots.add(cert);
            }
        }
        builder.with_root_certificates(roots)
    };
    let mut config = match client {
        Some(id) => {
            let certs = parse_certs(&id.cert_pem, "client certificate")?;
            let key = PrivateKeyDer::from_pem_slice(id.key_pem.expose().as_bytes())
                .map_err(|_| GatewayError::Config { message: "client key is not a valid PEM private key".into() })?;
            builder.with_client_auth_cert(certs, key).map_err(|e| GatewayError::Config {
                message: format!("client certificate and key do not match: {e}"),
            })?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// Verifies handshake signatures (so the session is still bound to the key
/// the server holds) but trusts any certificate chain and name.
#[derive(Debug)]
struct AcceptAnyServerCert(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAnyServerCert {
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
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A tower service tonic calls to open each HTTP/2 connection.
#[derive(Clone)]
pub(crate) struct TlsDialer {
    connector: TlsConnector,
    address: GatewayAddress,
    server_name: ServerName<'static>,
    connect_timeout: Duration,
}

impl TlsDialer {
    pub(crate) fn new(
        config: ClientConfig,
        address: GatewayAddress,
        connect_timeout: Duration,
    ) -> Result<Self, GatewayError> {
        let server_name = match address.ip() {
            Some(ip) => ServerName::IpAddress(ip.into()),
            None => ServerName::try_from(address.host().to_owned()).map_err(|_| GatewayError::Config {
                message: format!("{:?} is not a valid TLS server name", address.host()),
            })?,
        };
        Ok(Self { connector: TlsConnector::from(Arc::new(config)), address, server_name, connect_timeout })
    }
}

impl tower::Service<tonic::codegen::http::Uri> for TlsDialer {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: tonic::codegen::http::Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let addr = (this.address.host().to_owned(), this.address.port());
            let tcp = tokio::time::timeout(this.connect_timeout, TcpStream::connect(addr))
                .await
                .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "TCP connect timed out"))??;
            tcp.set_nodelay(true)?;
            // The handshake is bounded too: a peer that accepts TCP and then
            // says nothing must not hold the caller forever.
            let tls = tokio::time::timeout(this.connect_timeout, this.connector.connect(this.server_name, tcp))
                .await
                .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
            Ok(TokioIo::new(tls))
        })
    }
}
