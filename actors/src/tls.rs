//! Mutual TLS on the node-to-node transport: who may open a link, and which cluster it is.
//!
//! ```text
//!  mounted Secret (ca.crt, tls.crt, tls.key) ─read─► TlsMaterial ─build─► ClusterTls
//!        ▲ kubelet swaps the files on a change        │ (server + client config)
//!        └──────── TransportTls::watch polls ─────────┘ new links use the new one
//!  TlsConnector (client)  ── TCP ─► TLS 1.3, ALPN troupe-wire/1, cert for <identity> ─►
//!  TlsAcceptor  (server)  ◄─ client cert chained to ca.crt and naming <identity> ──────
//! ```
//!
//! Both sides present the cluster's certificate and verify the peer's against the CA
//! bundle, and both check that the peer's certificate names this cluster
//! ([`troupe_contract::tls::identity`], `<cluster>.<namespace>.troupe.internal`): a pod of
//! another cluster (or one that took over a departed member's IP) cannot open a link, and
//! a link never carries frames between clusters. ALPN names the wire format version
//! ([`troupe_contract::tls::ALPN_WIRE_V1`]); a peer that speaks no version in common fails
//! the handshake instead of misreading frames.
//!
//! **Rotation.** The CA bundle may hold several CAs (old and new while the operator
//! rotates); [`TransportTls::watch`] re-reads the files and new links use the new
//! credential, while established links keep going. A file set that does not parse is
//! logged and the previous credential kept.
//!
//! This module is the production edge only: the deterministic simulation links runtimes
//! through the [`Connector`](crate::transport::Connector) seam without TLS.

use std::{
    fmt,
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::Duration,
};

use rustls::{
    ClientConfig, RootCertStore, ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject},
    server::{ParsedCertificate, WebPkiClientVerifier},
};
use tokio::net::TcpStream;

use crate::transport::{
    Accepting, Acceptor, Connecting, Connection, Connector, ReadHalf, WriteHalf, tcp_connect,
};

/// How long a peer may take to complete the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a credential cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A PEM file held nothing usable.
    #[error("{0}: check the transport Secret the operator issues")]
    Pem(String),
    /// rustls refused the material.
    #[error("invalid transport credential: {0}")]
    Rustls(#[from] rustls::Error),
    /// The CA bundle cannot verify clients.
    #[error("invalid CA bundle: {0}")]
    Verifier(String),
    /// The cluster identity is not a valid DNS name.
    #[error("cluster identity {0:?} is not a DNS name")]
    Identity(String),
}

/// The three files of a credential.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// CA bundle (PEM).
    pub ca: PathBuf,
    /// Certificate chain (PEM).
    pub cert: PathBuf,
    /// Private key (PEM).
    pub key: PathBuf,
}

impl TlsFiles {
    /// The files as the operator's Secret lays them out in `dir`.
    pub fn in_dir(dir: &Path) -> Self {
        use troupe_contract::tls::{CA_FILE, CERT_FILE, KEY_FILE};
        Self {
            ca: dir.join(CA_FILE),
            cert: dir.join(CERT_FILE),
            key: dir.join(KEY_FILE),
        }
    }
}

/// The PEM bytes of one credential.
#[derive(Clone, PartialEq, Eq)]
pub struct TlsMaterial {
    /// CA bundle.
    pub ca_pem: Vec<u8>,
    /// Certificate chain.
    pub cert_pem: Vec<u8>,
    /// Private key.
    pub key_pem: Vec<u8>,
}

impl fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("ca_pem", &self.ca_pem.len())
            .field("cert_pem", &self.cert_pem.len())
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

impl TlsMaterial {
    /// Reads `files`.
    pub fn read(files: &TlsFiles) -> Result<Self, TlsError> {
        let read = |path: &PathBuf| {
            std::fs::read(path).map_err(|source| TlsError::Read {
                path: path.clone(),
                source,
            })
        };
        Ok(Self {
            ca_pem: read(&files.ca)?,
            cert_pem: read(&files.cert)?,
            key_pem: read(&files.key)?,
        })
    }
}

/// Both sides' TLS configuration for one cluster, built from one credential.
pub struct ClusterTls {
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
    identity: ServerName<'static>,
}

impl fmt::Debug for ClusterTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterTls")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

impl ClusterTls {
    /// TLS 1.3 with client authentication, trusting every CA of the bundle, for the
    /// cluster named `identity` ([`troupe_contract::tls::identity`]).
    pub fn new(material: &TlsMaterial, identity: &str) -> Result<Self, TlsError> {
        let name = ServerName::try_from(identity.to_owned())
            .map_err(|_| TlsError::Identity(identity.to_owned()))?;
        let mut roots = RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(&material.ca_pem) {
            let ca = ca.map_err(|e| TlsError::Pem(format!("CA bundle: {e}")))?;
            roots.add(ca)?;
        }
        if roots.is_empty() {
            return Err(TlsError::Pem("the CA bundle holds no certificate".into()));
        }
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(&material.cert_pem)
                .collect::<Result<_, _>>()
                .map_err(|e| TlsError::Pem(format!("certificate: {e}")))?;
        if chain.is_empty() {
            return Err(TlsError::Pem("the certificate file holds none".into()));
        }
        let key = PrivateKeyDer::from_pem_slice(&material.key_pem)
            .map_err(|e| TlsError::Pem(format!("key: {e}")))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let roots = Arc::new(roots);
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| TlsError::Verifier(e.to_string()))?;
        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())?;
        server.alpn_protocols = vec![troupe_contract::tls::ALPN_WIRE_V1.to_vec()];
        let mut client = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)?;
        client.alpn_protocols = vec![troupe_contract::tls::ALPN_WIRE_V1.to_vec()];
        Ok(Self {
            server: Arc::new(server),
            client: Arc::new(client),
            identity: name,
        })
    }
}

/// Whether the certificate a peer presented (already chained to the CA bundle by rustls)
/// names the cluster, and the peer agreed on the wire version.
fn check_peer(
    certs: Option<&[CertificateDer<'static>]>,
    alpn: Option<&[u8]>,
    identity: &ServerName<'_>,
) -> Result<(), String> {
    if alpn != Some(troupe_contract::tls::ALPN_WIRE_V1) {
        return Err(format!(
            "peer agreed on no wire version (ALPN {:?})",
            alpn.map(String::from_utf8_lossy)
        ));
    }
    let leaf = certs
        .and_then(|c| c.first())
        .ok_or_else(|| "peer presented no certificate".to_owned())?;
    let parsed = ParsedCertificate::try_from(leaf).map_err(|e| e.to_string())?;
    rustls::client::verify_server_name(&parsed, identity)
        .map_err(|e| format!("peer certificate is not this cluster's: {e}"))
}

/// The node's current credential, replaced when its files change.
#[derive(Debug)]
pub struct TransportTls {
    files: TlsFiles,
    identity: String,
    current: RwLock<(TlsMaterial, Arc<ClusterTls>)>,
}

impl TransportTls {
    /// Reads `files` for the cluster named `identity`.
    pub fn load(files: TlsFiles, identity: &str) -> Result<Arc<Self>, TlsError> {
        let material = TlsMaterial::read(&files)?;
        let tls = Arc::new(ClusterTls::new(&material, identity)?);
        Ok(Arc::new(Self {
            files,
            identity: identity.to_owned(),
            current: RwLock::new((material, tls)),
        }))
    }

    /// Re-reads the files; `Ok(true)` when the credential changed and new links use it.
    /// On an error the previous credential stays.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let material = TlsMaterial::read(&self.files)?;
        if crate::sync::read(&self.current).0 == material {
            return Ok(false);
        }
        let tls = Arc::new(ClusterTls::new(&material, &self.identity)?);
        *crate::sync::write(&self.current) = (material, tls);
        Ok(true)
    }

    /// Reloads every `every`, forever (the kubelet updates a mounted Secret within about a
    /// minute of a change).
    pub async fn watch(self: Arc<Self>, every: Duration) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match self.reload() {
                Ok(true) => tracing::info!("transport credential reloaded"),
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "cannot reload the transport credential; keeping the previous one");
                }
            }
        }
    }

    fn current(&self) -> Arc<ClusterTls> {
        crate::sync::read(&self.current).1.clone()
    }

    /// The client side, for [`ActorRuntime::with_connector`](crate::ActorRuntime::with_connector).
    pub fn connector(self: &Arc<Self>) -> TlsConnector {
        TlsConnector(self.clone())
    }

    /// The server side, for
    /// [`ActorRuntime::serve_transport_with`](crate::ActorRuntime::serve_transport_with).
    pub fn acceptor(self: &Arc<Self>) -> TlsAcceptor {
        TlsAcceptor(self.clone())
    }
}

/// [`check_peer`] on an established session (either side), as an I/O error.
fn check_session(conn: &rustls::CommonState, identity: &ServerName<'_>) -> std::io::Result<()> {
    check_peer(conn.peer_certificates(), conn.alpn_protocol(), identity).map_err(refused)
}

fn refused(msg: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::PermissionDenied, msg.into())
}

fn split<S>(stream: S) -> Connection
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let (r, w) = tokio::io::split(stream);
    (Box::new(r) as ReadHalf, Box::new(w) as WriteHalf)
}

/// Links over TCP then mutual TLS, checking that the peer is of this cluster.
#[derive(Debug, Clone)]
pub struct TlsConnector(Arc<TransportTls>);

impl Connector for TlsConnector {
    fn connect<'a>(&'a self, addr: &'a str) -> Connecting<'a> {
        Box::pin(async move {
            let tcp = tcp_connect(addr).await?;
            let tls = self.0.current();
            let stream = tokio_rustls::TlsConnector::from(tls.client.clone())
                .connect(tls.identity.clone(), tcp)
                .await?;
            let (_, conn) = stream.get_ref();
            check_session(conn, &tls.identity)?;
            Ok(split(stream))
        })
    }
}

/// Accepts only peers presenting this cluster's certificate, within [`HANDSHAKE_TIMEOUT`].
#[derive(Debug, Clone)]
pub struct TlsAcceptor(Arc<TransportTls>);

impl Acceptor for TlsAcceptor {
    fn accept(&self, stream: TcpStream) -> Accepting {
        let tls = self.0.current();
        Box::pin(async move {
            let accept = tokio_rustls::TlsAcceptor::from(tls.server.clone()).accept(stream);
            let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, accept)
                .await
                .map_err(|_| refused("TLS handshake timed out"))??;
            let (_, conn) = stream.get_ref();
            check_session(conn, &tls.identity)?;
            Ok(split(stream))
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

    /// A CA, and a credential it issues for `identity`.
    pub(crate) struct TestCa {
        pub(crate) pem: String,
        issuer: Issuer<'static, KeyPair>,
    }

    impl TestCa {
        pub(crate) fn new(cn: &str) -> Self {
            let key = KeyPair::generate().expect("key");
            let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.distinguished_name.push(DnType::CommonName, cn);
            let cert = params.self_signed(&key).expect("self-signed");
            Self {
                pem: cert.pem(),
                issuer: Issuer::new(params, key),
            }
        }

        pub(crate) fn issue(&self, identity: &str, bundle: &str) -> TlsMaterial {
            let key = KeyPair::generate().expect("key");
            let params = CertificateParams::new(vec![identity.to_owned()]).expect("params");
            let cert = params.signed_by(&key, &self.issuer).expect("signed");
            TlsMaterial {
                ca_pem: bundle.as_bytes().to_vec(),
                cert_pem: cert.pem().into_bytes(),
                key_pem: key.serialize_pem().into_bytes(),
            }
        }
    }

    use crate::transport::{FastPath, Handler, Peers, TransportError, serve};
    use crate::wire::{Request, Response};
    use bytes::Bytes;
    use prometheus::{IntCounterVec, Opts};

    const ORDERS: &str = "orders.shop.troupe.internal";

    fn errors() -> IntCounterVec {
        IntCounterVec::new(Opts::new("errors", "errors"), &["kind"]).expect("metric")
    }

    fn tls(material: &TlsMaterial, identity: &str, dir: &Path) -> Arc<TransportTls> {
        write_files(material, dir);
        TransportTls::load(TlsFiles::in_dir(dir), identity).expect("credential")
    }

    fn write_files(material: &TlsMaterial, dir: &Path) {
        let files = TlsFiles::in_dir(dir);
        std::fs::create_dir_all(dir).expect("dir");
        std::fs::write(files.ca, &material.ca_pem).expect("ca");
        std::fs::write(files.cert, &material.cert_pem).expect("cert");
        std::fs::write(files.key, &material.key_pem).expect("key");
    }

    /// A fresh directory under the system's temporary directory, removed when dropped
    /// (a credential is read into memory when loaded; only a reload reads it again).
    struct Scratch(PathBuf);

    impl std::ops::Deref for Scratch {
        type Target = Path;
        fn deref(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn scratch(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!(
            "troupe-tls-{}-{name}-{}",
            std::process::id(),
            rand_suffix()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        Scratch(dir)
    }

    fn rand_suffix() -> u64 {
        use std::hash::{BuildHasher, RandomState};
        RandomState::new().hash_one(0u8)
    }

    /// A transport server on 127.0.0.1 that echoes `Deliver` payloads, through `acceptor`.
    async fn echo_server(acceptor: Arc<dyn Acceptor>, errors: IntCounterVec) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let fast: FastPath = Arc::new(Err);
        let handler: Handler = Arc::new(|req| {
            Box::pin(async move {
                match req {
                    Request::Deliver { payload, .. } => Response::Reply(payload),
                    _ => Response::HandOffAck,
                }
            })
        });
        tokio::spawn(serve(listener, acceptor, fast, handler, 1 << 20, errors));
        addr
    }

    fn deliver() -> Request {
        Request::Deliver {
            ask: true,
            order: (0, 1),
            hops: 1,
            actor_type: "counter".into(),
            id: "x".into(),
            method: "add".into(),
            payload: Bytes::from_static(b"hello"),
        }
    }

    async fn ask(connector: Arc<dyn Connector>, addr: &str) -> Result<Response, TransportError> {
        let peers = Peers::with_connector(1 << 20, errors(), connector);
        peers.request(addr, deliver(), Duration::from_secs(5)).await
    }

    fn refused_count(errors: &IntCounterVec) -> u64 {
        errors.with_label_values(&["handshake_refused"]).get()
    }

    #[tokio::test]
    async fn members_of_the_cluster_link_and_everyone_else_is_refused() {
        let ca = TestCa::new("orders CA");
        let node = tls(&ca.issue(ORDERS, &ca.pem), ORDERS, &scratch("node"));
        let server_errors = errors();
        let addr = echo_server(Arc::new(node.acceptor()), server_errors.clone()).await;

        // A member: same CA, same identity.
        let peer = tls(&ca.issue(ORDERS, &ca.pem), ORDERS, &scratch("peer"));
        let reply = ask(Arc::new(peer.connector()), &addr).await;
        assert_eq!(reply, Ok(Response::Reply(Bytes::from_static(b"hello"))));
        assert_eq!(refused_count(&server_errors), 0);

        // No TLS at all (a pod speaking the plaintext wire format).
        let plain = ask(Arc::new(crate::transport::TcpConnector), &addr).await;
        assert!(plain.is_err(), "plaintext peer got {plain:?}");

        // Another cluster's CA and certificate (e.g. a pod that reused a member's IP).
        let other = TestCa::new("billing CA");
        const BILLING: &str = "billing.shop.troupe.internal";
        let stranger = tls(
            &other.issue(BILLING, &other.pem),
            BILLING,
            &scratch("stranger"),
        );
        let r = ask(Arc::new(stranger.connector()), &addr).await;
        assert!(r.is_err(), "another cluster's node got {r:?}");

        // The right CA, but a certificate naming another cluster: refused by name.
        let bundle = format!("{}{}", ca.pem, other.pem);
        let misnamed = tls(&ca.issue(BILLING, &bundle), ORDERS, &scratch("misnamed"));
        let r = ask(Arc::new(misnamed.connector()), &addr).await;
        assert!(r.is_err(), "a certificate of another identity got {r:?}");

        // The server checks every refusal: give the spawned handshakes a moment, bounded.
        for _ in 0..200 {
            if refused_count(&server_errors) >= 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(refused_count(&server_errors), 3);
    }

    #[tokio::test]
    async fn a_client_refuses_a_server_of_another_cluster() {
        let ca = TestCa::new("orders CA");
        let other = TestCa::new("billing CA");
        // The impostor's CA is trusted by nobody here; its certificate names our cluster.
        let impostor = tls(
            &other.issue(ORDERS, &other.pem),
            ORDERS,
            &scratch("impostor"),
        );
        let addr = echo_server(Arc::new(impostor.acceptor()), errors()).await;
        let me = tls(&ca.issue(ORDERS, &ca.pem), ORDERS, &scratch("me"));
        let r = ask(Arc::new(me.connector()), &addr).await;
        assert!(r.is_err(), "linked to an impostor: {r:?}");
    }

    #[tokio::test]
    async fn a_rotated_credential_is_picked_up_and_both_cas_are_trusted_meanwhile() {
        let old = TestCa::new("old CA");
        let new = TestCa::new("new CA");
        let bundle = format!("{}{}", old.pem, new.pem);
        // The server still runs the old certificate, but already trusts both CAs.
        let server_dir = scratch("rot-server");
        let server = tls(&old.issue(ORDERS, &bundle), ORDERS, &server_dir);
        let addr = echo_server(Arc::new(server.acceptor()), errors()).await;
        // A peer already on the new certificate links to it, and it to the peer.
        let peer = tls(&new.issue(ORDERS, &bundle), ORDERS, &scratch("rot-peer"));
        let r = ask(Arc::new(peer.connector()), &addr).await;
        assert_eq!(r, Ok(Response::Reply(Bytes::from_static(b"hello"))));

        // The files change under the server: the old CA is dropped.
        assert!(!server.reload().expect("unchanged"), "nothing changed yet");
        write_files(&new.issue(ORDERS, &new.pem), &server_dir);
        assert!(server.reload().expect("reloaded"));
        let r = ask(Arc::new(peer.connector()), &addr).await;
        assert_eq!(r, Ok(Response::Reply(Bytes::from_static(b"hello"))));
        let left_behind = tls(&old.issue(ORDERS, &old.pem), ORDERS, &scratch("rot-old"));
        let r = ask(Arc::new(left_behind.connector()), &addr).await;
        assert!(r.is_err(), "a certificate of the dropped CA got {r:?}");

        // A broken file set keeps the previous credential.
        std::fs::write(TlsFiles::in_dir(&server_dir).key, b"junk").expect("write");
        assert!(server.reload().is_err());
        let r = ask(Arc::new(peer.connector()), &addr).await;
        assert_eq!(r, Ok(Response::Reply(Bytes::from_static(b"hello"))));
    }

    #[test]
    fn garbage_material_is_an_error_never_a_panic() {
        let ca = TestCa::new("ca");
        let good = ca.issue("a.ns.troupe.internal", &ca.pem);
        for bad in [
            TlsMaterial {
                ca_pem: b"junk".to_vec(),
                ..good.clone()
            },
            TlsMaterial {
                cert_pem: Vec::new(),
                ..good.clone()
            },
            TlsMaterial {
                key_pem: b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".to_vec(),
                ..good.clone()
            },
        ] {
            assert!(ClusterTls::new(&bad, "a.ns.troupe.internal").is_err());
        }
        assert!(ClusterTls::new(&good, "not a name").is_err());
        assert!(ClusterTls::new(&good, "a.ns.troupe.internal").is_ok());
    }
}
