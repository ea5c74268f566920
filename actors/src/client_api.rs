//! The client HTTP API (axum), served by the node on port 8080. Documented in `API.md`.
//!
//! ```text
//!  POST /actors/{type}/{id}/ask[/{method}]    body = payload → 200 reply body
//!  POST /actors/{type}/{id}/tell[/{method}]   body = payload → 202 accepted
//!  GET  /actors                                → {"types": [...]}
//! ```
//!
//! Errors are JSON `{"error": "...", "status": n}`: 400 bad id or payload, 404 unknown
//! type, 413 body too large, 429 mailbox full (`Retry-After`), 500 handler failed, 503 not
//! accepting / dropped / unavailable / node at its actor bound (`Retry-After`), 504 no reply
//! in time. Routing and
//! actors are the runtime's; this module only translates HTTP, through the runtime's
//! public API ([`ActorRuntime::ask`], [`ActorRuntime::tell`]) only.

use axum::{
    Json, Router,
    body::Bytes,
    extract::{DefaultBodyLimit, Path, State},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde_json::json;

use crate::{error::DeliveryError, message::Message, runtime::ActorRuntime};

/// The router, with `rt` as its state.
pub fn router(rt: ActorRuntime) -> Router {
    let limit = rt.max_body_bytes();
    Router::new()
        .route("/actors", get(types))
        .route("/actors/{actor_type}/{id}/ask", post(ask_default))
        .route("/actors/{actor_type}/{id}/ask/{method}", post(ask))
        .route("/actors/{actor_type}/{id}/tell", post(tell_default))
        .route("/actors/{actor_type}/{id}/tell/{method}", post(tell))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(rt)
}

fn error_response(e: &DeliveryError) -> Response {
    let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut r = (
        status,
        Json(json!({ "error": e.to_string(), "status": status.as_u16() })),
    )
        .into_response();
    if let Some(secs) = e.retry_after_secs() {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    r
}

async fn dispatch(
    rt: ActorRuntime,
    actor_type: String,
    id: String,
    method: String,
    body: Bytes,
    ask: bool,
) -> Response {
    let message = Message::owned(method, body);
    let answer = if ask {
        rt.ask(&actor_type, &id, message).await
    } else {
        rt.tell(&actor_type, &id, message)
            .await
            .map(|()| Bytes::new())
    };
    match answer {
        Ok(reply) if ask => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            reply,
        )
            .into_response(),
        Ok(_) => StatusCode::ACCEPTED.into_response(),
        Err(e) => error_response(&e),
    }
}

async fn ask(
    State(rt): State<ActorRuntime>,
    Path((actor_type, id, method)): Path<(String, String, String)>,
    body: Bytes,
) -> Response {
    dispatch(rt, actor_type, id, method, body, true).await
}

async fn ask_default(
    State(rt): State<ActorRuntime>,
    Path((actor_type, id)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    dispatch(rt, actor_type, id, "default".into(), body, true).await
}

async fn tell(
    State(rt): State<ActorRuntime>,
    Path((actor_type, id, method)): Path<(String, String, String)>,
    body: Bytes,
) -> Response {
    dispatch(rt, actor_type, id, method, body, false).await
}

async fn tell_default(
    State(rt): State<ActorRuntime>,
    Path((actor_type, id)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    dispatch(rt, actor_type, id, "default".into(), body, false).await
}

async fn types(State(rt): State<ActorRuntime>) -> Response {
    Json(json!({ "types": rt.actor_types() })).into_response()
}
