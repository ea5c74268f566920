//! The transport handlers: what this node answers to its peers' requests.

use super::*;

impl Inner {
    /// Answers a forwarded tell to an actor active here without waiting; anything else is
    /// given back for [`Inner::handle_request`].
    #[allow(clippy::result_large_err)] // gives the request back by value, unallocated
    pub(super) fn try_answer_now(&self, request: Request) -> Result<Response, Request> {
        let Request::Deliver {
            ask: false,
            order,
            hops,
            actor_type,
            id,
            method,
            payload,
        } = request
        else {
            return Err(request);
        };
        let rebuild = |message: Message, actor_type: String, id: String| Request::Deliver {
            ask: false,
            order,
            hops,
            actor_type,
            id,
            method: message.method.into_owned(),
            payload: message.payload,
        };
        let message = Message::owned(method, payload);
        let active = if self.accepting_peers() && order <= self.order.borrow().1 {
            read(&self.types)
                .get(actor_type.as_str())
                .and_then(|e| e.get(&id).map(|a| (e.clone(), a)))
        } else {
            None
        };
        let Some((entry, act)) = active else {
            return Err(rebuild(message, actor_type, id));
        };
        let mut env = Envelope::tell(message);
        if activation::sample(self.config.timing_sample_every) {
            env.enqueued = Some(crate::time::now());
        }
        match act.mailbox.try_push(env) {
            Push::Refused(e)
                if act.mailbox.config().overflow == crate::OverflowPolicy::Backpressure =>
            {
                Err(rebuild(e.message, actor_type, id))
            }
            push => match settle(&entry, &id, &act, push) {
                Ok(Ok(())) => Ok(Response::Reply(Bytes::new())),
                Ok(Err(e)) => Ok(Response::Failed(e)),
                Err(e) => Err(rebuild(e.message, actor_type, id)),
            },
        }
    }

    pub(super) async fn handle_request(self: Arc<Self>, request: Request) -> Response {
        match request {
            Request::Deliver {
                ask,
                order,
                hops,
                actor_type,
                id,
                method,
                payload,
            } => {
                if !self.accepting_peers() {
                    return Response::Failed(DeliveryError::NotAccepting);
                }
                let _inflight = self.inflight();
                if order > self.order.borrow().1 {
                    self.wait_for_order(order, TABLE_WAIT).await;
                }
                match self
                    .deliver(&actor_type, &id, Message::owned(method, payload), ask, hops)
                    .await
                {
                    Ok(b) => Response::Reply(b),
                    Err(e) => Response::Failed(e),
                }
            }
            Request::Claim {
                cluster,
                order,
                claimant,
                claimant_addr,
                actor_type,
                id,
            } => {
                self.handle_claim(&cluster, order, claimant, claimant_addr, &actor_type, &id)
                    .await
            }
            Request::HandOff {
                generation,
                actor_type,
                id,
                state,
            } => self.handle_handoff(generation, &actor_type, &id, state),
            Request::Witness {
                actor_type,
                id,
                marker,
            } => Response::Witnessed(self.swap_marker(&actor_type, &id, marker)),
        }
    }
}
