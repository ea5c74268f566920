//! A sidecar-mode application in Rust: the `greeter` actor type over localhost HTTP,
//! speaking the protocol of `actors/SIDECAR.md` (the same type as the Python example in
//! `examples/sidecar-app/`). Built into the image `troupe-sidecar-example:0.1.0` by
//! `hack/images.sh` and used by the end-to-end test of sidecar mode.
//!
//! `greeter` `greet {"name": "..."}` → `{"greeting": "hello ...", "count": n, "pod": "..."}`,
//! where `count` is how many greetings this actor has given: state that the node carries
//! across hand-overs through `$deactivate` / `$activate`.
//!
//! Run: `PORT=3000 cargo run -p troupe-actors --example sidecar_greeter` (127.0.0.1 only).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use serde_json::{Value, json};

type Counts = Arc<Mutex<HashMap<String, u64>>>;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(3000);
    let counts = Counts::default();
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/actors/{actor_type}/{id}/{method}", post(call))
        .with_state(counts);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    axum::serve(listener, app).await?;
    Ok(())
}

async fn call(
    State(counts): State<Counts>,
    Path((actor_type, id, method)): Path<(String, String, String)>,
    body: Bytes,
) -> (StatusCode, String) {
    if actor_type != "greeter" {
        return (
            StatusCode::NOT_FOUND,
            json!({"error": "unknown type"}).to_string(),
        );
    }
    let Ok(mut counts) = counts.lock() else {
        return (StatusCode::INTERNAL_SERVER_ERROR, String::new());
    };
    match method.as_str() {
        "$activate" => {
            let state: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let n = state.get("count").and_then(Value::as_u64).unwrap_or(0);
            counts.insert(id, n);
            (StatusCode::OK, String::new())
        }
        "$deactivate" => match counts.remove(&id) {
            Some(n) => (StatusCode::OK, json!({ "count": n }).to_string()),
            None => (StatusCode::NOT_FOUND, String::new()),
        },
        "greet" | "default" => {
            let args: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let name = args.get("name").and_then(Value::as_str).unwrap_or("world");
            let n = counts.entry(id).or_default();
            *n += 1;
            let pod = std::env::var("POD_NAME").unwrap_or_default();
            let reply = json!({ "greeting": format!("hello {name}"), "count": *n, "pod": pod });
            (StatusCode::OK, reply.to_string())
        }
        other => (
            StatusCode::BAD_REQUEST,
            json!({ "error": format!("greeter has no method {other:?}") }).to_string(),
        ),
    }
}
