//! Routing: where a message goes (a pure [`decide`]), and the drivers that queue it here,
//! activate its actor or forward it to the owner.

use super::*;

/// Where a message goes.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Decision {
    /// Run it here (activate if needed).
    Local,
    /// Forward it to this member, stamped with this table order.
    Forward(PlacedMember, TableOrder),
    /// No Up member: wait for a newer table.
    NoOwner,
}

/// What a push means for the sender: `Ok(result)`, or `Err(envelope)` when the mailbox
/// was closed and the message must be routed again.
/// Where a message for `(actor_type, id)` goes, from this node's current placement, the
/// actor's tombstone here (if any) and this node's pod `me`: to the claimant while the
/// claim's table is newer than ours (and it is alive), else to the owner. A claimant
/// that our table does not know yet (it joined in a version we have not seen) holds the
/// actor under that newer table: wait for it rather than route by our older one, which
/// may make this node the owner again.
pub(super) fn decide(
    placement: Option<&Placement>,
    tombstone: Option<&Tombstone>,
    actor_type: &str,
    id: &str,
    me: &str,
) -> Decision {
    let Some(p) = placement else {
        return Decision::NoOwner;
    };
    if let Some(t) = tombstone
        && t.order > p.order
    {
        return match p.alive_member(&t.pod) {
            Some(m) => Decision::Forward(m.clone(), t.order),
            None if p.member(&t.pod).is_none() => Decision::NoOwner,
            None => match p.owner(actor_type, id) {
                None => Decision::NoOwner,
                Some(m) if *m.pod == *me => Decision::Local,
                Some(m) => Decision::Forward(m.clone(), p.order),
            },
        };
    }
    match p.owner(actor_type, id) {
        None => Decision::NoOwner,
        Some(m) if *m.pod == *me => Decision::Local,
        Some(m) => Decision::Forward(m.clone(), p.order),
    }
}

/// What a `tell` answers under a durable store, from the answer of the ask it was sent
/// as: accepted (an empty answer) when its turn ran and its state is durable, whatever the
/// actor replied (a tell never reports the actor's own errors); a delivery or store
/// failure otherwise.
pub(super) fn tell_acknowledgement(answer: Answer) -> Answer {
    match answer {
        Ok(_) | Err(DeliveryError::Actor(_)) => Ok(Bytes::new()),
        Err(e) => Err(e),
    }
}

pub(super) fn settle(
    entry: &TypeEntry,
    id: &str,
    act: &Activation,
    push: Push,
) -> Result<Result<(), DeliveryError>, Envelope> {
    let dropped = || DeliveryError::Dropped(format!("{}/{id}", entry.name));
    Ok(match push {
        Push::Queued => Ok(()),
        Push::QueuedDroppingOldest(old) => {
            entry.stats.dropped_oldest.inc();
            if let Some(tx) = old.reply {
                let _ = tx.send(Err(dropped()));
            }
            Ok(())
        }
        Push::DroppedNewest(new) => {
            entry.stats.dropped_newest.inc();
            if let Some(tx) = new.reply {
                let _ = tx.send(Err(dropped()));
            }
            Ok(())
        }
        Push::Refused(_) => {
            let config = act.mailbox.config();
            if config.overflow == crate::OverflowPolicy::Backpressure {
                entry.stats.rejected_backpressure.inc();
            } else {
                entry.stats.rejected_full.inc();
            }
            Err(DeliveryError::MailboxFull {
                actor: format!("{}/{id}", entry.name),
                retry_after: retry_after(&config),
            })
        }
        Push::Closed(e) => return Err(e),
    })
}

impl Inner {
    pub(super) fn decide(&self, entry: &TypeEntry, id: &str) -> Decision {
        let current = self.current();
        let tombstone = {
            let tombstones = lock(&self.tombstones);
            if tombstones.is_empty() {
                None
            } else {
                tombstones
                    .get(&(entry.name.clone(), Box::from(id)))
                    .cloned()
            }
        };
        decide(
            current.as_deref(),
            tombstone.as_ref(),
            &entry.name,
            id,
            &self.config.pod,
        )
    }

    /// Delivers one message; for a tell the answer is empty once it is accepted.
    pub(super) async fn deliver(
        self: &Arc<Self>,
        actor_type: &str,
        id: &str,
        message: Message,
        ask: bool,
        hops: u8,
    ) -> Answer {
        let entry = self.type_entry(actor_type)?;
        if !valid_name(id) {
            return Err(DeliveryError::InvalidAddress(
                "actor id must be 1 to 256 bytes without '/' or control characters".into(),
            ));
        }
        let timed = activation::sample(self.config.timing_sample_every);
        if !ask && self.settings.store.is_some() {
            // Durable store: a tell is acknowledged once its turn's state is written.
            let (mut env, rx) = Envelope::ask(message);
            if timed {
                env.enqueued = Some(crate::time::now());
            }
            self.route(&entry, id, env, hops).await?;
            return match tokio::time::timeout(self.config.ask_timeout, rx).await {
                Ok(Ok(answer)) => tell_acknowledgement(answer),
                Ok(Err(_)) => Err(DeliveryError::Dropped(format!("{actor_type}/{id}"))),
                Err(_) => Err(DeliveryError::Timeout(self.config.ask_timeout)),
            };
        }
        if ask {
            let (mut env, rx) = Envelope::ask(message);
            if timed {
                env.enqueued = Some(crate::time::now());
            }
            self.route(&entry, id, env, hops).await?;
            match tokio::time::timeout(self.config.ask_timeout, rx).await {
                Ok(Ok(answer)) => answer,
                Ok(Err(_)) => Err(DeliveryError::Dropped(format!("{actor_type}/{id}"))),
                Err(_) => Err(DeliveryError::Timeout(self.config.ask_timeout)),
            }
        } else {
            let mut env = Envelope::tell(message);
            if timed {
                env.enqueued = Some(crate::time::now());
            }
            self.route(&entry, id, env, hops)
                .await
                .map(|()| Bytes::new())
        }
    }

    /// Queues `env` here or forwards it. `Ok` means queued here, or forwarded and (for an
    /// ask) its answer sent to `env.reply`.
    pub(super) async fn route(
        self: &Arc<Self>,
        entry: &Arc<TypeEntry>,
        id: &str,
        mut env: Envelope,
        hops: u8,
    ) -> Result<(), DeliveryError> {
        for _ in 0..MAX_ATTEMPTS {
            if let Some(act) = entry.get(id) {
                match settle(entry, id, &act, act.mailbox.push(env).await) {
                    Ok(done) => return done,
                    Err(e) => {
                        env = e;
                        act.wait_gone(self.config.ask_timeout).await;
                    }
                }
            }
            match self.decide(entry, id) {
                Decision::Local => {
                    if !self.accepting_peers() {
                        // Not serving (and not draining): no new activation here.
                        return Err(DeliveryError::NotAccepting);
                    }
                    let (act, new) = self.activation_for(entry, id)?;
                    if new {
                        self.spawn_activation(entry.clone(), id.into(), act);
                    }
                }
                Decision::Forward(member, order) => {
                    return self.forward(&member, entry, id, env, order, hops).await;
                }
                Decision::NoOwner => {
                    if !self.wait_for_newer_table(TABLE_WAIT).await {
                        return Err(DeliveryError::Unavailable(
                            "no Up member owns actors yet".into(),
                        ));
                    }
                }
            }
        }
        Err(DeliveryError::Unavailable(format!(
            "{}/{id}: routing did not settle",
            entry.name
        )))
    }

    pub(super) async fn forward(
        self: &Arc<Self>,
        member: &PlacedMember,
        entry: &TypeEntry,
        id: &str,
        env: Envelope,
        order: TableOrder,
        hops: u8,
    ) -> Result<(), DeliveryError> {
        if hops >= MAX_HOPS {
            return Err(DeliveryError::Unavailable(format!(
                "{}/{id}: routing loop while member tables disagree",
                entry.name
            )));
        }
        if hops >= 2 {
            // Tables disagree; give them a moment to converge.
            tokio::time::sleep(Duration::from_millis(5 * u64::from(hops))).await;
        }
        self.metrics.forwarded.inc();
        let ask = env.reply.is_some();
        let request = Request::Deliver {
            ask,
            order,
            hops: hops + 1,
            actor_type: entry.name.to_string(),
            id: id.to_owned(),
            method: env.message.method.into_owned(),
            payload: env.message.payload,
        };
        let timeout = self.config.ask_timeout + Duration::from_secs(1);
        let answer: Answer = match self
            .peers
            .request(&member.transport_addr, request, timeout)
            .await
        {
            Ok(Response::Reply(b)) => Ok(b),
            Ok(Response::Failed(e)) => Err(e),
            Ok(other) => Err(DeliveryError::Unavailable(format!(
                "unexpected answer from {}: {other:?}",
                member.pod
            ))),
            Err(TransportError::Timeout(_)) => Err(DeliveryError::Timeout(timeout)),
            Err(e @ TransportError::TooLarge(..)) => Err(DeliveryError::TooLarge(e.to_string())),
            Err(e) => Err(DeliveryError::Unavailable(e.to_string())),
        };
        match env.reply {
            Some(tx) => {
                let _ = tx.send(answer);
                Ok(())
            }
            None => answer.map(|_| ()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use troupe_contract::Member;

    fn placement(version: u64, members: &[(&str, MemberStatus)]) -> Placement {
        let table = MemberTable {
            cluster: "c".into(),
            first_epoch: 0,
            epoch: 0,
            version,
            members: members
                .iter()
                .map(|(pod, status)| Member {
                    pod: (*pod).into(),
                    incarnation: format!("{pod}-1"),
                    address: format!("{pod}:1"),
                    status: *status,
                    since_version: 1,
                })
                .collect(),
        };
        Placement::from_table(&table, str::to_owned)
    }

    fn tombstone(order: TableOrder, pod: &str) -> Tombstone {
        Tombstone {
            order,
            pod: pod.into(),
            address: format!("{pod}:1").into(),
        }
    }

    fn pod(d: &Decision) -> Option<(&str, TableOrder)> {
        match d {
            Decision::Forward(m, o) => Some((&m.pod, *o)),
            _ => None,
        }
    }

    #[test]
    fn messages_go_to_the_owner_or_stay_here() {
        use MemberStatus::*;
        assert_eq!(decide(None, None, "t", "x", "a"), Decision::NoOwner);
        let none_up = placement(3, &[("a", Joining)]);
        assert_eq!(
            decide(Some(&none_up), None, "t", "x", "a"),
            Decision::NoOwner
        );
        let p = placement(3, &[("a", Up), ("b", Up)]);
        for i in 0..50 {
            let id = format!("k{i}");
            let owner = p
                .owner("t", &id)
                .map(|m| m.pod.to_string())
                .unwrap_or_default();
            let d = decide(Some(&p), None, "t", &id, "a");
            if owner == "a" {
                assert_eq!(d, Decision::Local);
            } else {
                assert_eq!(pod(&d), Some(("b", (0, 3))));
            }
        }
    }

    #[test]
    fn a_tombstone_from_a_newer_table_routes_to_the_claimant_until_ours_catches_up() {
        use MemberStatus::*;
        let p = placement(3, &[("a", Up), ("b", Joining), ("c", Down)]);
        // a owns everything; a newer claim by b wins while our table is older.
        let newer = tombstone((0, 4), "b");
        assert_eq!(
            pod(&decide(Some(&p), Some(&newer), "t", "x", "a")),
            Some(("b", (0, 4)))
        );
        // Not newer than our table: routing follows the table again.
        let caught_up = tombstone((0, 3), "b");
        assert_eq!(
            decide(Some(&p), Some(&caught_up), "t", "x", "a"),
            Decision::Local
        );
        // A claimant that is not alive is not followed.
        let dead = tombstone((0, 9), "c");
        assert_eq!(
            decide(Some(&p), Some(&dead), "t", "x", "a"),
            Decision::Local
        );
        // A claimant our table does not know yet took it under a newer table: wait for
        // that table, never activate here by ours (seed 5354: two activations).
        let unknown = tombstone((0, 9), "e");
        assert_eq!(
            decide(Some(&p), Some(&unknown), "t", "x", "a"),
            Decision::NoOwner
        );
        // A restored epoch orders above every version of the old one.
        let restored = tombstone((1, 1), "b");
        assert_eq!(
            pod(&decide(Some(&p), Some(&restored), "t", "x", "a")),
            Some(("b", (1, 1)))
        );
    }
}
