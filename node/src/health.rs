//! Health of the node as the kubelet sees it.
//!
//! * `/alive` answers 200 while the process and its runtime respond. It never looks at
//!   membership, so a slow bootstrap never gets a pod restarted.
//! * `/ready` answers 200 only while the node is Ready to take traffic, and 503 otherwise.
//! * `POST /admin/drain` and `POST /admin/undrain` take the node out of (and back into)
//!   traffic by hand, without stopping it: what an operator does before maintenance.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

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
    }

    /// Starts or stops draining: a draining node is never Ready.
    pub fn set_draining(&self, draining: bool) {
        self.inner.draining.store(draining, Ordering::SeqCst);
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
            .map(|g| g.is_none_or(|u| Instant::now() <= u))
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
