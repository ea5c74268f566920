//! Ownership: the claim protocol (claimant and claimed side), hand-offs of parked states,
//! the fail-closed rule, eviction standing, and the witness markers that count lost states.

use super::*;

/// What a claimant does about a previous owner that does not answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Unanswered {
    /// Keep trying (it may still run the actor): never activate without its state.
    Wait,
    /// It holds nothing any more (gone from the table, or Down for longer than the grace
    /// period): activate without its state, counted as a missed hand-over.
    Gone,
}

/// The fail-open rule of a claim, as a pure function: `status` is the previous owner's
/// status in the claimant's current table (`None`: not in it, or another incarnation),
/// `down_for` how long the claimant has seen it Down, or gone from the table without a
/// leave (a downed member is removed after a short linger, well before the grace a
/// downed node may still serve for has passed: removal must not cut that grace short).
pub(super) fn unanswered(
    status: Option<MemberStatus>,
    down_for: Option<Duration>,
    grace: Duration,
) -> Unanswered {
    match status {
        None if down_for.is_some_and(|d| d < grace) => Unanswered::Wait,
        None => Unanswered::Gone,
        Some(MemberStatus::Down) if down_for.is_some_and(|d| d >= grace) => Unanswered::Gone,
        Some(_) => Unanswered::Wait,
    }
}

/// Whether an activation lost a state, as a pure function: `previous` is the marker its
/// witness had (the last holder and the generation it ran), `me` this node's `(pod,
/// incarnation)`, `alive` whether a `(pod, incarnation)` is Joining, Up or Leaving in the
/// current table, `state` the generation of the state the activation starts on.
pub(super) fn state_lost(
    previous: Option<&Marker>,
    me: (&str, &str),
    alive: impl Fn(&str, &str) -> bool,
    state: Option<Generation>,
) -> bool {
    let Some(m) = previous else { return false };
    if (m.holder.as_str(), m.incarnation.as_str()) == me || alive(&m.holder, &m.incarnation) {
        return false;
    }
    state.is_none_or(|g| g < m.generation)
}

/// How a node stands in a new table compared with the one before.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Standing {
    /// Nothing changed for what it may hold.
    Member,
    /// Downed, replaced by a new incarnation, removed without leaving, or the table is
    /// of another cluster: its activations and states are stale; stop at once.
    Evicted,
}

/// How a new table relates to the one before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum TableChange {
    /// A later version of the same epoch (or the first table).
    Later,
    /// A later epoch of the same cluster: the Lease was deleted or stripped and restored.
    /// Its versions start over and nobody was downed by it (a restore carries no member
    /// over: every member rejoins as a new incarnation, see node/ARCHITECTURE.md).
    Restored,
    /// A table of another cluster id.
    OtherCluster,
}

/// Pure: `before`/`after` are this pod's (incarnation, status) in the previous and the
/// new table.
///
/// A restore is never an eviction, although this node's entry is gone or replaced in the
/// restored epoch: it says nothing about what the node may hold (its earlier versions are
/// lost, not overruled). The node keeps its states and hands them to the restored epoch's
/// owners like on any table change; a copy that is stale (its holder was downed in a lost
/// version it never saw) is older by generation than the one its next holder had, and
/// loses to it ([`TypeEntry::offer_handoff`]).
pub(super) fn standing(
    before: Option<(&str, MemberStatus)>,
    after: Option<(&str, MemberStatus)>,
    change: TableChange,
) -> Standing {
    match change {
        TableChange::OtherCluster if before.is_some() => return Standing::Evicted,
        TableChange::Restored => return Standing::Member,
        _ => {}
    }
    match (before, after) {
        (Some((_, MemberStatus::Down)), _) | (None, _) => Standing::Member,
        (Some(_), Some((_, MemberStatus::Down))) => Standing::Evicted,
        (Some((a, _)), Some((b, _))) if a != b => Standing::Evicted,
        (Some((_, MemberStatus::Leaving)), None) => Standing::Member,
        (Some(_), None) => Standing::Evicted,
        _ => Standing::Member,
    }
}

/// What one previous owner answered to a claim.
pub(super) enum Grant {
    /// Released, with its state if it had one.
    State(Option<State>),
    /// It does not hold the actor: it went to this member; claim from it too.
    Moved(PlacedMember),
}

impl Inner {
    pub(super) fn spawn_activation(
        self: &Arc<Self>,
        entry: Arc<TypeEntry>,
        id: Arc<str>,
        act: Arc<Activation>,
    ) {
        let claim = {
            let rt = self.clone();
            let (entry, id, act) = (entry.clone(), id.clone(), act.clone());
            async move { rt.claim(&entry, &id, &act).await }
        };
        let reroute = {
            let rt = self.clone();
            let (entry, id) = (entry.clone(), id.clone());
            move |queued: Vec<Envelope>| {
                for env in queued {
                    let (rt, entry, id) = (rt.clone(), entry.clone(), id.clone());
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        if let Err(e) = rt.route(&entry, &id, env, 0).await {
                            entry.stats.undeliverable.inc();
                            tracing::warn!(actor_type = %entry.name, id = %id, error = %e, "message lost while its actor moved");
                        }
                    });
                }
            }
        };
        tokio::spawn(activation::run(
            entry,
            id,
            act,
            claim,
            reroute,
            self.settings.clone(),
        ));
    }

    /// The claim protocol, run by a new activation before it handles anything: claim from
    /// every previous owner in the history, and from every member a claimed node says the
    /// actor went to ([`Response::Moved`]), so the chain is followed even when this node
    /// skipped table versions.
    pub(super) async fn claim(
        self: &Arc<Self>,
        entry: &TypeEntry,
        id: &str,
        act: &Activation,
    ) -> Claimed {
        let (mut queue, current) = {
            let view = read(&self.view);
            let Some(current) = view.current().cloned() else {
                return Claimed::Abort;
            };
            (
                {
                    let mut q = std::collections::VecDeque::from(view.previous_owners(
                        &entry.name,
                        id,
                        &self.config.pod,
                    ));
                    if let Some(m) = view.owner_before_history(&entry.name, id, &self.config.pod)
                        && !q.iter().any(|x| x.pod == m.pod)
                    {
                        q.push_back(m);
                    }
                    // Removed without a leave less than the down grace ago: it may still
                    // run the actor (`update_members` keeps exactly those in down_since).
                    // Or left out by a restore less than the restore grace ago: it may
                    // rejoin holding the actor's state.
                    let down = lock(&self.down_since);
                    let away = lock(&self.restored_away);
                    for m in view.previous_owners_gone(&entry.name, id, &self.config.pod) {
                        let key = (m.pod.clone(), m.incarnation.clone());
                        if (down.contains_key(&key) || away.contains_key(&key))
                            && !q.iter().any(|x| x.pod == m.pod)
                        {
                            q.push_back(m);
                        }
                    }
                    q
                },
                current,
            )
        };
        let me_addr = current
            .member(&self.config.pod)
            .map(|(m, _)| m.transport_addr.to_string())
            .unwrap_or_default();
        // This node gave the actor away before: the claim that took it is a holder too.
        let pointer = lock(&self.tombstones)
            .get(&(entry.name.clone(), Box::from(id)))
            .map(|t| t.pod.clone());
        if let Some(pod) = pointer
            && *pod != *self.config.pod
            && !queue.iter().any(|q| q.pod == pod)
            && let Some((m, _)) = current.member(&pod)
        {
            queue.push_back(m.clone());
        }
        let mut asked: Vec<Arc<str>> = Vec::new();
        let mut best = None;
        let mut abort = false;
        while let Some(member) = queue.pop_front() {
            if asked.len() >= MAX_CLAIM_CHAIN {
                tracing::warn!(actor_type = %entry.name, id, "claim chain too long; not activating");
                abort = true;
                break;
            }
            asked.push(member.pod.clone());
            match self
                .claim_from(&member, &current, &me_addr, entry, id)
                .await
            {
                Ok(Grant::State(state)) => {
                    if state.is_some() {
                        self.metrics.handovers_in.inc();
                    }
                    best = newest(best, state);
                }
                Ok(Grant::Moved(next)) => {
                    if *next.pod != *self.config.pod
                        && !asked.contains(&next.pod)
                        && !queue.iter().any(|q| q.pod == next.pod)
                    {
                        queue.push_back(next);
                    }
                }
                Err(()) => {
                    abort = true;
                    break;
                }
            }
        }
        // A state this node handed to a claimant lately may never have arrived (the answer
        // was lost, or the claimant gave up): it is a candidate like any holder's, and
        // loses to every newer one.
        let key = (entry.name.clone(), Box::<str>::from(id));
        if let Some(copy) = lock(&self.handed).remove(&key) {
            best = newest(best, Some(copy.state));
        }
        if abort || act.aborted.load(Ordering::Acquire) {
            if let Some((g, s)) = best {
                entry.park(id, g, s);
            }
            return Claimed::Abort;
        }
        // The actor is here again: nothing to forward to, nobody to point claimants at.
        lock(&self.tombstones).remove(&(entry.name.clone(), Box::from(id)));
        let start = best
            .as_ref()
            .map(|(g, _)| *g)
            .max(entry.parked_generation(id));
        let order = current.order;
        // With a durable store nothing acknowledged can be lost: no witness accounting.
        if self.settings.store.is_none()
            && let Ok(entry) = self.type_entry(&entry.name)
        {
            let (rt, id) = (self.clone(), Arc::<str>::from(id));
            tokio::spawn(async move { rt.account(entry, id, start, current).await });
        }
        Claimed::Activate(best, order)
    }

    /// Tells the actor's witness that this node now holds it, and counts the state lost
    /// if the marker it had names a dead holder with a newer state than the one this
    /// activation starts on (`start`). Each marker is swapped atomically at its witness,
    /// so one lost state is counted once.
    pub(super) async fn account(
        self: Arc<Self>,
        entry: Arc<TypeEntry>,
        id: Arc<str>,
        start: Option<Generation>,
        current: Arc<Placement>,
    ) {
        let Some((me, _)) = current.member(&self.config.pod) else {
            return;
        };
        let mine = Marker {
            holder: self.config.pod.clone(),
            incarnation: me.incarnation.to_string(),
            generation: Generation::next(start, current.order),
        };
        let key = (entry.name.clone(), Box::<str>::from(&*id));
        // This node may have been the witness under the holder's table.
        let local = lock(&self.markers).remove(&key);
        let remote = match current.witness(&entry.name, &id, &self.config.pod) {
            Some(w) => {
                let request = Request::Witness {
                    actor_type: entry.name.to_string(),
                    id: id.to_string(),
                    marker: Some(mine.clone()),
                };
                match self
                    .peers
                    .request(&w.transport_addr, request, Duration::from_secs(5))
                    .await
                {
                    Ok(Response::Witnessed(m)) => {
                        self.told(key.clone(), Some(w));
                        m
                    }
                    other => {
                        tracing::debug!(witness = %w.pod, answer = ?other, "witness not updated");
                        None
                    }
                }
            }
            None => {
                self.told(key.clone(), None);
                None
            }
        };
        let previous = match (local, remote) {
            (Some(a), Some(b)) => Some(if b.generation > a.generation { b } else { a }),
            (a, b) => a.or(b),
        };
        let alive = |pod: &str, inc: &str| {
            matches!(
                current.status_of(pod, inc),
                Some(MemberStatus::Joining | MemberStatus::Up | MemberStatus::Leaving)
            )
        };
        if state_lost(
            previous.as_ref(),
            (&mine.holder, &mine.incarnation),
            alive,
            start,
        ) {
            entry.stats.states_lost.inc();
            tracing::warn!(actor_type = %entry.name, id = %id, previous = ?previous, "actor activated without the state its last holder had: the holder died, its state is lost");
        }
    }

    /// Records which witness holds this node's marker for `key` (`None`: there was none to
    /// tell), so that [`Inner::refresh_markers`] tells the next one.
    fn told(&self, key: ActorKey, witness: Option<&PlacedMember>) {
        let mut told = lock(&self.told);
        if told.len() < MAX_MARKERS || told.contains_key(&key) {
            told.insert(key, witness.map(|w| (w.pod.clone(), w.incarnation.clone())));
        }
    }

    /// Markers move with the membership: after a table change, every actor this node holds
    /// (running or parked) whose witness under the current table is not the one its marker
    /// was given to — the witness restarted (its markers died with it), was replaced, or a
    /// member joined or left — is told again, so that the state is counted if this node
    /// dies next. Only actors whose activation already swapped its marker are told (a
    /// refresh must not take the place of that swap, which is where a loss is counted);
    /// the old marker the new witness returns is not a loss: this node holds the state.
    pub(super) async fn refresh_markers(&self) {
        let Some(p) = self.current() else { return };
        let Some((me, MemberStatus::Up)) = p.member(&self.config.pod) else {
            return;
        };
        let incarnation = me.incarnation.to_string();
        let told: Vec<(ActorKey, Option<PodKey>)> = lock(&self.told)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut unreachable: Vec<Arc<str>> = Vec::new();
        for ((actor_type, id), was) in told {
            let key = (actor_type.clone(), id.clone());
            let Ok(entry) = self.type_entry(&actor_type) else {
                lock(&self.told).remove(&key);
                continue;
            };
            let running = entry
                .get(&id)
                .filter(|a| {
                    matches!(
                        a.phase(),
                        activation::Phase::Active | activation::Phase::Closing
                    )
                })
                .map(|a| a.generation());
            let Some(generation) = running.or_else(|| entry.parked_generation(&id)) else {
                lock(&self.told).remove(&key);
                continue;
            };
            let witness = p.witness(&actor_type, &id, &self.config.pod);
            let now = witness.map(|w| (w.pod.clone(), w.incarnation.clone()));
            if now == was {
                continue;
            }
            let Some(w) = witness else {
                self.told(key, None);
                continue;
            };
            if unreachable.contains(&w.transport_addr) {
                continue;
            }
            let request = Request::Witness {
                actor_type: actor_type.to_string(),
                id: id.to_string(),
                marker: Some(Marker {
                    holder: self.config.pod.clone(),
                    incarnation: incarnation.clone(),
                    generation,
                }),
            };
            match self
                .peers
                .request(&w.transport_addr, request, Duration::from_secs(5))
                .await
            {
                Ok(Response::Witnessed(_)) => self.told(key, Some(w)),
                other => {
                    tracing::debug!(witness = %w.pod, answer = ?other, "witness not told again");
                    unreachable.push(w.transport_addr.clone());
                }
            }
        }
    }

    /// Keeps `marker` for `(actor_type, id)` and returns the one kept before.
    pub(super) fn swap_marker(
        &self,
        actor_type: &str,
        id: &str,
        marker: Option<Marker>,
    ) -> Option<Marker> {
        let Ok(entry) = self.type_entry(actor_type) else {
            return None;
        };
        let key = (entry.name.clone(), Box::<str>::from(id));
        let mut markers = lock(&self.markers);
        match marker {
            Some(m) => {
                if markers.len() >= MAX_MARKERS && !markers.contains_key(&key) {
                    tracing::warn!(
                        actor_type,
                        id,
                        "too many witness markers; this one is not kept"
                    );
                    return None;
                }
                markers.insert(key, m)
            }
            None => markers.remove(&key),
        }
    }

    pub(super) async fn claim_from(
        &self,
        member: &PlacedMember,
        current: &Placement,
        me_addr: &str,
        entry: &TypeEntry,
        id: &str,
    ) -> Result<Grant, ()> {
        let give_up = crate::time::now() + self.config.ask_timeout * 2;
        loop {
            let request = Request::Claim {
                cluster: current.cluster.to_string(),
                order: current.order,
                claimant: self.config.pod.clone(),
                claimant_addr: me_addr.to_owned(),
                actor_type: entry.name.to_string(),
                id: id.to_owned(),
            };
            // A member gone from the table is waited for only the down grace (it may still
            // serve that long); a silent one must not hold the claim for longer.
            let gone = self
                .current()
                .is_none_or(|p| p.member(&member.pod).is_none());
            let key = (member.pod.clone(), member.incarnation.clone());
            let away = lock(&self.restored_away).get(&key).copied();
            let timeout = if let Some(since) = away.filter(|_| gone) {
                // Left out by a restore: it may be rejoining; ask again until its grace ends.
                self.config
                    .restore_grace
                    .saturating_sub(crate::time::since(since))
                    .clamp(Duration::from_millis(100), self.config.down_grace)
            } else if gone {
                self.config.down_grace.max(Duration::from_millis(100))
            } else {
                self.config.ask_timeout * 3
            };
            let error = match self
                .peers
                .request(&member.transport_addr, request, timeout)
                .await
            {
                Ok(Response::Claimed(state)) => return Ok(Grant::State(state)),
                Ok(Response::Moved {
                    order,
                    pod,
                    address,
                }) => {
                    // Resolve through our own table; a pod not in it is gone and holds nothing.
                    let Some((next, _)) = self.current().and_then(|p| p.member(&pod).cloned())
                    else {
                        tracing::debug!(%pod, %address, ?order, "claimed actor went to a pod that is gone");
                        return Ok(Grant::State(None));
                    };
                    return Ok(Grant::Moved(next));
                }
                Ok(Response::Conflict { order: theirs }) => {
                    self.wait_for_order(theirs, TABLE_WAIT).await;
                    return Err(());
                }
                Ok(other) => {
                    tracing::debug!(peer = %member.pod, answer = ?other, "claim not granted");
                    return Err(());
                }
                Err(e) => e,
            };
            // No answer. Fail open only when it cannot hold the actor any more.
            let (status, down_for) = match self.current() {
                Some(p) => {
                    let status = p.status_of(&member.pod, &member.incarnation);
                    let since = lock(&self.down_since).get(&key).copied();
                    (status, since.map(crate::time::since))
                }
                None => (None, None),
            };
            // Read again: a restore while the request was out may have left the member
            // out of the table (it is rejoining, and waited for `restore_grace`).
            let away = lock(&self.restored_away).get(&key).copied();
            let verdict = match away.filter(|_| status.is_none()) {
                Some(since) => unanswered(
                    None,
                    Some(crate::time::since(since)),
                    self.config.restore_grace,
                ),
                None => unanswered(status, down_for, self.config.down_grace),
            };
            match verdict {
                Unanswered::Gone => {
                    self.metrics.handovers_missed.inc();
                    tracing::warn!(peer = %member.pod, ?status, error = %error, actor_type = %entry.name, id, "previous owner is gone; activating without its state");
                    return Ok(Grant::State(None));
                }
                Unanswered::Wait if crate::time::now() > give_up => {
                    tracing::warn!(peer = %member.pod, ?status, error = %error, "previous owner unreachable; not activating");
                    return Err(());
                }
                Unanswered::Wait => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// The claimed side: release the actor (finish its mailbox, hand its state), or say
    /// where it went (`Moved`), or refuse a claimant that is behind (`Conflict`).
    pub(super) async fn handle_claim(
        &self,
        cluster: &str,
        order: TableOrder,
        claimant: String,
        claimant_addr: String,
        actor_type: &str,
        id: &str,
    ) -> Response {
        let Ok(entry) = self.type_entry(actor_type) else {
            return Response::Claimed(None);
        };
        let (mine, owner_is_claimant) = match self.current() {
            Some(p) => {
                if *p.cluster != *cluster {
                    // Orders of two clusters say nothing about each other: never grant.
                    return Response::Failed(DeliveryError::Unavailable(format!(
                        "claim from another cluster ({cluster:?}; this node follows {:?})",
                        p.cluster
                    )));
                }
                (
                    p.order,
                    p.owner(actor_type, id).is_some_and(|m| *m.pod == *claimant),
                )
            }
            None => ((0, 0), false),
        };
        if order < mine && !owner_is_claimant {
            return Response::Conflict { order: mine };
        }
        let key = (entry.name.clone(), Box::<str>::from(id));
        let act = entry.get(id);
        let holds = act.is_some() || entry.parked_len(id).is_some();
        let before = {
            let mut t = lock(&self.tombstones);
            let before = t.get(&key).cloned();
            if let Some(b) = &before
                && b.order > order
                && *b.pod != *claimant
            {
                // A claim under a newer table already took it: this claimant is behind.
                return Response::Conflict { order: b.order };
            }
            // Point at the claimant when it takes something from here, or when there is
            // no other holder to point at; a pointer to where the actor went is kept
            // until that holder is claimed (the claimant is sent there: `Moved`).
            if holds || before.as_ref().is_none_or(|b| *b.pod == *claimant) {
                if t.len() >= MAX_TOMBSTONES && !t.contains_key(&key) {
                    // Keep the ones that still route; forget the older pointers.
                    t.retain(|_, s| s.order > mine);
                    if t.len() >= MAX_TOMBSTONES {
                        t.clear();
                    }
                }
                t.insert(
                    key.clone(),
                    Tombstone {
                        order,
                        pod: claimant.as_str().into(),
                        address: claimant_addr.into(),
                    },
                );
            }
            before
        };
        if let Some(act) = act {
            act.close();
            if !act.wait_gone(self.config.ask_timeout * 2).await {
                return Response::Failed(DeliveryError::Unavailable(format!(
                    "{actor_type}/{id} is still finishing its mailbox"
                )));
            }
        }
        // Never take a state out before it is known to fit in the answer.
        if let Some(len) = entry.parked_len(id)
            && len + crate::wire::FRAME_OVERHEAD > self.config.max_frame_bytes
        {
            tracing::error!(
                actor_type,
                id,
                len,
                "state too large to hand over; kept here"
            );
            return Response::Failed(DeliveryError::TooLarge(format!(
                "state of {actor_type}/{id} is {len} bytes, above the frame limit"
            )));
        }
        if let Some(state) = entry.take_parked(id) {
            self.metrics.handovers_out.inc();
            self.keep_handed(key, &claimant, order, &state);
            return Response::Claimed(Some(state));
        }
        if let Some(state) = self.handed_again(&key, &claimant, order) {
            // The same claim again: the answer that carried the state was lost (or a
            // repeat of it, queued beside it, took the state meanwhile).
            tracing::debug!(actor_type, id, %claimant, "claim repeated; the state is sent again");
            return Response::Claimed(Some(state));
        }
        // Something held here went meanwhile to a concurrent claim: point at that one.
        let before = if holds {
            lock(&self.tombstones).get(&key).cloned()
        } else {
            before
        };
        match before {
            Some(b) if *b.pod != *claimant => Response::Moved {
                order: b.order,
                pod: b.pod.to_string(),
                address: b.address.to_string(),
            },
            None if !holds => match self.predecessor(actor_type, id, &claimant) {
                // Never held here and never given away: if a table made this node the
                // owner, the state stayed where its owner before left it (a claim that
                // aborted parks it there) — the claimant asks that member too.
                Some(m) => Response::Moved {
                    order: mine,
                    pod: m.pod.to_string(),
                    address: m.transport_addr.to_string(),
                },
                None => Response::Claimed(None),
            },
            _ => Response::Claimed(None),
        }
    }

    /// The newest owner of `(actor_type, id)` in this node's history other than itself
    /// and `claimant` that is still in the current table: where a claim asked here should
    /// go on when this node never held the actor.
    fn predecessor(&self, actor_type: &str, id: &str, claimant: &str) -> Option<PlacedMember> {
        read(&self.view)
            .previous_owners(actor_type, id, &self.config.pod)
            .into_iter()
            .find(|m| *m.pod != *claimant)
    }

    /// Records that `(actor_type, id)` went to `pod` under `order` (a tombstone), unless a
    /// pointer from a newer claim is already kept.
    pub(super) fn point_at(
        &self,
        actor_type: &Arc<str>,
        id: &str,
        order: TableOrder,
        pod: &Arc<str>,
        address: &Arc<str>,
    ) {
        let mut t = lock(&self.tombstones);
        let key = (actor_type.clone(), Box::<str>::from(id));
        if t.get(&key).is_some_and(|b| b.order > order) {
            return;
        }
        if t.len() >= MAX_TOMBSTONES && !t.contains_key(&key) {
            return;
        }
        t.insert(
            key,
            Tombstone {
                order,
                pod: pod.clone(),
                address: address.clone(),
            },
        );
    }

    /// Keeps a copy of a state handed to `claimant` under `order` (cheap: the bytes are
    /// shared) for [`Self::handed_again`], within [`MAX_HANDED`] and [`MAX_HANDED_BYTES`].
    fn keep_handed(&self, key: ActorKey, claimant: &str, order: TableOrder, state: &State) {
        let keep_for = self.config.ask_timeout * 4;
        let mut handed = lock(&self.handed);
        handed.retain(|_, h| crate::time::since(h.at) < keep_for);
        let bytes: usize = handed.values().map(|h| h.state.1.len()).sum();
        if handed.len() >= MAX_HANDED || bytes + state.1.len() > MAX_HANDED_BYTES {
            tracing::debug!(claimant, "too many handed states kept; this one is not");
            return;
        }
        handed.insert(
            key,
            Handed {
                claimant: claimant.into(),
                order,
                state: state.clone(),
                at: crate::time::now(),
            },
        );
    }

    /// The state handed lately to `claimant`, if this is its claim again: under the same
    /// table or a later one (its table may have moved on while the answer was lost). A
    /// copy the claimant no longer needs loses to every newer state by generation.
    fn handed_again(&self, key: &ActorKey, claimant: &str, order: TableOrder) -> Option<State> {
        let keep_for = self.config.ask_timeout * 4;
        let handed = lock(&self.handed);
        handed
            .get(key)
            .filter(|h| {
                *h.claimant == *claimant && h.order <= order && crate::time::since(h.at) < keep_for
            })
            .map(|h| h.state.clone())
    }

    pub(super) fn handle_handoff(
        self: &Arc<Self>,
        generation: Generation,
        actor_type: &str,
        id: &str,
        state: Bytes,
    ) -> Response {
        let Ok(entry) = self.type_entry(actor_type) else {
            return Response::HandOffAck;
        };
        if self.draining.load(Ordering::Acquire) {
            // A leaving node must not take states: it may be past its last push and exit
            // holding one (a peer with an older table pushes back to it).
            return Response::Failed(DeliveryError::Unavailable(format!(
                "{actor_type}/{id}: this node is leaving and takes no state"
            )));
        }
        match entry.offer_handoff(id, generation, state) {
            // Kept even when this node does not own the actor under its (maybe older)
            // table: pushing it on at once would bounce it between nodes whose tables
            // disagree. The next table change pushes it on if needed.
            HandOffOutcome::Kept => {
                lock(&self.tombstones).remove(&(entry.name.clone(), Box::from(id)));
                self.metrics.handovers_in.inc();
                // Kept although another node owns it by this node's table (the sender's
                // was older or newer): push it on soon rather than at the next table
                // change, before that owner activates the actor without it.
                let owned_elsewhere = self.current().is_some_and(|p| {
                    p.owner(actor_type, id)
                        .is_some_and(|m| *m.pod != *self.config.pod)
                });
                if owned_elsewhere {
                    let rt = self.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        rt.push_parked().await;
                    });
                }
            }
            HandOffOutcome::Superseded => {}
            HandOffOutcome::Duplicate => {
                // The sender drops its copy on an acknowledgement. When this node does not
                // own the actor either, it is pushing its own copy to the sender at the
                // same time: acknowledging both ways would drop both (seed 1119). Only the
                // owner acknowledges a duplicate; elsewhere both copies stay until the
                // tables agree on an owner.
                let owns = self
                    .current()
                    .and_then(|p| p.owner(actor_type, id).map(|m| *m.pod == *self.config.pod))
                    .unwrap_or(false);
                if !owns {
                    return Response::Failed(DeliveryError::Unavailable(format!(
                        "{actor_type}/{id}: the same state is kept here, and this node does not own it"
                    )));
                }
            }
            HandOffOutcome::Conflict => {
                entry.stats.undeliverable.inc();
                tracing::error!(
                    actor_type,
                    id,
                    ?generation,
                    "handed-over state arrived after the actor started on an older state; it is dropped"
                );
            }
        }
        Response::HandOffAck
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use MemberStatus::*;

    #[test]
    fn claims_fail_open_only_for_members_that_cannot_hold_the_actor() {
        let grace = Duration::from_secs(3);
        let s = Duration::from_secs;
        // Refusing connections or silent while Up or Leaving: wait, never activate empty.
        assert_eq!(unanswered(Some(Up), None, grace), Unanswered::Wait);
        assert_eq!(unanswered(Some(Leaving), None, grace), Unanswered::Wait);
        assert_eq!(unanswered(Some(Joining), None, grace), Unanswered::Wait);
        // Down by unreachability may still run: wait out the grace period.
        assert_eq!(unanswered(Some(Down), Some(s(1)), grace), Unanswered::Wait);
        assert_eq!(unanswered(Some(Down), None, grace), Unanswered::Wait);
        assert_eq!(unanswered(Some(Down), Some(s(3)), grace), Unanswered::Gone);
        // Removed from the table, or replaced by a new incarnation: gone...
        assert_eq!(unanswered(None, None, grace), Unanswered::Gone);
        assert_eq!(unanswered(None, Some(s(3)), grace), Unanswered::Gone);
        // ...but a member downed, or removed without a leave, less than the grace ago may
        // still serve (found by the simulation, seed 289: removed 1 s after its Down).
        assert_eq!(unanswered(None, Some(s(1)), grace), Unanswered::Wait);
    }

    #[test]
    fn a_state_is_lost_only_when_a_dead_holder_had_a_newer_one() {
        let g = |version, counter| Generation {
            epoch: 0,
            version,
            counter,
        };
        let marker = |holder: &str, inc: &str| Marker {
            holder: holder.into(),
            incarnation: inc.into(),
            generation: g(3, 2),
        };
        let dead = |_: &str, _: &str| false;
        let alive = |_: &str, _: &str| true;
        let me = ("p", "p-2");
        assert!(!state_lost(None, me, dead, None), "nobody held it");
        assert!(state_lost(Some(&marker("p", "p-1")), me, dead, None));
        assert!(state_lost(
            Some(&marker("p", "p-1")),
            me,
            dead,
            Some(g(3, 1))
        ));
        assert!(
            !state_lost(Some(&marker("p", "p-1")), me, dead, Some(g(3, 2))),
            "its state arrived (handed over before it died)"
        );
        assert!(!state_lost(Some(&marker("w", "w-1")), me, alive, None));
        assert!(
            !state_lost(Some(&marker("p", "p-2")), me, dead, None),
            "our own"
        );
    }

    #[test]
    fn a_node_is_evicted_when_downed_replaced_removed_or_moved_to_another_cluster() {
        let e = Standing::Evicted;
        let m = Standing::Member;
        use TableChange::{Later, OtherCluster as Other};
        assert_eq!(standing(Some(("i1", Up)), Some(("i1", Down)), Later), e);
        assert_eq!(
            standing(Some(("i1", Leaving)), Some(("i1", Down)), Later),
            e
        );
        assert_eq!(standing(Some(("i1", Up)), Some(("i2", Joining)), Later), e);
        assert_eq!(standing(Some(("i1", Up)), None, Later), e);
        assert_eq!(standing(Some(("i1", Up)), Some(("i1", Up)), Other), e);
        // A graceful leave ends with removal: not an eviction (the drain finishes).
        assert_eq!(standing(Some(("i1", Leaving)), None, Later), m);
        assert_eq!(standing(Some(("i1", Joining)), Some(("i1", Up)), Later), m);
        assert_eq!(standing(Some(("i1", Up)), Some(("i1", Leaving)), Later), m);
        assert_eq!(standing(None, Some(("i1", Joining)), Later), m);
        assert_eq!(standing(None, Some(("i1", Joining)), Other), m);
        // Already Down: handled when it was downed.
        assert_eq!(standing(Some(("i1", Down)), None, Later), m);
        // A restore replaces or drops every entry but the restorer's: nobody was downed.
        let restored = TableChange::Restored;
        assert_eq!(standing(Some(("i1", Up)), None, restored), m);
        assert_eq!(standing(Some(("i1", Up)), Some(("i2", Up)), restored), m);
    }
}
