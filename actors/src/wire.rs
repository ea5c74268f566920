//! The node-to-node wire format: length-prefixed frames with a compact binary body.
//!
//! ```text
//!  frame    = len:u32be  kind:u8  correlation:u64be  body          (len counts kind..body)
//!  string   = n:u32be utf8[n]            bytes = n:u32be [n]
//!  order    = epoch:u64 version:u64       generation = epoch:u64 version:u64 counter:u64
//!  Deliver  (0x01) flags:u8(bit0 ask) order hops:u8 type id method payload:bytes
//!  Claim    (0x02) cluster:string order claimant:string claimant_addr:string type id
//!  HandOff  (0x03) generation type id state:bytes
//!  Witness  (0x04) type id present:u8 [marker]   marker = holder:string incarnation:string generation
//!  Reply    (0x81) payload:bytes              Failed (0x82) code:u8 text:string extra:u64
//!  Claimed  (0x83) present:u8 [generation state:bytes]
//!  Conflict (0x84) order                     HandOffAck (0x85)
//!  Moved    (0x86) order pod:string address:string
//!  Witnessed (0x87) present:u8 [marker]
//! ```
//!
//! Decoding never panics: every read is bounds-checked and a malformed frame is a
//! [`WireError`], after which the connection is closed. Frames above the configured limit
//! are refused before their body is read. This module does no I/O besides [`read_frame`].

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::{
    activation::{Generation, State},
    error::{ActorError, DeliveryError},
    placement::TableOrder,
};
use std::time::Duration;

/// A malformed or oversize frame.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    /// The frame announced more bytes than allowed.
    #[error("frame of {0} bytes exceeds the limit of {1}")]
    TooLarge(usize, usize),
    /// The frame ended early.
    #[error("frame truncated")]
    Truncated,
    /// Unknown frame kind or error code.
    #[error("unknown frame kind or code {0:#x}")]
    UnknownKind(u8),
    /// A string was not UTF-8.
    #[error("string is not UTF-8")]
    BadString,
    /// Bytes were left after the body.
    #[error("{0} trailing bytes after the frame body")]
    Trailing(usize),
}

/// "`holder` (with `incarnation`) runs this actor at `generation`": kept by the actor's
/// witness so that a state lost with a dead holder can be counted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Marker {
    /// The holder's pod.
    pub holder: String,
    /// Its incarnation.
    pub incarnation: String,
    /// The generation of its activation.
    pub generation: Generation,
}

/// A request from one node to another.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// Deliver a message (forwarded `ask` or `tell`).
    Deliver {
        /// Wait for the actor's reply (ask) or only for acceptance (tell).
        ask: bool,
        /// The sender's member-table order `(epoch, version)`.
        order: TableOrder,
        /// How many nodes forwarded it already.
        hops: u8,
        /// Actor type.
        actor_type: String,
        /// Actor id.
        id: String,
        /// Method.
        method: String,
        /// Payload.
        payload: Bytes,
    },
    /// "I own this actor now under `order`: deactivate it and give me its state."
    Claim {
        /// The claimant's cluster id: claims across cluster ids are refused.
        cluster: String,
        /// The claimant's member-table order.
        order: TableOrder,
        /// The claimant's pod.
        claimant: String,
        /// The claimant's transport address (`ip:port`), for [`Response::Moved`] answers
        /// given to later claimants.
        claimant_addr: String,
        /// Actor type.
        actor_type: String,
        /// Actor id.
        id: String,
    },
    /// "Keep this marker for the actor (or none) and give me the one you had."
    Witness {
        /// Actor type.
        actor_type: String,
        /// Actor id.
        id: String,
        /// The new marker.
        marker: Option<Marker>,
    },
    /// "Here is the state of an actor you own" (sent by a leaving or former owner).
    HandOff {
        /// Generation of the state (higher is newer).
        generation: Generation,
        /// Actor type.
        actor_type: String,
        /// Actor id.
        id: String,
        /// The state.
        state: Bytes,
    },
}

/// An answer to a [`Request`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    /// The actor's reply (ask) or an empty acceptance (tell).
    Reply(Bytes),
    /// Delivery failed.
    Failed(DeliveryError),
    /// The claimed actor is released; its state, if any, with its generation.
    Claimed(Option<State>),
    /// The claim is refused: the receiver's table (or the claim it granted) is newer; wait
    /// for that table.
    Conflict {
        /// The receiver's table order.
        order: TableOrder,
    },
    /// The hand-off is stored (or was already superseded).
    HandOffAck,
    /// The marker a witness had for the actor.
    Witnessed(Option<Marker>),
    /// Neither the actor nor its state is here: it was handed to `pod` (claimed under
    /// `order`); claim it from there.
    Moved {
        /// The order of the claim that took it.
        order: TableOrder,
        /// The pod that claimed it.
        pod: String,
        /// That pod's transport address.
        address: String,
    },
}

/// A decoded frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// A request and its correlation id.
    Request(u64, Request),
    /// A response to the request with that correlation id.
    Response(u64, Response),
}

fn put_str(b: &mut BytesMut, s: &str) {
    b.put_u32(s.len() as u32);
    b.put_slice(s.as_bytes());
}

fn put_bytes(b: &mut BytesMut, s: &[u8]) {
    b.put_u32(s.len() as u32);
    b.put_slice(s);
}

fn put_marker(b: &mut BytesMut, m: &Option<Marker>) {
    match m {
        None => b.put_u8(0),
        Some(m) => {
            b.put_u8(1);
            put_str(b, &m.holder);
            put_str(b, &m.incarnation);
            put_generation(b, m.generation);
        }
    }
}

fn put_order(b: &mut BytesMut, o: TableOrder) {
    b.put_u64(o.0);
    b.put_u64(o.1);
}

fn put_generation(b: &mut BytesMut, g: Generation) {
    b.put_u64(g.epoch);
    b.put_u64(g.version);
    b.put_u64(g.counter);
}

/// Bytes a frame adds around a Claimed or HandOff state, and around a Reply payload, at
/// most (header, generation, names up to 256 bytes each): a state or reply must stay
/// this much below the frame limit.
pub const FRAME_OVERHEAD: usize = 1024;

/// The encoded size of `frame` including its length prefix.
pub fn encoded_len(frame: &Frame) -> usize {
    let mut b = BytesMut::new();
    encode(frame, &mut b);
    b.len()
}

/// Appends the encoded frame to `out`.
pub fn encode(frame: &Frame, out: &mut BytesMut) {
    let start = out.len();
    out.put_u32(0);
    match frame {
        Frame::Request(corr, r) => match r {
            Request::Deliver {
                ask,
                order,
                hops,
                actor_type,
                id,
                method,
                payload,
            } => {
                out.put_u8(0x01);
                out.put_u64(*corr);
                out.put_u8(u8::from(*ask));
                put_order(out, *order);
                out.put_u8(*hops);
                put_str(out, actor_type);
                put_str(out, id);
                put_str(out, method);
                put_bytes(out, payload);
            }
            Request::Claim {
                cluster,
                order,
                claimant,
                claimant_addr,
                actor_type,
                id,
            } => {
                out.put_u8(0x02);
                out.put_u64(*corr);
                put_str(out, cluster);
                put_order(out, *order);
                put_str(out, claimant);
                put_str(out, claimant_addr);
                put_str(out, actor_type);
                put_str(out, id);
            }
            Request::Witness {
                actor_type,
                id,
                marker,
            } => {
                out.put_u8(0x04);
                out.put_u64(*corr);
                put_str(out, actor_type);
                put_str(out, id);
                put_marker(out, marker);
            }
            Request::HandOff {
                generation,
                actor_type,
                id,
                state,
            } => {
                out.put_u8(0x03);
                out.put_u64(*corr);
                put_generation(out, *generation);
                put_str(out, actor_type);
                put_str(out, id);
                put_bytes(out, state);
            }
        },
        Frame::Response(corr, r) => match r {
            Response::Reply(p) => {
                out.put_u8(0x81);
                out.put_u64(*corr);
                put_bytes(out, p);
            }
            Response::Failed(e) => {
                out.put_u8(0x82);
                out.put_u64(*corr);
                let (code, text, extra) = error_parts(e);
                out.put_u8(code);
                put_str(out, &text);
                out.put_u64(extra);
            }
            Response::Claimed(state) => {
                out.put_u8(0x83);
                out.put_u64(*corr);
                match state {
                    None => out.put_u8(0),
                    Some((generation, s)) => {
                        out.put_u8(1);
                        put_generation(out, *generation);
                        put_bytes(out, s);
                    }
                }
            }
            Response::Conflict { order } => {
                out.put_u8(0x84);
                out.put_u64(*corr);
                put_order(out, *order);
            }
            Response::HandOffAck => {
                out.put_u8(0x85);
                out.put_u64(*corr);
            }
            Response::Witnessed(marker) => {
                out.put_u8(0x87);
                out.put_u64(*corr);
                put_marker(out, marker);
            }
            Response::Moved {
                order,
                pod,
                address,
            } => {
                out.put_u8(0x86);
                out.put_u64(*corr);
                put_order(out, *order);
                put_str(out, pod);
                put_str(out, address);
            }
        },
    }
    let len = (out.len() - start - 4) as u32;
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
}

fn error_parts(e: &DeliveryError) -> (u8, std::borrow::Cow<'_, str>, u64) {
    let (code, text, extra): (u8, &str, u64) = match e {
        // Sent as `Unavailable` with its text: a code of its own would break the links of
        // nodes of the previous version (an unknown code closes the connection).
        DeliveryError::AtCapacity { .. } => return (6, e.to_string().into(), 0),
        DeliveryError::UnknownType(s) => (1, s, 0),
        DeliveryError::InvalidAddress(s) => (2, s, 0),
        DeliveryError::MailboxFull { actor, retry_after } => (3, actor, retry_after.as_secs()),
        DeliveryError::Dropped(s) => (4, s, 0),
        DeliveryError::NotAccepting => (5, "", 0),
        DeliveryError::Unavailable(s) => (6, s, 0),
        DeliveryError::Timeout(d) => (7, "", d.as_millis() as u64),
        DeliveryError::Actor(ActorError::BadRequest(s)) => (8, s, 0),
        DeliveryError::Actor(ActorError::Failed(s)) => (9, s, 0),
        DeliveryError::TooLarge(s) => (10, s, 0),
        DeliveryError::Actor(ActorError::TooLarge(s)) => (11, s, 0),
    };
    (code, text.into(), extra)
}

fn error_from_parts(code: u8, text: String, extra: u64) -> Result<DeliveryError, WireError> {
    Ok(match code {
        1 => DeliveryError::UnknownType(text),
        2 => DeliveryError::InvalidAddress(text),
        3 => DeliveryError::MailboxFull {
            actor: text,
            retry_after: Duration::from_secs(extra),
        },
        4 => DeliveryError::Dropped(text),
        5 => DeliveryError::NotAccepting,
        6 => DeliveryError::Unavailable(text),
        7 => DeliveryError::Timeout(Duration::from_millis(extra)),
        8 => DeliveryError::Actor(ActorError::BadRequest(text)),
        9 => DeliveryError::Actor(ActorError::Failed(text)),
        10 => DeliveryError::TooLarge(text),
        11 => DeliveryError::Actor(ActorError::TooLarge(text)),
        other => return Err(WireError::UnknownKind(other)),
    })
}

struct Reader {
    buf: Bytes,
}

impl Reader {
    fn need(&self, n: usize) -> Result<(), WireError> {
        if self.buf.remaining() < n {
            Err(WireError::Truncated)
        } else {
            Ok(())
        }
    }
    fn u8(&mut self) -> Result<u8, WireError> {
        self.need(1)?;
        Ok(self.buf.get_u8())
    }
    fn u32(&mut self) -> Result<u32, WireError> {
        self.need(4)?;
        Ok(self.buf.get_u32())
    }
    fn u64(&mut self) -> Result<u64, WireError> {
        self.need(8)?;
        Ok(self.buf.get_u64())
    }
    fn bytes(&mut self) -> Result<Bytes, WireError> {
        let n = self.u32()? as usize;
        self.need(n)?;
        Ok(self.buf.split_to(n))
    }
    fn string(&mut self) -> Result<String, WireError> {
        let b = self.bytes()?;
        String::from_utf8(b.to_vec()).map_err(|_| WireError::BadString)
    }
    fn order(&mut self) -> Result<TableOrder, WireError> {
        Ok((self.u64()?, self.u64()?))
    }
    fn marker(&mut self) -> Result<Option<Marker>, WireError> {
        Ok(match self.u8()? {
            0 => None,
            _ => Some(Marker {
                holder: self.string()?,
                incarnation: self.string()?,
                generation: self.generation()?,
            }),
        })
    }
    fn generation(&mut self) -> Result<Generation, WireError> {
        Ok(Generation {
            epoch: self.u64()?,
            version: self.u64()?,
            counter: self.u64()?,
        })
    }
}

/// Decodes one frame body (everything after the length prefix).
pub fn decode(body: Bytes) -> Result<Frame, WireError> {
    let mut r = Reader { buf: body };
    let kind = r.u8()?;
    let corr = r.u64()?;
    let frame = match kind {
        0x01 => Frame::Request(
            corr,
            Request::Deliver {
                ask: r.u8()? & 1 == 1,
                order: r.order()?,
                hops: r.u8()?,
                actor_type: r.string()?,
                id: r.string()?,
                method: r.string()?,
                payload: r.bytes()?,
            },
        ),
        0x02 => Frame::Request(
            corr,
            Request::Claim {
                cluster: r.string()?,
                order: r.order()?,
                claimant: r.string()?,
                claimant_addr: r.string()?,
                actor_type: r.string()?,
                id: r.string()?,
            },
        ),
        0x03 => Frame::Request(
            corr,
            Request::HandOff {
                generation: r.generation()?,
                actor_type: r.string()?,
                id: r.string()?,
                state: r.bytes()?,
            },
        ),
        0x04 => Frame::Request(
            corr,
            Request::Witness {
                actor_type: r.string()?,
                id: r.string()?,
                marker: r.marker()?,
            },
        ),
        0x81 => Frame::Response(corr, Response::Reply(r.bytes()?)),
        0x87 => Frame::Response(corr, Response::Witnessed(r.marker()?)),
        0x82 => {
            let code = r.u8()?;
            let text = r.string()?;
            let extra = r.u64()?;
            Frame::Response(corr, Response::Failed(error_from_parts(code, text, extra)?))
        }
        0x83 => {
            let state = match r.u8()? {
                0 => None,
                _ => Some((r.generation()?, r.bytes()?)),
            };
            Frame::Response(corr, Response::Claimed(state))
        }
        0x84 => Frame::Response(corr, Response::Conflict { order: r.order()? }),
        0x85 => Frame::Response(corr, Response::HandOffAck),
        0x86 => Frame::Response(
            corr,
            Response::Moved {
                order: r.order()?,
                pod: r.string()?,
                address: r.string()?,
            },
        ),
        other => return Err(WireError::UnknownKind(other)),
    };
    if r.buf.has_remaining() {
        return Err(WireError::Trailing(r.buf.remaining()));
    }
    Ok(frame)
}

/// Reads one frame body; `Ok(None)` at a clean end of stream.
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    max_len: usize,
) -> std::io::Result<Option<Result<Frame, WireError>>> {
    let len = match reader.read_u32().await {
        Ok(n) => n as usize,
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    };
    if len > max_len {
        return Ok(Some(Err(WireError::TooLarge(len, max_len))));
    }
    let mut buf = BytesMut::zeroed(len);
    reader.read_exact(&mut buf).await?;
    Ok(Some(decode(buf.freeze())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(f: Frame) {
        let mut b = BytesMut::new();
        encode(&f, &mut b);
        let len = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
        assert_eq!(len, b.len() - 4);
        assert_eq!(decode(b.freeze().slice(4..)), Ok(f));
    }

    fn samples() -> Vec<Frame> {
        vec![
            Frame::Request(
                7,
                Request::Deliver {
                    ask: true,
                    order: (1, 3),
                    hops: 1,
                    actor_type: "counter".into(),
                    id: "c-1".into(),
                    method: "add".into(),
                    payload: Bytes::from_static(b"{\"by\":2}"),
                },
            ),
            Frame::Request(
                8,
                Request::Claim {
                    cluster: "c1".into(),
                    order: (0, 9),
                    claimant: "pod-a".into(),
                    claimant_addr: "10.0.0.1:25520".into(),
                    actor_type: "kv".into(),
                    id: "x".into(),
                },
            ),
            Frame::Request(
                9,
                Request::HandOff {
                    generation: Generation {
                        epoch: 1,
                        version: 4,
                        counter: 2,
                    },
                    actor_type: "kv".into(),
                    id: "x".into(),
                    state: Bytes::from_static(b"state"),
                },
            ),
            Frame::Response(1, Response::Reply(Bytes::from_static(b"ok"))),
            Frame::Response(
                2,
                Response::Failed(DeliveryError::MailboxFull {
                    actor: "counter/c".into(),
                    retry_after: Duration::from_secs(2),
                }),
            ),
            Frame::Response(
                3,
                Response::Failed(DeliveryError::Actor(ActorError::Failed("boom".into()))),
            ),
            Frame::Response(
                4,
                Response::Claimed(Some((
                    Generation {
                        epoch: 0,
                        version: 5,
                        counter: 1,
                    },
                    Bytes::from_static(b"s"),
                ))),
            ),
            Frame::Response(5, Response::Claimed(None)),
            Frame::Response(6, Response::Conflict { order: (2, 12) }),
            Frame::Response(7, Response::HandOffAck),
            Frame::Response(
                8,
                Response::Moved {
                    order: (0, 7),
                    pod: "pod-b".into(),
                    address: "10.0.0.2:25520".into(),
                },
            ),
            Frame::Response(9, Response::Failed(DeliveryError::TooLarge("kv/x".into()))),
            Frame::Request(
                10,
                Request::Witness {
                    actor_type: "counter".into(),
                    id: "c".into(),
                    marker: Some(Marker {
                        holder: "pod-a".into(),
                        incarnation: "i-1".into(),
                        generation: Generation {
                            epoch: 0,
                            version: 3,
                            counter: 2,
                        },
                    }),
                },
            ),
            Frame::Response(11, Response::Witnessed(None)),
        ]
    }

    #[test]
    fn every_frame_round_trips() {
        for f in samples() {
            round_trip(f);
        }
    }

    #[test]
    fn a_node_at_its_actor_bound_answers_peers_unavailable_with_the_same_text() {
        let full = DeliveryError::AtCapacity {
            pod: "pod-b".into(),
            limit: 3,
        };
        let mut b = BytesMut::new();
        encode(&Frame::Response(4, Response::Failed(full.clone())), &mut b);
        assert_eq!(
            decode(b.freeze().slice(4..)),
            Ok(Frame::Response(
                4,
                Response::Failed(DeliveryError::Unavailable(full.to_string()))
            ))
        );
    }

    #[test]
    fn malformed_frames_are_errors_not_panics() {
        for f in samples() {
            let mut b = BytesMut::new();
            encode(&f, &mut b);
            let body = b.freeze().slice(4..);
            // Every truncation and every single-byte corruption decodes to Ok or Err.
            for cut in 0..body.len() {
                assert!(decode(body.slice(..cut)).is_err());
            }
            for i in 0..body.len() {
                for v in [0u8, 0x7f, 0xff] {
                    let mut m = body.to_vec();
                    m[i] = v;
                    let _ = decode(Bytes::from(m));
                }
            }
        }
        assert_eq!(
            decode(Bytes::from_static(&[0x55, 0, 0, 0, 0, 0, 0, 0, 0])),
            Err(WireError::UnknownKind(0x55))
        );
    }

    #[tokio::test]
    async fn oversize_frames_are_refused_before_reading_them() {
        let data = [0u8, 0x10, 0, 0, 1, 2, 3];
        let mut r = &data[..];
        let got = read_frame(&mut r, 1024).await.ok().flatten();
        assert_eq!(got, Some(Err(WireError::TooLarge(0x0010_0000, 1024))));
        let mut empty: &[u8] = &[];
        assert!(matches!(read_frame(&mut empty, 1024).await, Ok(None)));
    }
}
