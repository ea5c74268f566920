//! The management HTTP surface of a node (port 8558), testable without a socket.
//!
//! | route | what |
//! |---|---|
//! | `GET /alive`, `GET /ready`, `POST /admin/drain`, `POST /admin/undrain` | [`crate::health`] |
//! | `GET /metrics` | every metric of the node's registry, Prometheus text format |
//! | `GET /cluster/members` | the latest [`troupe_contract::MemberTable`], as JSON |
//! | `GET /cluster/ping` | [`crate::probe::PingReply`]: what peers probe |
//! | `GET /cluster/self` | this node's [`crate::view::MembershipView`] summary |

use std::time::Instant;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus::{Encoder, Registry, TextEncoder};
use tokio::sync::watch;

use crate::health::{self, Health};
use crate::probe::PingReply;
use crate::view::MembershipView;

/// What the management routes read.
#[derive(Clone, Debug)]
pub struct Management {
    /// Health flags.
    pub health: Health,
    /// The node's view of its membership.
    pub view: watch::Receiver<MembershipView>,
    /// The node's one registry.
    pub registry: Registry,
}

/// All management routes.
pub fn router(state: Management) -> Router {
    let cluster = Router::new()
        .route("/metrics", get(metrics))
        .route("/cluster/members", get(members))
        .route("/cluster/ping", get(ping))
        .route("/cluster/self", get(self_view))
        .with_state(state.clone());
    health::router(state.health).merge(cluster)
}

async fn metrics(State(s): State<Management>) -> Response {
    let encoder = TextEncoder::new();
    let mut buf = Vec::new();
    match encoder.encode(&s.registry.gather(), &mut buf) {
        Ok(()) => (
            [(header::CONTENT_TYPE, encoder.format_type().to_owned())],
            buf,
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode metrics: {e}\n"),
        )
            .into_response(),
    }
}

async fn members(State(s): State<Management>) -> Response {
    let table = s.view.borrow().table.clone();
    Json(table).into_response()
}

async fn ping(State(s): State<Management>) -> Json<PingReply> {
    Json(ping_reply(&s.view.borrow(), crate::seams::now()))
}

/// What `GET /cluster/ping` answers for `view` at `now`: the one definition, shared by the
/// HTTP handler and by in-process probers (the deterministic simulation, `troupe-sim`).
pub fn ping_reply(view: &MembershipView, now: Instant) -> PingReply {
    PingReply {
        pod: view.me.pod.clone(),
        incarnation: view.me.incarnation.clone(),
        table: view.table.clone(),
        store_age_ms: view.store_age_ms(now),
    }
}

async fn self_view(State(s): State<Management>) -> Json<serde_json::Value> {
    let v = s.view.borrow();
    Json(serde_json::json!({
        "pod": v.me.pod,
        "incarnation": v.me.incarnation,
        "status": v.status.map(|s| s.to_string()),
        "state": v.state.as_str(),
        "serving": v.serving,
        "coordinator": v.coordinator,
        "tableVersion": v.table.version,
        "startedAtMs": v.started_at_ms,
        "upAfterMs": v.up_after.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::member_key::MemberKey;
    use crate::metrics::Metrics;
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    use troupe_contract::{MemberStatus, MemberTable};

    async fn get_body(app: &Router, path: &str) -> (StatusCode, String) {
        let Ok(req) = Request::builder().uri(path).body(Body::empty()) else {
            return (StatusCode::BAD_REQUEST, String::new());
        };
        let resp = match app.clone().oneshot(req).await {
            Ok(r) => r,
            Err(e) => match e {},
        };
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
            .unwrap_or_default();
        (status, body)
    }

    #[tokio::test]
    async fn members_ping_and_metrics() {
        let registry = Registry::new();
        let metrics = Metrics::register(&registry).ok();
        let mut table = MemberTable::default();
        table.join("a", "i1", "10.0.0.1");
        table.transition("a", "i1", MemberStatus::Up).ok();
        if let Some(m) = &metrics {
            m.set_table(&table);
        }
        let mut view = MembershipView::starting(MemberKey::new("a", "i1"), 0);
        view.table = table.clone();
        view.store_contact = Some(std::time::Instant::now());
        let (_tx, rx) = watch::channel(view);
        let app = router(Management {
            health: Health::default(),
            view: rx,
            registry,
        });

        let (status, body) = get_body(&app, "/cluster/members").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(MemberTable::from_json(&body).ok(), Some(table.clone()));

        let (status, body) = get_body(&app, "/cluster/ping").await;
        assert_eq!(status, StatusCode::OK);
        let ping: Option<PingReply> = serde_json::from_str(&body).ok();
        assert_eq!(
            ping.map(|p| (p.pod, p.incarnation)),
            Some(("a".into(), "i1".into()))
        );

        let (status, body) = get_body(&app, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("troupe_members{status=\"Up\"} 1"), "{body}");
        assert!(body.contains("troupe_member_table_version 2"), "{body}");

        let (status, _) = get_body(&app, "/ready").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        let (status, _) = get_body(&app, "/alive").await;
        assert_eq!(status, StatusCode::OK);
    }
}
