//! The operator's HTTP server: `/healthz` (the process answers), `/readyz` (initialised:
//! either leading with warm caches or standing by — and no watch dead for longer than
//! [`crate::watches::DEAD_AFTER`]) and `/metrics`.
//!
//! [`app`] is a plain `Router`, tested without a socket.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::metrics::Metrics;
use crate::watches::{DEAD_AFTER, WatchHealth};

/// What the server reads.
#[derive(Debug, Clone)]
pub struct ServerState {
    /// The process's metrics.
    pub metrics: Metrics,
    /// Set once the operator is initialised (see [`app`]).
    pub ready: Arc<AtomicBool>,
    /// The controller's watches (see [`crate::watches`]).
    pub watches: WatchHealth,
}

/// The router: `/healthz`, `/readyz`, `/metrics`.
pub fn app(state: ServerState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn readyz(State(s): State<ServerState>) -> impl IntoResponse {
    if !s.ready.load(Ordering::Relaxed) {
        return (StatusCode::SERVICE_UNAVAILABLE, "starting".to_owned());
    }
    let dead = s.watches.dead(std::time::Instant::now(), DEAD_AFTER);
    if dead.is_empty() {
        return (StatusCode::OK, "ready".to_owned());
    }
    let list: Vec<String> = dead
        .iter()
        .map(|(kind, d)| format!("{kind} for {}s", d.as_secs()))
        .collect();
    (
        StatusCode::SERVICE_UNAVAILABLE,
        format!(
            "watches failing (is the API server reachable?): {}",
            list.join(", ")
        ),
    )
}

async fn metrics(State(s): State<ServerState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.encode(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    fn state() -> ServerState {
        ServerState {
            metrics: Metrics::new().expect("metrics"),
            ready: Arc::new(AtomicBool::new(false)),
            watches: WatchHealth::default(),
        }
    }

    async fn status(app: Router, path: &str) -> StatusCode {
        let req = Request::get(path).body(Body::empty()).expect("request");
        app.oneshot(req).await.expect("response").status()
    }

    #[tokio::test]
    async fn healthz_always_and_readyz_once_ready() {
        let s = state();
        assert_eq!(status(app(s.clone()), "/healthz").await, StatusCode::OK);
        assert_eq!(
            status(app(s.clone()), "/readyz").await,
            StatusCode::SERVICE_UNAVAILABLE
        );
        s.ready.store(true, Ordering::Relaxed);
        assert_eq!(status(app(s.clone()), "/readyz").await, StatusCode::OK);
        assert_eq!(status(app(s.clone()), "/metrics").await, StatusCode::OK);
    }

    #[tokio::test]
    async fn readyz_fails_while_a_watch_has_been_dead_for_long() {
        let s = state();
        s.ready.store(true, Ordering::Relaxed);
        let long_ago = std::time::Instant::now()
            .checked_sub(DEAD_AFTER + std::time::Duration::from_secs(1))
            .expect("a monotonic clock this old");
        s.watches.record("Deployment", false, long_ago);
        s.watches
            .record("Deployment", false, std::time::Instant::now());
        assert_eq!(
            status(app(s.clone()), "/readyz").await,
            StatusCode::SERVICE_UNAVAILABLE
        );
        s.watches
            .record("Deployment", true, std::time::Instant::now());
        assert_eq!(status(app(s), "/readyz").await, StatusCode::OK);
    }
}
