//! Node-to-node transport: persistent, pipelined TCP connections carrying [`wire`] frames.
//!
//! ```text
//!  caller ─request─► Link (one per peer) ─► writer task ─► TCP ─► peer's connection task
//!    ▲                 │ pending: corr → oneshot                    │ spawns one task per
//!    └──── response ◄──┴── reader task ◄──────── TCP ◄─── writer ◄──┘ request (handler)
//! ```
//!
//! Requests are pipelined: many are in flight on one connection, matched to responses by a
//! correlation id. Writers batch: they write every frame already queued before flushing,
//! so a busy link sends many frames per syscall. A malformed or oversize frame closes the
//! connection (and is counted); it never panics. A dead link is replaced on the next
//! request. Both sides set TCP keepalive ([`KEEPALIVE`]), and a link on which a request
//! timed out with nothing received since it was sent is *wedged* (packets silently
//! dropped, e.g. after a conntrack flush): it is closed and replaced on the next request.
//! This module knows nothing of actors: it moves [`Request`]s and [`Response`]s.
//!
//! **Seam.** Links are made by a [`Connector`] and connections are served by
//! [`serve_connection`], both over any byte stream; production uses [`TcpConnector`] and
//! [`serve`] (a `TcpListener`), the deterministic simulation in-memory pipes routed by its
//! network. The wire format is the same either way.
//!
//! [`wire`]: crate::wire

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use prometheus::IntCounterVec;
use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, BufWriter},
    net::{TcpListener, TcpStream},
    sync::{mpsc, oneshot},
};

use crate::hashing::HashMap;
use crate::wire::{self, Frame, Request, Response};

/// Frames queued for one connection's writer before senders wait.
const WRITE_QUEUE: usize = 16 * 1024;
/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// TCP keepalive of every transport connection: first probe after 10 s idle, then every
/// 3 s, dead after 3 unanswered probes (about 19 s for an idle link that went silent).
pub const KEEPALIVE: (Duration, Duration, u32) =
    (Duration::from_secs(10), Duration::from_secs(3), 3);

fn set_keepalive(stream: &TcpStream) {
    let (time, interval, retries) = KEEPALIVE;
    let ka = socket2::TcpKeepalive::new()
        .with_time(time)
        .with_interval(interval)
        .with_retries(retries);
    if let Err(e) = socket2::SockRef::from(stream).set_tcp_keepalive(&ka) {
        tracing::debug!(error = %e, "cannot set TCP keepalive");
    }
}

/// The reading half of a transport connection.
pub type ReadHalf = Box<dyn AsyncRead + Send + Unpin>;
/// The writing half of a transport connection.
pub type WriteHalf = Box<dyn AsyncWrite + Send + Unpin>;
/// A transport connection, split.
pub type Connection = (ReadHalf, WriteHalf);
/// What [`Connector::connect`] returns.
pub type Connecting<'a> = Pin<Box<dyn Future<Output = std::io::Result<Connection>> + Send + 'a>>;

/// Opens connections to peers' transport addresses (`host:port`). An error of kind
/// `ConnectionRefused` means nothing listens there ([`TransportError::Refused`]); the
/// caller bounds the attempt with its own timeout.
pub trait Connector: Send + Sync + fmt::Debug {
    /// Connects to `addr`.
    fn connect<'a>(&'a self, addr: &'a str) -> Connecting<'a>;
}

/// The production [`Connector`]: TCP with `TCP_NODELAY` and [`KEEPALIVE`].
#[derive(Clone, Copy, Debug, Default)]
pub struct TcpConnector;

/// A TCP connection to `addr` with `TCP_NODELAY` and [`KEEPALIVE`] (what every production
/// link starts as; [`crate::tls`] adds mutual TLS on top).
pub(crate) async fn tcp_connect(addr: &str) -> std::io::Result<TcpStream> {
    let stream = TcpStream::connect(addr).await?;
    let _ = stream.set_nodelay(true);
    set_keepalive(&stream);
    Ok(stream)
}

impl Connector for TcpConnector {
    fn connect<'a>(&'a self, addr: &'a str) -> Connecting<'a> {
        Box::pin(async move {
            let (r, w) = tcp_connect(addr).await?.into_split();
            Ok((Box::new(r) as ReadHalf, Box::new(w) as WriteHalf))
        })
    }
}

/// What [`Acceptor::accept`] returns.
pub type Accepting = Pin<Box<dyn Future<Output = std::io::Result<Connection>> + Send>>;

/// Turns an accepted TCP stream into a transport connection: as is ([`PlainAcceptor`]), or
/// after a handshake that authenticates the peer ([`crate::tls::TlsAcceptor`]). An error
/// refuses the peer; [`serve`] runs each acceptance in the connection's own task.
pub trait Acceptor: Send + Sync + fmt::Debug {
    /// Accepts `stream`.
    fn accept(&self, stream: TcpStream) -> Accepting;
}

/// Accepts every peer, unauthenticated: tests, benchmarks and nodes started without a
/// credential.
#[derive(Clone, Copy, Debug, Default)]
pub struct PlainAcceptor;

impl Acceptor for PlainAcceptor {
    fn accept(&self, stream: TcpStream) -> Accepting {
        Box::pin(async move {
            let (r, w) = stream.into_split();
            Ok((Box::new(r) as ReadHalf, Box::new(w) as WriteHalf))
        })
    }
}

/// Why a request got no response.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum TransportError {
    /// The peer could not be reached or the connection broke; the request may or may not
    /// have been handled.
    #[error("peer {0} unreachable: {1}")]
    Unreachable(String, String),
    /// The peer's address refused the connection: no process listens there any more.
    #[error("peer {0} refused the connection")]
    Refused(String),
    /// No response in time.
    #[error("no response from {0} in time")]
    Timeout(String),
    /// The request would be a frame above the limit; it was not sent.
    #[error("request of {0} bytes exceeds the frame limit of {1}")]
    TooLarge(usize, usize),
}

/// Encodes a response; one above the frame limit becomes a `TooLarge` failure instead (the
/// peer would refuse the frame and close the link).
fn encode_response(corr: u64, resp: Response, max_frame: usize) -> Bytes {
    let mut buf = BytesMut::with_capacity(32);
    wire::encode(&Frame::Response(corr, resp), &mut buf);
    if buf.len() - 4 > max_frame {
        let len = buf.len() - 4;
        buf.clear();
        wire::encode(
            &Frame::Response(
                corr,
                Response::Failed(crate::error::DeliveryError::TooLarge(format!(
                    "answer of {len} bytes exceeds the frame limit of {max_frame}"
                ))),
            ),
            &mut buf,
        );
    }
    buf.freeze()
}

type Pending = Mutex<HashMap<u64, oneshot::Sender<Response>>>;

#[derive(Debug)]
struct Link {
    addr: Arc<str>,
    tx: mpsc::Sender<Bytes>,
    pending: Arc<Pending>,
    alive: Arc<AtomicBool>,
    /// Frames received so far (bumped by the reader).
    received: Arc<AtomicU64>,
    reader: tokio::task::AbortHandle,
}

impl Link {
    /// Closes the link: its reader stops, every waiting request fails, and the next
    /// request connects anew.
    fn kill(&self) {
        self.alive.store(false, Ordering::Release);
        self.reader.abort();
        lock(&self.pending).clear();
    }
}

use crate::sync::lock;

/// Writes every queued frame, flushing when the queue is momentarily empty.
async fn write_frames<W: AsyncWrite + Unpin>(mut rx: mpsc::Receiver<Bytes>, w: W) {
    let mut w = BufWriter::with_capacity(64 * 1024, w);
    while let Some(first) = rx.recv().await {
        if w.write_all(&first).await.is_err() {
            return;
        }
        while let Ok(more) = rx.try_recv() {
            if w.write_all(&more).await.is_err() {
                return;
            }
        }
        if w.flush().await.is_err() {
            return;
        }
    }
}

/// The client side: one link per peer address, created on demand.
#[derive(Debug)]
pub struct Peers {
    links: Mutex<HashMap<Arc<str>, Arc<Link>>>,
    next_corr: AtomicU64,
    max_frame: usize,
    errors: IntCounterVec,
    connector: Arc<dyn Connector>,
}

impl Peers {
    /// No links yet; frames above `max_frame` bytes are refused; links are TCP.
    pub fn new(max_frame: usize, errors: IntCounterVec) -> Self {
        Self::with_connector(max_frame, errors, Arc::new(TcpConnector))
    }

    /// Like [`new`](Self::new), with links made by `connector`.
    pub fn with_connector(
        max_frame: usize,
        errors: IntCounterVec,
        connector: Arc<dyn Connector>,
    ) -> Self {
        Self {
            links: Mutex::new(HashMap::default()),
            next_corr: AtomicU64::new(1),
            max_frame,
            errors,
            connector,
        }
    }

    async fn link(&self, addr: &str) -> Result<Arc<Link>, TransportError> {
        if let Some(l) = lock(&self.links).get(addr)
            && l.alive.load(Ordering::Acquire)
        {
            return Ok(l.clone());
        }
        let (r, w) = tokio::time::timeout(CONNECT_TIMEOUT, self.connector.connect(addr))
            .await
            .map_err(|_| TransportError::Unreachable(addr.into(), "connect timed out".into()))?
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::ConnectionRefused {
                    TransportError::Refused(addr.into())
                } else {
                    TransportError::Unreachable(addr.into(), e.to_string())
                }
            })?;
        let (tx, rx) = mpsc::channel(WRITE_QUEUE);
        let pending: Arc<Pending> = Arc::default();
        let alive = Arc::new(AtomicBool::new(true));
        let received = Arc::new(AtomicU64::new(0));
        tokio::spawn(write_frames(rx, w));
        let reader = {
            let pending = pending.clone();
            let alive = alive.clone();
            let received = received.clone();
            let max = self.max_frame;
            let errors = self.errors.clone();
            let peer: Arc<str> = addr.into();
            tokio::spawn(async move {
                let mut r = BufReader::with_capacity(64 * 1024, r);
                loop {
                    let frame = wire::read_frame(&mut r, max).await;
                    received.fetch_add(1, Ordering::AcqRel);
                    match frame {
                        Ok(Some(Ok(Frame::Response(corr, resp)))) => {
                            if let Some(tx) = lock(&pending).remove(&corr) {
                                let _ = tx.send(resp);
                            }
                        }
                        Ok(Some(Ok(Frame::Request(..)))) | Ok(Some(Err(_))) => {
                            errors.with_label_values(&["malformed_frame"]).inc();
                            tracing::warn!(%peer, "malformed frame from peer; closing the link");
                            break;
                        }
                        Ok(None) => break,
                        Err(e) => {
                            errors.with_label_values(&["connection_lost"]).inc();
                            tracing::debug!(%peer, error = %e, "link lost");
                            break;
                        }
                    }
                }
                alive.store(false, Ordering::Release);
                // Dropping the senders fails every waiting request.
                lock(&pending).clear();
            })
            .abort_handle()
        };
        let link = Arc::new(Link {
            addr: addr.into(),
            tx,
            pending,
            alive,
            received,
            reader,
        });
        let mut links = lock(&self.links);
        // Another task may have connected meanwhile; keep one link per peer.
        if let Some(l) = links.get(addr)
            && l.alive.load(Ordering::Acquire)
        {
            return Ok(l.clone());
        }
        links.insert(link.addr.clone(), link.clone());
        Ok(link)
    }

    /// Sends `request` to the node at `addr` and waits up to `timeout` for its response.
    pub async fn request(
        &self,
        addr: &str,
        request: Request,
        timeout: Duration,
    ) -> Result<Response, TransportError> {
        let corr = self.next_corr.fetch_add(1, Ordering::Relaxed);
        let mut buf = BytesMut::with_capacity(64);
        wire::encode(&Frame::Request(corr, request), &mut buf);
        if buf.len() - 4 > self.max_frame {
            return Err(TransportError::TooLarge(buf.len() - 4, self.max_frame));
        }
        let link = self.link(addr).await?;
        let (tx, rx) = oneshot::channel();
        let received_before = link.received.load(Ordering::Acquire);
        lock(&link.pending).insert(corr, tx);
        if !link.alive.load(Ordering::Acquire) {
            lock(&link.pending).remove(&corr);
            return Err(TransportError::Unreachable(
                addr.into(),
                "link closed".into(),
            ));
        }
        if link.tx.send(buf.freeze()).await.is_err() {
            lock(&link.pending).remove(&corr);
            link.alive.store(false, Ordering::Release);
            return Err(TransportError::Unreachable(
                addr.into(),
                "link closed".into(),
            ));
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(_)) => Err(TransportError::Unreachable(
                addr.into(),
                "connection lost before the response".into(),
            )),
            Err(_) => {
                lock(&link.pending).remove(&corr);
                if link.received.load(Ordering::Acquire) == received_before {
                    // Silent since this request was sent: wedged. Replace it.
                    self.errors.with_label_values(&["link_wedged"]).inc();
                    tracing::warn!(
                        peer = addr,
                        "no frame received on the link since a request that timed out; replacing the link"
                    );
                    link.kill();
                    let mut links = lock(&self.links);
                    if links.get(addr).is_some_and(|l| Arc::ptr_eq(l, &link)) {
                        links.remove(addr);
                    }
                }
                Err(TransportError::Timeout(addr.into()))
            }
        }
    }
}

/// What the server calls for each request.
pub type Handler =
    Arc<dyn Fn(Request) -> Pin<Box<dyn Future<Output = Response> + Send>> + Send + Sync>;

/// Answers a request at once when it can (no waiting), or gives it back for [`Handler`].
pub type FastPath = Arc<dyn Fn(Request) -> Result<Response, Request> + Send + Sync>;

/// Accepts peer connections on `listener` forever through `acceptor`, answering each
/// request with `handler`. A peer the acceptor refuses is counted (`handshake_refused`) and
/// disconnected.
pub async fn serve(
    listener: TcpListener,
    acceptor: Arc<dyn Acceptor>,
    fast: FastPath,
    handler: Handler,
    max_frame: usize,
    errors: IntCounterVec,
) -> std::io::Result<()> {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // Out of file descriptors and the like: wait and go on.
                tracing::warn!(error = %e, "accepting a peer connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        set_keepalive(&stream);
        let accepting = acceptor.accept(stream);
        let (fast, handler, errors) = (fast.clone(), handler.clone(), errors.clone());
        tokio::spawn(async move {
            match accepting.await {
                Ok((r, w)) => {
                    serve_connection(r, w, peer.to_string(), fast, handler, max_frame, errors)
                        .await;
                }
                Err(e) => {
                    errors.with_label_values(&["handshake_refused"]).inc();
                    tracing::warn!(%peer, error = %e, "transport peer refused");
                }
            }
        });
    }
}

/// Serves one accepted peer connection until it closes: every request is answered with
/// `fast` when it can be at once, else with `handler` in a task of its own. `peer` names
/// the connection in logs.
pub async fn serve_connection(
    r: ReadHalf,
    w: WriteHalf,
    peer: String,
    fast: FastPath,
    handler: Handler,
    max_frame: usize,
    errors: IntCounterVec,
) {
    let (tx, rx) = mpsc::channel::<Bytes>(WRITE_QUEUE);
    tokio::spawn(write_frames(rx, w));
    let mut r = BufReader::with_capacity(64 * 1024, r);
    loop {
        match wire::read_frame(&mut r, max_frame).await {
            Ok(Some(Ok(Frame::Request(corr, req)))) => {
                // Requests that need no waiting (a tell to an active actor) are
                // answered inline, in order, without a task per request.
                let req = match fast(req) {
                    Ok(resp) => {
                        if tx
                            .send(encode_response(corr, resp, max_frame))
                            .await
                            .is_err()
                        {
                            break;
                        }
                        continue;
                    }
                    Err(req) => req,
                };
                let handler = handler.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let resp = handler(req).await;
                    let _ = tx.send(encode_response(corr, resp, max_frame)).await;
                });
            }
            Ok(Some(Ok(Frame::Response(..)))) | Ok(Some(Err(_))) => {
                errors.with_label_values(&["malformed_frame"]).inc();
                tracing::warn!(%peer, "malformed frame from peer; closing the connection");
                break;
            }
            Ok(None) => break,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "peer connection closed");
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::Opts;

    /// Connects every address to a fresh in-memory pipe served by `serve_connection`,
    /// which answers a `Deliver` with its payload; "refused" addresses are refused.
    #[derive(Debug)]
    struct Pipes(IntCounterVec);

    impl Connector for Pipes {
        fn connect<'a>(&'a self, addr: &'a str) -> Connecting<'a> {
            Box::pin(async move {
                if addr.starts_with("refused") {
                    return Err(std::io::ErrorKind::ConnectionRefused.into());
                }
                let (client, server) = tokio::io::duplex(1024);
                let (sr, sw) = tokio::io::split(server);
                let fast: FastPath = Arc::new(Err);
                let handler: Handler = Arc::new(|req| {
                    Box::pin(async move {
                        match req {
                            Request::Deliver { payload, .. } => Response::Reply(payload),
                            _ => Response::HandOffAck,
                        }
                    })
                });
                tokio::spawn(serve_connection(
                    Box::new(sr),
                    Box::new(sw),
                    addr.to_owned(),
                    fast,
                    handler,
                    1 << 20,
                    self.0.clone(),
                ));
                let (cr, cw) = tokio::io::split(client);
                Ok((Box::new(cr) as ReadHalf, Box::new(cw) as WriteHalf))
            })
        }
    }

    fn deliver(payload: &'static str) -> Request {
        Request::Deliver {
            ask: true,
            order: (0, 1),
            hops: 1,
            actor_type: "counter".into(),
            id: "x".into(),
            method: "add".into(),
            payload: Bytes::from_static(payload.as_bytes()),
        }
    }

    #[tokio::test]
    async fn links_made_by_another_connector_carry_the_same_frames() {
        let errors =
            IntCounterVec::new(Opts::new("errors", "errors"), &["kind"]).unwrap_or_else(|e| {
                panic!("metric: {e}");
            });
        let peers = Peers::with_connector(1 << 20, errors.clone(), Arc::new(Pipes(errors)));
        let timeout = Duration::from_secs(5);
        for p in ["one", "two", "three"] {
            let r = peers.request("b:7000", deliver(p), timeout).await;
            assert_eq!(r, Ok(Response::Reply(Bytes::from_static(p.as_bytes()))));
        }
        assert_eq!(lock(&peers.links).len(), 1, "one link per peer, reused");
        let r = peers.request("refused:7000", deliver("x"), timeout).await;
        assert_eq!(r, Err(TransportError::Refused("refused:7000".into())));
    }
}
