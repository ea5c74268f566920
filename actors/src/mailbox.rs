//! The bounded mailbox of one activation and its overflow policies.
//!
//! ```text
//!  senders ──push──► [ VecDeque, capacity N, policy ] ──recv──► the actor's task (one)
//! ```
//!
//! Many senders, one receiver. A mutex guards the queue (held for a push or a pop only);
//! a [`Notify`] wakes the receiver and another wakes senders waiting for room under
//! [`OverflowPolicy::Backpressure`]. Depth accounting costs nothing per message: the
//! queue's own length is the depth, read by the metrics collector at scrape time
//! ([`Mailbox::len`]), so there is no shared counter for the cores to fight over.
//!
//! A mailbox is *closed* when its actor passivates or is handed over: pushes then fail with
//! [`Push::Closed`] and the sender routes the message again; what was queued before the
//! close is still delivered. This module owns no metrics and no routing.

use std::{
    collections::VecDeque,
    sync::{
        Mutex, MutexGuard,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::sync::{Notify, oneshot};

use crate::{
    config::{MailboxConfig, OverflowPolicy},
    message::{Answer, Message},
};

/// A message with its reply channel, as it waits in a mailbox.
#[derive(Debug)]
pub struct Envelope {
    /// The message.
    pub message: Message,
    /// Where the answer goes (`ask`), or `None` (`tell`).
    pub reply: Option<oneshot::Sender<Answer>>,
    /// When it was queued, for the sampled time-in-mailbox histogram.
    pub enqueued: Option<Instant>,
}

impl Envelope {
    /// A `tell`: no reply.
    pub fn tell(message: Message) -> Self {
        Self {
            message,
            reply: None,
            enqueued: None,
        }
    }

    /// An `ask`, and the receiver of its answer.
    pub fn ask(message: Message) -> (Self, oneshot::Receiver<Answer>) {
        let (tx, rx) = oneshot::channel();
        (
            Self {
                message,
                reply: Some(tx),
                enqueued: None,
            },
            rx,
        )
    }
}

/// The outcome of a push.
#[derive(Debug)]
pub enum Push {
    /// Queued.
    Queued,
    /// Queued, and this older message was dropped to make room (drop-oldest).
    QueuedDroppingOldest(Envelope),
    /// Full: the new message was dropped (drop-newest).
    DroppedNewest(Envelope),
    /// Full: the new message is refused (reject, or backpressure after its timeout).
    Refused(Envelope),
    /// The mailbox is closed; route the message again.
    Closed(Envelope),
}

struct Queue {
    items: VecDeque<Envelope>,
    closed: bool,
}

/// A bounded multi-producer, single-consumer mailbox.
pub struct Mailbox {
    queue: Mutex<Queue>,
    config: MailboxConfig,
    receiver: Notify,
    /// Set by the receiver before it waits: senders wake it only then (one load per push
    /// while it is busy, instead of a read-modify-write on the `Notify`).
    receiver_idle: AtomicBool,
    room: Notify,
    waiting_senders: AtomicUsize,
}

impl std::fmt::Debug for Mailbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailbox")
            .field("config", &self.config)
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

impl Mailbox {
    /// An empty, open mailbox.
    pub fn new(config: MailboxConfig) -> Self {
        Self {
            queue: Mutex::new(Queue {
                items: VecDeque::with_capacity(config.capacity.min(16)),
                closed: false,
            }),
            config,
            receiver: Notify::new(),
            receiver_idle: AtomicBool::new(false),
            room: Notify::new(),
            waiting_senders: AtomicUsize::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        // A poisoned queue is still a valid queue: no code panics while holding the lock.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Messages waiting.
    pub fn len(&self) -> usize {
        self.lock().items.len()
    }

    /// Whether no message waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The mailbox's settings.
    pub fn config(&self) -> MailboxConfig {
        self.config
    }

    /// Pushes without waiting. Under backpressure a full mailbox answers
    /// [`Push::Refused`]; [`Mailbox::push`] waits instead.
    pub fn try_push(&self, envelope: Envelope) -> Push {
        let mut q = self.lock();
        if q.closed {
            return Push::Closed(envelope);
        }
        if q.items.len() < self.config.capacity {
            q.items.push_back(envelope);
            drop(q);
            self.wake_receiver();
            return Push::Queued;
        }
        match self.config.overflow {
            OverflowPolicy::Backpressure | OverflowPolicy::Reject => Push::Refused(envelope),
            OverflowPolicy::DropNewest => Push::DroppedNewest(envelope),
            OverflowPolicy::DropOldest => match q.items.pop_front() {
                Some(old) => {
                    q.items.push_back(envelope);
                    drop(q);
                    self.wake_receiver();
                    Push::QueuedDroppingOldest(old)
                }
                // capacity > 0 makes this unreachable; refuse rather than grow.
                None => Push::Refused(envelope),
            },
        }
    }

    fn wake_receiver(&self) {
        if self.receiver_idle.load(Ordering::SeqCst)
            && self.receiver_idle.swap(false, Ordering::SeqCst)
        {
            self.receiver.notify_one();
        }
    }

    /// Pushes, waiting for room under [`OverflowPolicy::Backpressure`] up to its timeout.
    pub async fn push(&self, envelope: Envelope) -> Push {
        let mut envelope = match self.try_push(envelope) {
            Push::Refused(e) if self.config.overflow == OverflowPolicy::Backpressure => e,
            other => return other,
        };
        let deadline = tokio::time::Instant::now() + self.config.backpressure_timeout;
        self.waiting_senders.fetch_add(1, Ordering::SeqCst);
        let outcome = loop {
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            envelope = match self.try_push(envelope) {
                Push::Refused(e) => e,
                other => break other,
            };
            if tokio::time::timeout_at(deadline, room).await.is_err() {
                break self.try_push(envelope);
            }
        };
        self.waiting_senders.fetch_sub(1, Ordering::SeqCst);
        outcome
    }

    /// Takes the next message, if any.
    pub fn try_recv(&self) -> Option<Envelope> {
        let e = self.lock().items.pop_front()?;
        if self.waiting_senders.load(Ordering::SeqCst) > 0 {
            self.room.notify_one();
        }
        Some(e)
    }

    /// Waits for the next message; `None` once the mailbox is closed and empty.
    pub async fn recv(&self) -> Option<Envelope> {
        loop {
            // Announce the wait first, then look: a sender that pushes after the look sees
            // the flag and wakes us (a stored permit if we have not started waiting yet).
            self.receiver_idle.store(true, Ordering::SeqCst);
            {
                let mut q = self.lock();
                if let Some(e) = q.items.pop_front() {
                    drop(q);
                    self.receiver_idle.store(false, Ordering::SeqCst);
                    if self.waiting_senders.load(Ordering::SeqCst) > 0 {
                        self.room.notify_one();
                    }
                    return Some(e);
                }
                if q.closed {
                    self.receiver_idle.store(false, Ordering::SeqCst);
                    return None;
                }
            }
            self.receiver.notified().await;
        }
    }

    /// Closes the mailbox if it is empty; returns whether it is now closed.
    pub fn close_if_empty(&self) -> bool {
        let mut q = self.lock();
        if q.items.is_empty() {
            q.closed = true;
            drop(q);
            self.room.notify_waiters();
            self.receiver.notify_one();
            true
        } else {
            false
        }
    }

    /// Closes the mailbox: no more pushes; what is queued is still received.
    pub fn close(&self) {
        self.lock().closed = true;
        self.room.notify_waiters();
        self.receiver.notify_one();
    }

    /// Whether the mailbox is closed.
    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Closes the mailbox and takes every queued message (to route them elsewhere).
    pub fn close_and_take_all(&self) -> Vec<Envelope> {
        let mut q = self.lock();
        q.closed = true;
        let all: Vec<Envelope> = q.items.drain(..).collect();
        drop(q);
        self.room.notify_waiters();
        self.receiver.notify_one();
        all
    }
}

/// The `Retry-After` a refused sender is given: roughly the time to drain a full mailbox
/// at one message per millisecond, at least one second.
pub fn retry_after(config: &MailboxConfig) -> Duration {
    Duration::from_secs((config.capacity as u64 / 1000).clamp(1, 30))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn mailbox(capacity: usize, overflow: OverflowPolicy) -> Mailbox {
        let config = MailboxConfig {
            capacity,
            overflow,
            backpressure_timeout: Duration::from_millis(50),
        };
        Mailbox::new(config)
    }

    fn msg(n: u8) -> Envelope {
        Envelope::tell(Message::new("m", vec![n]))
    }

    fn payload(p: &Push) -> Option<u8> {
        match p {
            Push::QueuedDroppingOldest(e)
            | Push::DroppedNewest(e)
            | Push::Refused(e)
            | Push::Closed(e) => e.message.payload.first().copied(),
            Push::Queued => None,
        }
    }

    fn drain(m: &Mailbox) -> Vec<u8> {
        std::iter::from_fn(|| m.try_recv())
            .filter_map(|e| e.message.payload.first().copied())
            .collect()
    }

    #[test]
    fn reject_refuses_when_full() {
        let m = mailbox(2, OverflowPolicy::Reject);
        assert!(matches!(m.try_push(msg(1)), Push::Queued));
        assert!(matches!(m.try_push(msg(2)), Push::Queued));
        let p = m.try_push(msg(3));
        assert!(matches!(p, Push::Refused(_)));
        assert_eq!(payload(&p), Some(3));
        assert_eq!(m.len(), 2);
        assert_eq!(drain(&m), vec![1, 2]);
        assert_eq!(m.len(), 0);
    }

    #[test]
    fn drop_newest_drops_the_incoming_message() {
        let m = mailbox(2, OverflowPolicy::DropNewest);
        m.try_push(msg(1));
        m.try_push(msg(2));
        let p = m.try_push(msg(3));
        assert!(matches!(p, Push::DroppedNewest(_)));
        assert_eq!(payload(&p), Some(3));
        assert_eq!(m.len(), 2);
        assert_eq!(drain(&m), vec![1, 2]);
    }

    #[test]
    fn drop_oldest_makes_room_for_the_incoming_message() {
        let m = mailbox(2, OverflowPolicy::DropOldest);
        m.try_push(msg(1));
        m.try_push(msg(2));
        let p = m.try_push(msg(3));
        assert!(matches!(p, Push::QueuedDroppingOldest(_)));
        assert_eq!(payload(&p), Some(1));
        assert_eq!(m.len(), 2);
        assert_eq!(drain(&m), vec![2, 3]);
        assert_eq!(m.len(), 0);
    }

    #[tokio::test]
    async fn backpressure_waits_for_room() {
        let m = mailbox(1, OverflowPolicy::Backpressure);
        let m = Arc::new(m);
        m.try_push(msg(1));
        let sender = {
            let m = m.clone();
            tokio::spawn(async move { matches!(m.push(msg(2)).await, Push::Queued) })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(m.recv().await.map(|e| e.message.payload[0]), Some(1));
        assert!(sender.await.unwrap_or(false), "the waiting sender got room");
        assert_eq!(drain(&m), vec![2]);
    }

    #[tokio::test]
    async fn backpressure_refuses_after_its_timeout() {
        let m = mailbox(1, OverflowPolicy::Backpressure);
        m.try_push(msg(1));
        let started = Instant::now();
        assert!(matches!(m.push(msg(2)).await, Push::Refused(_)));
        assert!(started.elapsed() >= Duration::from_millis(50));
    }

    #[tokio::test]
    async fn closed_mailbox_hands_back_pushes_and_delivers_what_was_queued() {
        let m = mailbox(4, OverflowPolicy::Reject);
        m.try_push(msg(1));
        assert!(!m.close_if_empty());
        m.close();
        assert!(matches!(m.try_push(msg(2)), Push::Closed(_)));
        assert_eq!(m.recv().await.map(|e| e.message.payload[0]), Some(1));
        assert!(m.recv().await.is_none());
    }
}
