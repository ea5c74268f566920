//! Probing other members: the failure detector's input and the gossip channel.
//!
//! Every node probes every other member of its table each
//! [`crate::Timing::probe_interval`] with `GET /cluster/ping` on the member's management
//! port. The answer ([`PingReply`]) carries the peer's identity, its latest member table
//! and how long ago it heard from the store. So a node that cannot reach the API server
//! still learns newer tables (every table comes from the one store, so a higher version is
//! always newer) and whether somebody near it is in touch with the store.
//!
//! [`Prober`] is the seam: [`HttpProber`] in production and on loopback, wrapped by
//! [`crate::memory::NetProber`] in the partition tests.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use troupe_contract::{Member, MemberTable};

/// The answer to `GET /cluster/ping`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PingReply {
    /// The answering pod.
    pub pod: String,
    /// The answering incarnation.
    pub incarnation: String,
    /// Its latest member table.
    pub table: MemberTable,
    /// Milliseconds since it last heard from the store (directly or through a peer).
    pub store_age_ms: Option<u64>,
}

/// Why a probe failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The member's address cannot be used.
    #[error("member address {0:?} is neither an IP nor an IP:port")]
    BadAddress(String),
    /// No answer in time, or the connection failed.
    #[error("no answer from {addr}: {reason}")]
    NoAnswer {
        /// Where the probe went.
        addr: SocketAddr,
        /// What went wrong.
        reason: String,
    },
    /// An answer that is not a ping reply (another process on that address).
    #[error("bad answer from {addr}: {reason}")]
    BadAnswer {
        /// Where the probe went.
        addr: SocketAddr,
        /// What went wrong.
        reason: String,
    },
}

/// Probes one member.
pub trait Prober: Clone + Send + Sync + 'static {
    /// Asks `target` for a [`PingReply`].
    fn probe(&self, target: &Member) -> impl Future<Output = Result<PingReply, ProbeError>> + Send;
}

/// Where to reach a member's management server: its address is a pod IP (then `port` is
/// used) or, on loopback in tests, an `ip:port`.
pub fn management_addr(address: &str, port: u16) -> Option<SocketAddr> {
    if let Ok(sa) = address.parse::<SocketAddr>() {
        return Some(sa);
    }
    address
        .parse::<IpAddr>()
        .ok()
        .map(|ip| SocketAddr::new(ip, port))
}

/// Probes over HTTP/1.1, one short connection per probe.
#[derive(Clone, Debug)]
pub struct HttpProber {
    port: u16,
    timeout: Duration,
    token: Option<crate::guard::ManagementToken>,
}

impl HttpProber {
    /// Probes members on `port` (the management port), giving up after `timeout`.
    pub fn new(port: u16, timeout: Duration) -> Self {
        Self {
            port,
            timeout,
            token: None,
        }
    }

    /// Sends the cluster's management token with every probe ([`crate::guard`]).
    pub fn with_token(mut self, token: Option<crate::guard::ManagementToken>) -> Self {
        self.token = token;
        self
    }
}

/// The largest ping answer read (a reply is a few hundred bytes).
const MAX_PING_BYTES: usize = 64 * 1024;

impl Prober for HttpProber {
    async fn probe(&self, target: &Member) -> Result<PingReply, ProbeError> {
        let addr = management_addr(&target.address, self.port)
            .ok_or_else(|| ProbeError::BadAddress(target.address.clone()))?;
        let auth = self.token.as_ref().map(|t| t.header_value());
        let reply = tokio::time::timeout(self.timeout, get_ping(addr, auth))
            .await
            .map_err(|_| ProbeError::NoAnswer {
                addr,
                reason: format!("timed out after {:?}", self.timeout),
            })??;
        Ok(reply)
    }
}

async fn get_ping(addr: SocketAddr, auth: Option<String>) -> Result<PingReply, ProbeError> {
    let no_answer = |reason: String| ProbeError::NoAnswer { addr, reason };
    let bad = |reason: String| ProbeError::BadAnswer { addr, reason };
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| no_answer(e.to_string()))?;
    stream.set_nodelay(true).ok();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| no_answer(e.to_string()))?;
    let conn = tokio::spawn(conn);
    let mut req = hyper::Request::get("/cluster/ping").header("host", addr.to_string());
    if let Some(auth) = auth {
        req = req.header(hyper::header::AUTHORIZATION, auth);
    }
    let req = req
        .body(Empty::<Bytes>::new())
        .map_err(|e| bad(e.to_string()))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| no_answer(e.to_string()))?;
    let status = resp.status();
    let body = http_body_util::Limited::new(resp.into_body(), MAX_PING_BYTES)
        .collect()
        .await
        .map_err(|e| no_answer(e.to_string()))?
        .to_bytes();
    conn.abort();
    if !status.is_success() {
        return Err(bad(format!("HTTP {status}")));
    }
    serde_json::from_slice(&body).map_err(|e| bad(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_ips_or_socket_addresses() {
        assert_eq!(
            management_addr("10.1.2.3", 8558),
            "10.1.2.3:8558".parse().ok()
        );
        assert_eq!(
            management_addr("127.0.0.1:4000", 8558),
            "127.0.0.1:4000".parse().ok()
        );
        assert_eq!(
            management_addr("fd00::1", 8558),
            "[fd00::1]:8558".parse().ok()
        );
        assert_eq!(management_addr("not an ip", 8558), None);
    }

    /// A management server on loopback answering pings with `body`, recording whether
    /// each probe carried `Authorization`.
    async fn ping_server(body: String) -> (Member, std::sync::Arc<std::sync::Mutex<Vec<bool>>>) {
        use axum::{Router, http::HeaderMap, routing::get};
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = seen.clone();
        let app = Router::new().route(
            "/cluster/ping",
            get(move |h: HeaderMap| {
                let (body, log) = (body.clone(), log.clone());
                async move {
                    log.lock()
                        .map(|mut l| l.push(h.contains_key("authorization")))
                        .ok();
                    body
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        let member = Member {
            pod: "p".into(),
            incarnation: "i".into(),
            address: addr.to_string(),
            status: troupe_contract::MemberStatus::Up,
            since_version: 0,
        };
        (member, seen)
    }

    fn reply_json() -> String {
        serde_json::to_string(&PingReply {
            pod: "p".into(),
            incarnation: "i".into(),
            table: MemberTable::default(),
            store_age_ms: Some(1),
        })
        .expect("json")
    }

    #[tokio::test]
    async fn a_huge_ping_answer_is_refused_not_collected() {
        // Valid JSON padded past the limit: read whole, it would parse.
        let (member, _) = ping_server(format!("{}{}", reply_json(), " ".repeat(1 << 20))).await;
        let prober = HttpProber::new(0, Duration::from_secs(5));
        assert!(prober.probe(&member).await.is_err());
        let (member, seen) = ping_server(reply_json()).await;
        let token = crate::guard::ManagementToken::new(&"t".repeat(32)).expect("token");
        let ok = prober.with_token(Some(token)).probe(&member).await;
        assert!(ok.is_ok(), "{ok:?}");
        assert_eq!(*seen.lock().expect("log"), vec![true], "the token is sent");
    }
}
