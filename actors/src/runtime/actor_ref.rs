//! [`ActorRef`]: a handle that sends straight to a local activation's mailbox.

use super::*;

/// A handle to one virtual actor. While the actor is active on this node, sends go
/// straight to its mailbox (no type or directory lookup); otherwise they are routed like
/// [`ActorRuntime::tell`] / [`ActorRuntime::ask`]. Stays valid across passivation and
/// rebalancing. Obtain one with [`ActorRuntime::actor_ref`].
#[derive(Clone, Debug)]
pub struct ActorRef {
    pub(super) inner: Arc<Inner>,
    pub(super) entry: Arc<TypeEntry>,
    pub(super) id: Arc<str>,
    pub(super) cached: Option<Arc<Activation>>,
}

impl ActorRef {
    /// The actor's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    async fn send(&mut self, mut env: Envelope) -> Result<(), DeliveryError> {
        if !self.inner.accepting_clients() {
            return Err(DeliveryError::NotAccepting);
        }
        if let Some(act) = &self.cached {
            match settle(&self.entry, &self.id, act, act.mailbox.push(env).await) {
                Ok(done) => return done,
                Err(e) => {
                    env = e;
                    self.cached = None;
                }
            }
        }
        let r = self.inner.route(&self.entry, &self.id, env, 0).await;
        self.cached = self.entry.get(&self.id);
        r
    }

    /// Like [`ActorRuntime::tell`].
    pub async fn tell(&mut self, message: Message) -> Result<(), DeliveryError> {
        if self.inner.settings.store.is_some() {
            // Durable store: acknowledged once the turn's state is written.
            return super::routing::tell_acknowledgement(self.ask(message).await).map(|_| ());
        }
        let mut env = Envelope::tell(message);
        if activation::sample(self.inner.config.timing_sample_every) {
            env.enqueued = Some(crate::time::now());
        }
        self.send(env).await
    }

    /// Like [`ActorRuntime::ask`].
    pub async fn ask(&mut self, message: Message) -> Answer {
        let (mut env, rx) = Envelope::ask(message);
        if activation::sample(self.inner.config.timing_sample_every) {
            env.enqueued = Some(crate::time::now());
        }
        self.send(env).await?;
        match tokio::time::timeout(self.inner.config.ask_timeout, rx).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(DeliveryError::Dropped(format!(
                "{}/{}",
                self.entry.name, self.id
            ))),
            Err(_) => Err(DeliveryError::Timeout(self.inner.config.ask_timeout)),
        }
    }
}
