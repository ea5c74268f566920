//! Hand-over on membership changes: rebalancing (close what this node no longer owns,
//! push parked states to their owners) and the graceful drain.

use super::*;

impl Inner {
    /// Closes the actors this node no longer owns and pushes their states onward.
    pub(super) async fn rebalance(self: Arc<Self>) {
        let Some(p) = self.current() else { return };
        let mut closing = Vec::new();
        for entry in self.entries() {
            for (id, act) in entry.activations() {
                let mine = p
                    .owner(&entry.name, &id)
                    .is_some_and(|m| *m.pod == *self.config.pod);
                if !mine {
                    act.close();
                    closing.push(act);
                }
            }
        }
        if !closing.is_empty() {
            tracing::info!(
                order = ?p.order,
                actors = closing.len(),
                "handing over actors after a membership change"
            );
        }
        for act in closing {
            act.wait_gone(Duration::from_secs(30)).await;
        }
        self.push_parked().await;
        self.refresh_markers().await;
    }

    /// Pushes every parked state this node does not own to its owner; returns
    /// (pushed, left).
    pub(super) async fn push_parked(&self) -> (usize, usize) {
        let Some(p) = self.current() else {
            return (0, 0);
        };
        let (mut pushed, mut left) = (0, 0);
        for entry in self.entries() {
            for (id, generation, state) in entry.parked() {
                let Some(owner) = p.owner(&entry.name, &id) else {
                    left += 1;
                    continue;
                };
                if *owner.pod == *self.config.pod {
                    continue;
                }
                if state.len() + crate::wire::FRAME_OVERHEAD > self.config.max_frame_bytes {
                    tracing::error!(actor_type = %entry.name, id = %id, len = state.len(), "state too large to hand over; kept here");
                    left += 1;
                    continue;
                }
                let request = Request::HandOff {
                    generation,
                    actor_type: entry.name.to_string(),
                    id: id.to_string(),
                    state,
                };
                match self
                    .peers
                    .request(&owner.transport_addr, request, Duration::from_secs(5))
                    .await
                {
                    Ok(Response::HandOffAck) => {
                        // Unless a table that came meanwhile made this node the owner: the
                        // receiver may be pushing the same copy back (and having it
                        // acknowledged here) at the same time (seed 1119).
                        let owner_now = self
                            .current()
                            .and_then(|p| p.owner(&entry.name, &id).map(|m| m.pod.clone()));
                        if owner_now.as_deref() != Some(&*self.config.pod) {
                            entry.remove_parked_if(&id, generation);
                            // Point claimants at where it went: the receiver may not be
                            // the owner by the claimant's table (ours may be behind), and
                            // a claim answered "nothing here" would activate it empty.
                            self.point_at(
                                &entry.name,
                                &id,
                                p.order,
                                &owner.pod,
                                &owner.transport_addr,
                            );
                        }
                        self.metrics.handovers_out.inc();
                        pushed += 1;
                    }
                    other => {
                        tracing::debug!(owner = %owner.pod, answer = ?other, "hand-off not acknowledged; will retry");
                        left += 1;
                    }
                }
            }
        }
        (pushed, left)
    }

    pub(super) fn owns_any(&self) -> bool {
        self.current()
            .is_some_and(|p| p.owners.iter().any(|m| *m.pod == *self.config.pod))
    }

    pub(super) async fn drain(self: &Arc<Self>, deadline: Duration) -> DrainReport {
        let started = crate::time::now();
        let until = tokio::time::Instant::now() + deadline;
        self.draining.store(true, Ordering::Release);
        let mut report = DrainReport::default();
        // 1. The member table must stop making this node an owner, or actors would come back.
        let mut rx = self.order.subscribe();
        while self.owns_any() {
            if tokio::time::timeout_at(until, rx.changed()).await.is_err() {
                break;
            }
        }
        report.left_ownership = !self.owns_any();
        if report.left_ownership {
            // 2. Close every actor; each finishes its mailbox and parks its state.
            let acts: Vec<Arc<Activation>> = self
                .entries()
                .iter()
                .flat_map(|e| e.activations().into_iter().map(|(_, a)| a))
                .collect();
            report.actors_closed = acts.len();
            for a in &acts {
                a.close();
            }
            for a in &acts {
                let left = until.saturating_duration_since(tokio::time::Instant::now());
                a.wait_gone(left).await;
            }
            // 3. Push every state to its new owner, and every state handed to a claimant
            //    lately too: its answer may never have arrived, and this process is going.
            loop {
                let handed: Vec<(ActorKey, Handed)> = lock(&self.handed).drain().collect();
                for ((actor_type, id), h) in handed {
                    if let Ok(entry) = self.type_entry(&actor_type) {
                        entry.offer_handoff(&id, h.state.0, h.state.1);
                    }
                }
                let (pushed, left) = self.push_parked().await;
                report.states_handed_over += pushed;
                report.states_left = left;
                if left == 0 || tokio::time::Instant::now() + Duration::from_millis(200) > until {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        // 4. Finish the requests in flight.
        while self.inflight.load(Ordering::Acquire) > 0 && tokio::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        report.actors_left = self.entries().iter().map(|e| e.active_count()).sum();
        report.requests_left = self.inflight.load(Ordering::Acquire);
        report.elapsed = crate::time::since(started);
        report.complete = report.left_ownership
            && report.actors_left == 0
            && report.states_left == 0
            && report.requests_left == 0;
        tracing::info!(?report, "drain finished");
        report
    }
}
