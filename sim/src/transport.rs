//! The actor runtime's transport on the simulated network: node-to-node links are
//! in-memory pipes ([`tokio::io::duplex`]) behind the runtime's
//! [`Connector`](troupe_actors::transport::Connector) seam, routed by [`SimNet`] with the
//! faults it applies to probes.
//!
//! * **connect** to an address where no node process listens is refused; across a cut
//!   (either direction) it never completes (the runtime's connect timeout fires, as for
//!   a lost SYN); otherwise it takes a round trip.
//! * **bytes** of each direction go through a relay task of the *sending* node's runtime
//!   (so a crashed sender's relays die with it and the peer reads end-of-stream, and a
//!   paused receiver simply reads nothing): each chunk waits out the leg's latency, and
//!   while the leg is cut it is held, in order, as TCP retransmits, and delivered when the
//!   cut heals (a request sent into a partition may arrive late). A relay stops when
//!   either end closes or the process it serves is gone.
//! * **accept** happens in the receiving node's runtime ([`accept_loop`]): a paused node's
//!   connections wait, as in a listen backlog.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::mpsc;
use troupe_actors::ActorRuntime;
use troupe_actors::transport::{Connecting, Connection, Connector, ReadHalf, WriteHalf};

use crate::net::SimNet;

/// Bytes buffered per pipe (per direction, each side of the relay).
const PIPE_BYTES: usize = 64 * 1024;
/// How often a relay holding bytes across a cut looks again.
const HOLD_POLL: Duration = Duration::from_millis(10);

/// A connection on its way to the node that accepts it.
#[derive(Debug)]
pub struct Incoming {
    from: String,
    from_process: u64,
    /// The accepting side reads the caller's bytes here.
    read: DuplexStream,
    /// The accepting side writes here; its relay carries it to `back`.
    write: DuplexStream,
    relay_in: DuplexStream,
    back: DuplexStream,
}

/// The [`Connector`] of the node at `me` (process `process`, see [`SimNet::listen`]).
#[derive(Clone, Debug)]
pub struct SimConnector {
    net: SimNet,
    me: String,
    process: u64,
}

impl SimConnector {
    /// Connections from the node process `process` at `me`.
    pub fn new(net: &SimNet, me: &str, process: u64) -> Self {
        Self {
            net: net.clone(),
            me: me.to_owned(),
            process,
        }
    }

    async fn open(&self, addr: &str) -> io::Result<Connection> {
        let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
        let refused = || io::Error::from(io::ErrorKind::ConnectionRefused);
        let (to, _, _) = self.net.listener_at(host).ok_or_else(refused)?;
        let (Some(there), Some(back)) = (self.net.leg(&self.me, &to), self.net.leg(&to, &self.me))
        else {
            // The handshake is lost: the caller's connect timeout decides.
            std::future::pending::<()>().await;
            return Err(refused());
        };
        tokio::time::sleep(there + back).await;
        let (to, to_process, accept) = self.net.listener_at(host).ok_or_else(refused)?;
        let (client_write, relay_in) = tokio::io::duplex(PIPE_BYTES);
        let (relay_out, server_read) = tokio::io::duplex(PIPE_BYTES);
        let (server_write, back_in) = tokio::io::duplex(PIPE_BYTES);
        let (back_out, client_read) = tokio::io::duplex(PIPE_BYTES);
        accept
            .send(Incoming {
                from: self.me.clone(),
                from_process: self.process,
                read: server_read,
                write: server_write,
                relay_in: back_in,
                back: back_out,
            })
            .map_err(|_| refused())?;
        tokio::spawn(relay(
            self.net.clone(),
            (self.me.clone(), self.process),
            (to, to_process),
            relay_in,
            relay_out,
        ));
        Ok((
            Box::new(client_read) as ReadHalf,
            Box::new(client_write) as WriteHalf,
        ))
    }
}

impl Connector for SimConnector {
    fn connect<'a>(&'a self, addr: &'a str) -> Connecting<'a> {
        Box::pin(self.open(addr))
    }
}

/// Carries bytes from `input` to `output`, the leg `from` → `to` of the network: each
/// chunk after the leg's latency, held while the leg is cut; stops when an end closes or
/// either process is gone.
async fn relay(
    net: SimNet,
    from: (String, u64),
    to: (String, u64),
    mut input: DuplexStream,
    mut output: DuplexStream,
) {
    let mut buf = vec![0u8; PIPE_BYTES];
    loop {
        let n = match input.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        loop {
            if !net.process_alive(&from.0, from.1) || !net.process_alive(&to.0, to.1) {
                return;
            }
            match net.leg(&from.0, &to.0) {
                Some(latency) => {
                    tokio::time::sleep(latency).await;
                    break;
                }
                None => tokio::time::sleep(HOLD_POLL).await,
            }
        }
        if output.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// Accepts the connections made to the node process `process` at `me` and serves each
/// with `actors` (in this node's runtime), until the network forgets the process.
pub async fn accept_loop(
    net: SimNet,
    me: String,
    process: u64,
    mut incoming: mpsc::UnboundedReceiver<Incoming>,
    actors: ActorRuntime,
) {
    while let Some(c) = incoming.recv().await {
        tokio::spawn(relay(
            net.clone(),
            (me.clone(), process),
            (c.from.clone(), c.from_process),
            c.relay_in,
            c.back,
        ));
        let actors = actors.clone();
        tokio::spawn(async move {
            actors
                .serve_transport_connection(Box::new(c.read), Box::new(c.write), c.from)
                .await;
        });
    }
}
