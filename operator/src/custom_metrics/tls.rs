//! TLS for the metrics API: the serving certificate (mounted from the chart's Secret), client
//! certificates verified against the requestheader client CA, and an axum [`Listener`]
//! that hands each request the verified client's CN.
//!
//! ```text
//!  tls.crt/tls.key (Secret) ─┐
//!  requestheader CA (ConfigMap kube-system/extension-apiserver-authentication)
//!                            ├─► server_config ─► watch channel ─► accept loop
//!  reload every 30 s ────────┘    (pure)                               │ handshake (10 s max)
//!                                                                      ▼
//!                                       TlsListener ─► axum (ConnectInfo<PeerInfo>)
//! ```
//!
//! A client without a certificate completes the handshake and gets a 401 from the HTTP
//! layer, which says why; a certificate the CA did not sign fails the handshake.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::{Api, Client};
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ServerConfig, WebPkiClientVerifier};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use super::Error;
use super::auth::{AUTH_CONFIGMAP, AUTH_CONFIGMAP_NAMESPACE, RequestHeaderConfig};

/// Builds the server configuration from PEM: the serving chain and key, and the CA that
/// signs acceptable client certificates.
pub fn server_config(
    cert_pem: &[u8],
    key_pem: &[u8],
    client_ca_pem: &[u8],
) -> Result<ServerConfig, Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| Error::Tls(format!("serving certificate: {e}")))?;
    if certs.is_empty() {
        return Err(Error::Tls("serving certificate: no PEM certificate".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| Error::Tls(format!("serving key: {e}")))?;
    let mut roots = RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(client_ca_pem) {
        let ca = ca.map_err(|e| Error::Tls(format!("requestheader client CA: {e}")))?;
        roots
            .add(ca)
            .map_err(|e| Error::Tls(format!("requestheader client CA: {e}")))?;
    }
    if roots.is_empty() {
        return Err(Error::Tls(
            "requestheader client CA: no PEM certificate".into(),
        ));
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| Error::Tls(format!("client verifier: {e}")))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| Error::Tls(format!("serving certificate and key: {e}")))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The subject CN of a DER certificate.
pub fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    cert.subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_owned)
}

/// Who is at the other end of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    /// The remote address.
    pub remote: SocketAddr,
    /// CN of the verified client certificate, if the client presented one.
    pub client_cn: Option<String>,
}

impl Connected<IncomingStream<'_, TlsListener>> for PeerInfo {
    fn connect_info(stream: IncomingStream<'_, TlsListener>) -> Self {
        stream.remote_addr().clone()
    }
}

/// Accepted, handshaken TLS connections.
#[derive(Debug)]
pub struct TlsListener {
    local: SocketAddr,
    accepted: mpsc::Receiver<(TlsStream<TcpStream>, PeerInfo)>,
}

impl TlsListener {
    /// Accepts on `tcp`, handshaking each connection concurrently with the configuration
    /// current in `config` at accept time.
    pub fn new(
        tcp: TcpListener,
        config: watch::Receiver<Arc<ServerConfig>>,
    ) -> std::io::Result<Self> {
        let local = tcp.local_addr()?;
        let (tx, accepted) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let (stream, remote) = match tcp.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::debug!(error = %e, "custom metrics: accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                if tx.is_closed() {
                    break;
                }
                let acceptor = TlsAcceptor::from(config.borrow().clone());
                let tx = tx.clone();
                tokio::spawn(async move {
                    let handshake =
                        tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream));
                    match handshake.await {
                        Ok(Ok(tls)) => {
                            let client_cn = tls
                                .get_ref()
                                .1
                                .peer_certificates()
                                .and_then(|c| c.first())
                                .and_then(|c| common_name(c));
                            let _ = tx.send((tls, PeerInfo { remote, client_cn })).await;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%remote, error = %e, "custom metrics: TLS handshake failed");
                        }
                        Err(_) => {
                            tracing::debug!(%remote, "custom metrics: TLS handshake timed out")
                        }
                    }
                });
            }
        });
        Ok(Self { local, accepted })
    }
}

impl Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = PeerInfo;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.accepted.recv().await {
            Some(c) => c,
            // The accept loop only ends when this receiver is gone.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(PeerInfo {
            remote: self.local,
            client_cn: None,
        })
    }
}

/// Where the serving certificate and key are read from.
#[derive(Debug, Clone)]
pub struct CertFiles {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// Everything [`server_config`] is built from, as read; compared to skip needless rebuilds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Material {
    cert: Vec<u8>,
    key: Vec<u8>,
    /// The requestheader settings.
    pub request_header: RequestHeaderConfig,
}

impl Material {
    /// Reads the certificate files and the API server's authentication ConfigMap.
    pub async fn read(client: &Client, files: &CertFiles) -> Result<Self, Error> {
        let cert = tokio::fs::read(&files.cert)
            .await
            .map_err(|e| Error::Config(format!("reading {}: {e}", files.cert.display())))?;
        let key = tokio::fs::read(&files.key)
            .await
            .map_err(|e| Error::Config(format!("reading {}: {e}", files.key.display())))?;
        let api: Api<ConfigMap> = Api::namespaced(client.clone(), AUTH_CONFIGMAP_NAMESPACE);
        let cm = api.get(AUTH_CONFIGMAP).await.map_err(|e| {
            Error::Config(format!(
                "reading ConfigMap {AUTH_CONFIGMAP_NAMESPACE}/{AUTH_CONFIGMAP} \
                 (needs the Role extension-apiserver-authentication-reader): {e}"
            ))
        })?;
        let request_header = RequestHeaderConfig::from_configmap(&cm.data.unwrap_or_default())?;
        Ok(Self {
            cert,
            key,
            request_header,
        })
    }

    /// The TLS configuration of this material.
    pub fn server_config(&self) -> Result<ServerConfig, Error> {
        server_config(
            &self.cert,
            &self.key,
            self.request_header.client_ca_pem.as_bytes(),
        )
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    };

    /// A CA, a server certificate for `localhost` and a client certificate with `cn`.
    pub(crate) struct Pki {
        pub ca_pem: String,
        pub server_cert: String,
        pub server_key: String,
        pub client_cert: String,
        pub client_key: String,
    }

    pub(crate) fn pki(cn: &str) -> Pki {
        let ca_key = KeyPair::generate().expect("key");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, "test-ca");
        let ca_cert = ca.self_signed(&ca_key).expect("ca");
        let issuer = Issuer::new(ca, ca_key);
        let server_key = KeyPair::generate().expect("key");
        let server = CertificateParams::new(vec!["localhost".to_owned()])
            .expect("params")
            .signed_by(&server_key, &issuer)
            .expect("server");
        let client_key = KeyPair::generate().expect("key");
        let mut client = CertificateParams::new(Vec::<String>::new()).expect("params");
        client.distinguished_name.push(DnType::CommonName, cn);
        client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let client = client.signed_by(&client_key, &issuer).expect("client");
        Pki {
            ca_pem: ca_cert.pem(),
            server_cert: server.pem(),
            server_key: server_key.serialize_pem(),
            client_cert: client.pem(),
            client_key: client_key.serialize_pem(),
        }
    }

    #[test]
    fn builds_a_config_and_reads_the_client_cn() {
        let p = pki("front-proxy-client");
        let c = server_config(
            p.server_cert.as_bytes(),
            p.server_key.as_bytes(),
            p.ca_pem.as_bytes(),
        )
        .expect("config");
        assert_eq!(c.alpn_protocols, [b"http/1.1".to_vec()]);
        let der = CertificateDer::from_pem_slice(p.client_cert.as_bytes()).expect("der");
        assert_eq!(common_name(&der).as_deref(), Some("front-proxy-client"));
        assert_eq!(common_name(b"garbage"), None);
    }

    async fn handshake(p: &Pki, client_cert: bool) -> Option<PeerInfo> {
        let config = server_config(
            p.server_cert.as_bytes(),
            p.server_key.as_bytes(),
            p.ca_pem.as_bytes(),
        )
        .expect("config");
        let (_tx, rx) = watch::channel(Arc::new(config));
        let tcp = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let mut listener = TlsListener::new(tcp, rx).expect("listener");
        let addr = listener.local.to_owned();
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(p.ca_pem.as_bytes()).expect("ca"))
            .expect("root");
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
        let client = if client_cert {
            builder
                .with_client_auth_cert(
                    vec![CertificateDer::from_pem_slice(p.client_cert.as_bytes()).expect("cert")],
                    PrivateKeyDer::from_pem_slice(p.client_key.as_bytes()).expect("key"),
                )
                .expect("client auth")
        } else {
            builder.with_no_client_auth()
        };
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        let stream = TcpStream::connect(addr).await.expect("connect");
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
        let _tls = connector.connect(name, stream).await.ok()?;
        let (_, peer) = tokio::time::timeout(Duration::from_secs(5), listener.accept())
            .await
            .ok()?;
        Some(peer)
    }

    #[tokio::test]
    async fn the_listener_reports_the_verified_client_cn() {
        let p = pki("front-proxy-client");
        let peer = handshake(&p, true).await.expect("handshake");
        assert_eq!(peer.client_cn.as_deref(), Some("front-proxy-client"));
        let anonymous = handshake(&p, false)
            .await
            .expect("handshake without a certificate");
        assert_eq!(
            anonymous.client_cn, None,
            "left to the HTTP layer to refuse with 401"
        );
    }

    #[test]
    fn missing_or_bad_material_is_a_readable_error() {
        let p = pki("x");
        let e = server_config(b"", p.server_key.as_bytes(), p.ca_pem.as_bytes());
        assert!(matches!(e, Err(Error::Tls(m)) if m.contains("serving certificate")));
        let e = server_config(p.server_cert.as_bytes(), p.server_key.as_bytes(), b"");
        assert!(matches!(e, Err(Error::Tls(m)) if m.contains("client CA")));
    }
}
