//! The client API router: any method, path and body, against a standalone runtime (no
//! members, so nothing is served; routing, validation and body limits still run).
//! Input: `METHOD PATH\nBODY`.
#![no_main]

use std::sync::OnceLock;

use axum::body::Body;
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt;
use troupe_actors::{ActorRuntime, RuntimeConfig};

struct Fixture {
    rt: tokio::runtime::Runtime,
    router: axum::Router,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let router = rt.block_on(async {
            let actors =
                ActorRuntime::new(RuntimeConfig::new("fuzz", "fuzz-1"), &prometheus::Registry::new())
                    .expect("actor runtime");
            actors.set_accepting(true);
            actors.client_router()
        });
        Fixture { rt, router }
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (head, body) = text.split_once('\n').unwrap_or((text, ""));
    let (method, path) = head.split_once(' ').unwrap_or(("POST", head));
    let Ok(req) = axum::http::Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json")
        .body(Body::from(body.to_owned()))
    else {
        return;
    };
    let f = fixture();
    let _ = f.rt.block_on(f.router.clone().oneshot(req));
});
