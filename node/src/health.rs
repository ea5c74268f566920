//! Health of the node as the kubelet sees it.
//!
//! * `/alive` answers 200 while the process and its runtime respond. It never looks at
//!   membership, so a slow bootstrap never gets a pod restarted.
//! * `/ready` answers 200 only while the node is Ready to take traffic, and 503 otherwise.
//!   While the node is not Ready yet (and not draining) it may hold the answer for up to
//!   [`Health::set_ready_wait`] and answer 200 the moment it becomes Ready: the kubelet
//!   probes at most once a second, and a probe that arrives during the last milliseconds
//!   of a join would otherwise cost a whole probe period.
//! * `POST /admin/drain` and `POST /admin/undrain` take the node out of (and back into)
//!   traffic by hand, without stopping it: what an operator does before maintenance.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};

/// What the health endpoints read. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Health {
    inner: Arc<HealthInner>,
}

#[derive(Debug, Default)]
struct HealthInner {
    member_up: AtomicBool,
    /// When set, `member_up` holds only until then (see [`Health::set_member_up_until`]).
    up_until: Mutex<Option<Instant>>,
    draining: AtomicBool,
    /// How long `/ready` may wait for readiness, in milliseconds.
    ready_wait_ms: AtomicU64,
    /// Woken on every change of the flags.
    changed: Notify,
}

impl Health {
    /// Records whether the node is an Up member of its cluster, with no deadline.
    pub fn set_member_up(&self, up: bool) {
        self.set_member_up_until(up, None);
    }

    /// Records whether the node is an Up member, valid until `until` (if given): past the
    /// deadline the node is not Ready until membership says so again. Membership uses it
    /// so that readiness lapses on time even if its own loop is stuck.
    pub fn set_member_up_until(&self, up: bool, until: Option<Instant>) {
        if let Ok(mut g) = self.inner.up_until.lock() {
            *g = until;
        }
        self.inner.member_up.store(up, Ordering::SeqCst);
        self.inner.changed.notify_waiters();
    }

    /// Starts or stops draining: a draining node is never Ready.
    pub fn set_draining(&self, draining: bool) {
        self.inner.draining.store(draining, Ordering::SeqCst);
        self.inner.changed.notify_waiters();
    }

    /// How long `/ready` may hold its answer while the node is not Ready yet (default 0:
    /// answer at once). Keep it below the readiness probe's `timeoutSeconds`.
    pub fn set_ready_wait(&self, wait: Duration) {
        let ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
        self.inner.ready_wait_ms.store(ms, Ordering::SeqCst);
    }

    fn ready_wait(&self) -> Duration {
        Duration::from_millis(self.inner.ready_wait_ms.load(Ordering::SeqCst))
    }

    /// Returns once the node is Ready or draining.
    async fn until_ready_or_draining(&self) {
        loop {
            let notified = self.inner.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_ready() || self.is_draining() {
                return;
            }
            notified.await;
        }
    }

    /// Whether the node is draining.
    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::SeqCst)
    }

    /// Ready means: an Up member (within its deadline) and not draining.
    pub fn is_ready(&self) -> bool {
        let in_time = self
            .inner
            .up_until
            .lock()
            .map(|g| g.is_none_or(|u| crate::seams::now() <= u))
            .unwrap_or(false);
        self.inner.member_up.load(Ordering::SeqCst) && in_time && !self.is_draining()
    }
}

/// The management routes.
pub fn router(health: Health) -> Router {
    Router::new()
        .route("/alive", get(|| async { "alive\n" }))
        .route("/ready", get(ready))
        .route("/admin/drain", post(drain))
        .route("/admin/undrain", post(undrain))
        .with_state(health)
}

async fn ready(State(h): State<Health>) -> (StatusCode, &'static str) {
    let wait = h.ready_wait();
    if !wait.is_zero() && !h.is_ready() && !h.is_draining() {
        let _ = tokio::time::timeout(wait, h.until_ready_or_draining()).await;
    }
    if h.is_ready() {
        (StatusCode::OK, "ready\n")
    } else if h.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready: draining\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: not an Up member yet\n",
        )
    }
}

async fn drain(State(h): State<Health>) -> &'static str {
    h.set_draining(true);
    "draining\n"
}

async fn undrain(State(h): State<Health>) -> &'static str {
    h.set_draining(false);
    "not draining\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ready_waits_for_readiness_up_to_the_limit() {
        let h = Health::default();
        h.set_ready_wait(Duration::from_millis(300));
        let app = router(h.clone());
        // Nothing happens: 503 after the wait.
        let t = Instant::now();
        assert_eq!(
            status(&app, "GET", "/ready").await,
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert!(t.elapsed() >= Duration::from_millis(300));
        // Becomes Ready during the wait: 200 at once.
        let h2 = h.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            h2.set_member_up(true);
        });
        let t = Instant::now();
        assert_eq!(status(&app, "GET", "/ready").await, StatusCode::OK);
        assert!(t.elapsed() < Duration::from_millis(300));
        // Draining answers at once.
        h.set_draining(true);
        let t = Instant::now();
        assert_eq!(
            status(&app, "GET", "/ready").await,
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert!(t.elapsed() < Duration::from_millis(300));
    }
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    async fn status(app: &Router, method: &str, path: &str) -> StatusCode {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .body(Body::empty());
        match req {
            Ok(req) => match app.clone().oneshot(req).await {
                Ok(resp) => resp.status(),
                Err(e) => match e {},
            },
            Err(_) => StatusCode::BAD_REQUEST,
        }
    }

    #[tokio::test]
    async fn alive_ignores_membership_and_ready_follows_it() {
        let h = Health::default();
        let app = router(h.clone());
        assert_eq!(status(&app, "GET", "/alive").await, StatusCode::OK);
        assert_eq!(
            status(&app, "GET", "/ready").await,
            StatusCode::SERVICE_UNAVAILABLE
        );
        h.set_member_up(true);
        assert_eq!(status(&app, "GET", "/ready").await, StatusCode::OK);
        assert_eq!(status(&app, "POST", "/admin/drain").await, StatusCode::OK);
        assert_eq!(
            status(&app, "GET", "/ready").await,
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(status(&app, "GET", "/alive").await, StatusCode::OK);
        assert_eq!(status(&app, "POST", "/admin/undrain").await, StatusCode::OK);
        assert_eq!(status(&app, "GET", "/ready").await, StatusCode::OK);
        h.set_member_up_until(
            true,
            Instant::now().checked_sub(std::time::Duration::from_millis(1)),
        );
        assert_eq!(
            status(&app, "GET", "/ready").await,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
}
