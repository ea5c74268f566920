//! Sidecar mode: actor types implemented by an application container over localhost HTTP.
//!
//! The node keeps mailboxes, placement, supervision and membership; for every message it
//! calls the application (protocol in `SIDECAR.md`):
//!
//! ```text
//!  mailbox ─► POST {app}/actors/{type}/{id}/{method}   body = payload  ─► 2xx body = reply
//!  activate   POST {app}/actors/{type}/{id}/$activate   body = state (only when there is one)
//!  deactivate POST {app}/actors/{type}/{id}/$deactivate ─► 2xx body = state to keep
//! ```
//!
//! **The turn's state.** An answer to a message may carry the actor's state after the
//! turn: header `troupe-state-length: N`, and the body's first N bytes are the state, the
//! rest the reply. With a durable store the node writes that state before it sends the
//! reply (an answer without the header leaves the state unchanged); in memory mode the
//! node keeps it as the state to hand over, so `$deactivate` is not needed to move it.
//!
//! A 4xx answer is the client's fault ([`ActorError::BadRequest`]), anything else a failure.
//! Methods starting with `$` are the node's lifecycle calls: a message naming one (from a
//! client, or forwarded by a peer) is refused as a bad request and never reaches the
//! application, so nobody but the node can pop or overwrite an actor's state there.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};

use crate::{
    behavior::{Actor, ActorType, ReplyFuture, Step, TurnState},
    error::ActorError,
    message::{Message, Reply},
};

/// Largest reply accepted from the application.
const MAX_REPLY_BYTES: usize = 8 << 20;
/// A future answer with the actor's state after the turn, if the application sent it.
pub type TurnFuture = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<(Option<Bytes>, Bytes), ActorError>> + Send>,
>;

/// The answer header that says how many leading body bytes are the actor's state.
pub const STATE_LENGTH_HEADER: &str = "troupe-state-length";

/// Splits an answer body into `(state, reply)` by the `troupe-state-length` header value.
pub fn split_turn(header: Option<&str>, body: Bytes) -> Result<(Option<Bytes>, Bytes), String> {
    let Some(h) = header else {
        return Ok((None, body));
    };
    let n: usize = h
        .trim()
        .parse()
        .map_err(|_| format!("{STATE_LENGTH_HEADER} must be a byte count, got {h:?}"))?;
    if n > body.len() {
        return Err(format!(
            "{STATE_LENGTH_HEADER} is {n} but the body has only {} bytes",
            body.len()
        ));
    }
    let mut reply = body;
    let state = reply.split_to(n);
    Ok((Some(state), reply))
}
/// Longest wait for one application call.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The `host:port` of an `http://host:port[/…]` application URL (what a node connects to
/// while it waits for its application); `None` for another scheme or no port.
pub fn authority(url: &str) -> Option<&str> {
    let rest = url.strip_prefix("http://")?;
    let authority = rest.split('/').next()?;
    let (host, port) = authority.rsplit_once(':')?;
    (!host.is_empty() && port.parse::<u16>().is_ok()).then_some(authority)
}

/// The HTTP client shared by every sidecar actor of a node.
#[derive(Clone, Debug)]
pub struct SidecarApp {
    base: Arc<str>,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl SidecarApp {
    /// A client for the application at `base` (`http://127.0.0.1:3000`).
    pub fn new(base: &str) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Self {
            base: base.trim_end_matches('/').into(),
            client,
        }
    }

    /// POSTs `body` to `{app}/actors/{type}/{id}/{method}` and returns the reply body.
    pub fn call(&self, actor_type: &str, id: &str, method: &str, body: Bytes) -> ReplyFuture {
        let turn = self.call_turn(actor_type, id, method, body);
        Box::pin(async move { turn.await.map(|(_, reply)| reply) })
    }

    /// Like [`call`](Self::call), with the actor's state after the turn when the
    /// application sent one (`troupe-state-length`).
    pub fn call_turn(&self, actor_type: &str, id: &str, method: &str, body: Bytes) -> TurnFuture {
        let url = format!(
            "{}/actors/{}/{}/{}",
            self.base,
            path_segment(actor_type),
            path_segment(id),
            path_segment(method)
        );
        let client = self.client.clone();
        Box::pin(async move {
            let request = hyper::Request::post(&url)
                .header("content-type", "application/json")
                .body(Full::new(body))
                .map_err(|e| ActorError::Failed(format!("sidecar request to {url}: {e}")))?;
            let call = async {
                let response = client.request(request).await.map_err(|e| {
                    ActorError::Failed(format!("sidecar application unreachable at {url}: {e}"))
                })?;
                let status = response.status();
                let state_length = response
                    .headers()
                    .get(STATE_LENGTH_HEADER)
                    .map(|v| v.to_str().map(str::to_owned).unwrap_or_else(|_| "?".into()));
                let body = Limited::new(response.into_body(), MAX_REPLY_BYTES)
                    .collect()
                    .await
                    .map_err(|e| ActorError::Failed(format!("sidecar reply from {url}: {e}")))?
                    .to_bytes();
                if status.is_success() {
                    split_turn(state_length.as_deref(), body)
                        .map_err(|e| ActorError::Failed(format!("sidecar answer from {url}: {e}")))
                } else if status.is_client_error() {
                    Err(ActorError::BadRequest(format!(
                        "sidecar answered {status}: {}",
                        String::from_utf8_lossy(&body[..body.len().min(512)])
                    )))
                } else {
                    Err(ActorError::Failed(format!(
                        "sidecar answered {status}: {}",
                        String::from_utf8_lossy(&body[..body.len().min(512)])
                    )))
                }
            };
            tokio::time::timeout(CALL_TIMEOUT, call)
                .await
                .map_err(|_| ActorError::Failed(format!("sidecar call to {url} timed out")))?
        })
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'$') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// One actor type served by the application.
#[derive(Clone, Debug)]
pub struct SidecarType {
    name: String,
    app: SidecarApp,
}

impl SidecarType {
    /// The type `name`, served by `app`.
    pub fn new(name: &str, app: SidecarApp) -> Self {
        Self {
            name: name.to_owned(),
            app,
        }
    }
}

/// One actor served by the application.
#[derive(Debug)]
pub struct SidecarActor {
    actor_type: Arc<str>,
    id: Arc<str>,
    app: SidecarApp,
    /// State to hand to the application before the next message: put back when the
    /// application refuses `$activate`, so that neither the retry nor a hand-over loses it.
    pending_state: Arc<std::sync::Mutex<Option<Bytes>>>,
    /// The state the application sent with its last answer, until the runtime takes it.
    turn_state: Arc<std::sync::Mutex<Option<Bytes>>>,
    /// The last state the application sent (what `deactivate` keeps if it has no answer).
    last_state: Option<Bytes>,
}

/// Calls of `$deactivate` before its state is given up (5xx, timeouts, refusals).
const DEACTIVATE_ATTEMPTS: u32 = 3;
/// Pause before the n-th retry of `$deactivate`: n times this.
const DEACTIVATE_RETRY: Duration = Duration::from_millis(200);

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The prefix of the lifecycle methods (`$activate`, `$deactivate`).
const LIFECYCLE_PREFIX: char = '$';

impl Actor for SidecarActor {
    fn handle(&mut self, m: &Message) -> Step {
        if m.method.starts_with(LIFECYCLE_PREFIX) {
            return Step::Done(Err(ActorError::BadRequest(format!(
                "method {:?}: names starting with '{LIFECYCLE_PREFIX}' are reserved for the node's lifecycle calls",
                m.method
            ))));
        }
        let turn = self
            .app
            .call_turn(&self.actor_type, &self.id, &m.method, m.payload.clone());
        let slot = self.turn_state.clone();
        let call: ReplyFuture = Box::pin(async move {
            let (state, reply) = turn.await?;
            if let Some(s) = state {
                *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(s);
            }
            Ok(reply)
        });
        let pending = self.pending_state.clone();
        let taken = lock(&pending).take();
        match taken {
            None => Step::Later(call),
            Some(state) => {
                let activate =
                    self.app
                        .call(&self.actor_type, &self.id, "$activate", state.clone());
                Step::Later(Box::pin(async move {
                    if let Err(e) = activate.await {
                        *lock(&pending) = Some(state);
                        return Err(e);
                    }
                    call.await
                }))
            }
        }
    }

    fn turn_state(&mut self) -> TurnState {
        match self.take_turn_state() {
            Some(s) => TurnState::Changed(s),
            None => TurnState::Unchanged,
        }
    }

    fn deactivate(&mut self) -> Step {
        if let Some(state) = lock(&self.pending_state).take() {
            // Never activated in the application: the state is unchanged.
            return Step::Done(Ok(state));
        }
        self.take_turn_state();
        let reported = self.last_state.clone();
        let (app, actor_type, id) = (self.app.clone(), self.actor_type.clone(), self.id.clone());
        Step::Later(Box::pin(async move {
            let mut attempt = 0;
            loop {
                let r: Reply = app
                    .call(&actor_type, &id, "$deactivate", Bytes::new())
                    .await;
                // An application without state handling answers 404: nothing to keep but
                // what it reported with its answers, if anything.
                match r {
                    Err(ActorError::BadRequest(_)) => return Ok(reported.unwrap_or_default()),
                    Ok(b) if b.is_empty() => return Ok(reported.unwrap_or_default()),
                    Ok(b) => return Ok(b),
                    // A 5xx, a timeout or a refused connection: the application may be
                    // busy for a moment; its state is worth a few retries.
                    Err(e) if attempt + 1 >= DEACTIVATE_ATTEMPTS => {
                        return match reported {
                            // What it reported with its last answer is the newest state
                            // the node saw.
                            Some(state) => Ok(state),
                            None => Err(e),
                        };
                    }
                    Err(e) => {
                        tracing::warn!(%actor_type, %id, error = %e, "$deactivate failed; retrying");
                        attempt += 1;
                        tokio::time::sleep(DEACTIVATE_RETRY * attempt).await;
                    }
                }
            }
        }))
    }
}

impl SidecarActor {
    fn take_turn_state(&mut self) -> Option<Bytes> {
        let s = self
            .turn_state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(s) = &s {
            self.last_state = Some(s.clone());
        }
        s
    }
}

impl ActorType for SidecarType {
    fn name(&self) -> &str {
        &self.name
    }
    fn activate(&self, id: &str, state: Option<Bytes>) -> Box<dyn Actor> {
        Box::new(SidecarActor {
            actor_type: self.name.as_str().into(),
            id: id.into(),
            app: self.app.clone(),
            pending_state: Arc::new(std::sync::Mutex::new(
                state.clone().filter(|s| !s.is_empty()),
            )),
            turn_state: Arc::default(),
            last_state: state.filter(|s| !s.is_empty()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{SidecarApp, SidecarType};
    use crate::behavior::{ActorType, Step};
    use crate::message::Message;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// An application on 127.0.0.1 whose `$activate` answers 503 `activate_failures` times
    /// and whose `$deactivate` answers 500 `deactivate_failures` times (then `"kept"`);
    /// every other method answers `{}`. Also returns the calls it answered 2xx, in order.
    async fn flaky_app(
        activate_failures: usize,
        deactivate_failures: usize,
    ) -> (String, Arc<std::sync::Mutex<Vec<String>>>) {
        use axum::{extract::Path, http::StatusCode};
        let activations = Arc::new(AtomicUsize::new(0));
        let deactivations = Arc::new(AtomicUsize::new(0));
        let calls = Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = calls.clone();
        let app = axum::Router::new().route(
            "/actors/{ty}/{id}/{method}",
            axum::routing::post(
                move |Path((_, _, method)): Path<(String, String, String)>, body: Bytes| {
                    let (activations, deactivations) = (activations.clone(), deactivations.clone());
                    let log = log.clone();
                    async move {
                        let answer = match method.as_str() {
                            "$activate"
                                if activations.fetch_add(1, Ordering::SeqCst)
                                    < activate_failures =>
                            {
                                (StatusCode::SERVICE_UNAVAILABLE, "starting")
                            }
                            "$deactivate"
                                if deactivations.fetch_add(1, Ordering::SeqCst)
                                    < deactivate_failures =>
                            {
                                (StatusCode::INTERNAL_SERVER_ERROR, "busy")
                            }
                            "$deactivate" => (StatusCode::OK, "kept"),
                            _ => (StatusCode::OK, "{}"),
                        };
                        if answer.0 == StatusCode::OK {
                            let call = format!("{method} {}", String::from_utf8_lossy(&body));
                            log.lock().expect("log").push(call);
                        }
                        answer
                    }
                },
            ),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{addr}"), calls)
    }

    async fn run(step: Step) -> crate::message::Reply {
        match step {
            Step::Done(r) => r,
            Step::Later(f) => f.await,
        }
    }

    #[tokio::test]
    async fn a_failed_activate_keeps_the_state_for_the_next_message_and_the_hand_over() {
        let (url, _) = flaky_app(1, 0).await;
        let ty = SidecarType::new("cart", SidecarApp::new(&url));
        let mut actor = ty.activate("d1", Some(Bytes::from_static(b"{\"pear\":2}")));
        let first = run(actor.handle(&Message::new("add", "{}"))).await;
        assert!(first.is_err(), "the app refused $activate: {first:?}");
        // Deactivated now (a hand-over): the state the app never took is the state kept.
        let kept = run(actor.deactivate()).await;
        assert_eq!(
            kept.as_deref().ok(),
            Some(&b"{\"pear\":2}"[..]),
            "the state was dropped after a failed $activate: {kept:?}"
        );
    }

    #[tokio::test]
    async fn a_failed_activate_is_retried_with_the_next_message() {
        let (url, calls) = flaky_app(1, 0).await;
        let ty = SidecarType::new("cart", SidecarApp::new(&url));
        let mut actor = ty.activate("d1", Some(Bytes::from_static(b"{\"pear\":2}")));
        assert!(run(actor.handle(&Message::new("add", "{}"))).await.is_err());
        assert!(run(actor.handle(&Message::new("add", "{}"))).await.is_ok());
        assert_eq!(
            *calls.lock().expect("calls"),
            ["$activate {\"pear\":2}", "add {}"],
            "the second message reached an application that never got the state"
        );
        // Activated in the app now: the app's $deactivate answer is the state.
        assert_eq!(
            run(actor.deactivate()).await.as_deref().ok(),
            Some(&b"kept"[..])
        );
    }

    #[tokio::test]
    async fn a_deactivate_that_fails_for_a_moment_is_retried() {
        let (url, _) = flaky_app(0, 2).await;
        let ty = SidecarType::new("cart", SidecarApp::new(&url));
        let mut actor = ty.activate("d1", None);
        assert!(run(actor.handle(&Message::new("add", "{}"))).await.is_ok());
        let kept = run(actor.deactivate()).await;
        assert_eq!(
            kept.as_deref().ok(),
            Some(&b"kept"[..]),
            "a $deactivate answered 500 twice lost the state: {kept:?}"
        );
    }

    use super::{Bytes, authority, path_segment, split_turn};

    #[test]
    fn the_authority_of_an_application_url_is_its_host_and_port() {
        assert_eq!(authority("http://127.0.0.1:3000"), Some("127.0.0.1:3000"));
        assert_eq!(
            authority("http://127.0.0.1:3000/base"),
            Some("127.0.0.1:3000")
        );
        assert_eq!(authority("http://localhost"), None);
        assert_eq!(authority("https://127.0.0.1:3000"), None);
        assert_eq!(authority("http://:3000"), None);
        assert_eq!(authority("http://h:99999"), None);
    }

    #[test]
    fn a_turn_answer_splits_into_state_and_reply() {
        let body = Bytes::from_static(b"{\"n\":1}{\"ok\":true}");
        assert_eq!(
            split_turn(Some("7"), body.clone()),
            Ok((
                Some(Bytes::from_static(b"{\"n\":1}")),
                Bytes::from_static(b"{\"ok\":true}")
            ))
        );
        assert_eq!(split_turn(None, body.clone()), Ok((None, body.clone())));
        assert_eq!(
            split_turn(Some("0"), body.clone()),
            Ok((Some(Bytes::new()), body.clone()))
        );
        assert!(split_turn(Some("99"), body.clone()).is_err());
        assert!(split_turn(Some("x"), body).is_err());
    }

    #[test]
    fn path_segments_are_percent_encoded() {
        assert_eq!(path_segment("a b?c"), "a%20b%3Fc");
        assert_eq!(path_segment("$activate"), "$activate");
        assert_eq!(path_segment("é"), "%C3%A9");
    }
}
