//! Who may call the management port's privileged routes.
//!
//! `/admin/*` (drain, undrain) and `/cluster/*` (the member table, pings, the node's view)
//! want the cluster's management token, `Authorization: Bearer <token>`, read from the
//! credential Secret the operator mounts ([`troupe_contract::tls::TOKEN_FILE`]); members
//! send it with every probe ([`crate::probe::HttpProber::with_token`]). `/alive`, `/ready`
//! and `/metrics` stay open to the kubelet and to scrapers. Without a token (a node started
//! without the Secret, the loopback tests) every route is open, as before.
//!
//! The decision ([`allowed`]) is a pure function of the path and the header; [`protect`]
//! is the axum layer around it.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};

/// The cluster's management token.
#[derive(Clone)]
pub struct ManagementToken(Arc<str>);

impl std::fmt::Debug for ManagementToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ManagementToken(<redacted>)")
    }
}

/// Why a token cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The token file could not be read.
    #[error("cannot read the management token {path}: {source}")]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Too short to be a secret, or not a header value.
    #[error("the management token must be at least 32 visible ASCII characters")]
    Weak,
}

impl ManagementToken {
    /// `token`, trimmed; refused unless it is at least 32 visible ASCII characters.
    pub fn new(token: &str) -> Result<Self, TokenError> {
        let token = token.trim();
        if token.len() < 32 || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(TokenError::Weak);
        }
        Ok(Self(token.into()))
    }

    /// Reads the token from `path`.
    pub fn read(path: &std::path::Path) -> Result<Self, TokenError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokenError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::new(&text)
    }

    /// The `Authorization` header value that carries it.
    pub fn header_value(&self) -> String {
        format!("Bearer {}", self.0)
    }

    /// Whether `presented` is this token, comparing in time independent of where they
    /// differ.
    fn matches(&self, presented: &[u8]) -> bool {
        let mine = self.0.as_bytes();
        if presented.len() != mine.len() {
            return false;
        }
        presented
            .iter()
            .zip(mine)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

/// Routes anyone on the network may call: probes and scrapes.
pub fn is_open(path: &str) -> bool {
    matches!(path, "/alive" | "/ready" | "/metrics")
}

/// Whether a request for `path` with `headers` may proceed.
pub fn allowed(token: Option<&ManagementToken>, path: &str, headers: &HeaderMap) -> bool {
    let Some(token) = token else {
        return true;
    };
    if is_open(path) {
        return true;
    }
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
        .is_some_and(|presented| token.matches(presented))
}

async fn check(State(token): State<Option<ManagementToken>>, req: Request, next: Next) -> Response {
    if allowed(token.as_ref(), req.uri().path(), req.headers()) {
        return next.run(req).await;
    }
    tracing::debug!(
        path = req.uri().path(),
        "management request without the cluster's token"
    );
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        "this route wants the cluster's management token\n",
    )
        .into_response()
}

/// `router` with its privileged routes behind `token` (none: unchanged).
pub fn protect(router: Router, token: Option<ManagementToken>) -> Router {
    router.layer(middleware::from_fn_with_state(token, check))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::routing::{get, post};
    use tower::ServiceExt;

    const TOKEN: &str = "0123456789abcdef0123456789abcdef";

    fn app(token: Option<ManagementToken>) -> Router {
        let r = Router::new()
            .route("/alive", get(|| async { "alive" }))
            .route("/ready", get(|| async { "ready" }))
            .route("/metrics", get(|| async { "" }))
            .route("/admin/drain", post(|| async { "drained" }))
            .route("/cluster/members", get(|| async { "{}" }))
            .route("/cluster/ping", get(|| async { "{}" }));
        protect(r, token)
    }

    async fn status(app: &Router, method: &str, path: &str, auth: Option<&str>) -> StatusCode {
        let mut req = axum::http::Request::builder().method(method).uri(path);
        if let Some(a) = auth {
            req = req.header(header::AUTHORIZATION, a);
        }
        let req = req.body(Body::empty()).expect("request");
        app.clone().oneshot(req).await.expect("response").status()
    }

    #[tokio::test]
    async fn privileged_routes_want_the_token_and_probes_stay_open() {
        let app = app(Some(ManagementToken::new(TOKEN).expect("token")));
        for path in ["/alive", "/ready", "/metrics"] {
            assert_eq!(
                status(&app, "GET", path, None).await,
                StatusCode::OK,
                "{path}"
            );
        }
        let wrong = format!("Bearer {}x", &TOKEN[..31]);
        for auth in [None, Some("Bearer "), Some(TOKEN), Some(wrong.as_str())] {
            assert_eq!(
                status(&app, "POST", "/admin/drain", auth).await,
                StatusCode::UNAUTHORIZED
            );
            for path in ["/cluster/members", "/cluster/ping", "/cluster/nothing"] {
                assert_eq!(
                    status(&app, "GET", path, auth).await,
                    StatusCode::UNAUTHORIZED,
                    "{path} {auth:?}"
                );
            }
        }
        let good = format!("Bearer {TOKEN}");
        let good = Some(good.as_str());
        assert_eq!(
            status(&app, "POST", "/admin/drain", good).await,
            StatusCode::OK
        );
        assert_eq!(
            status(&app, "GET", "/cluster/ping", good).await,
            StatusCode::OK
        );
    }

    #[tokio::test]
    async fn without_a_token_every_route_is_open() {
        let app = app(None);
        assert_eq!(
            status(&app, "POST", "/admin/drain", None).await,
            StatusCode::OK
        );
        assert_eq!(
            status(&app, "GET", "/cluster/members", None).await,
            StatusCode::OK
        );
    }

    #[test]
    fn weak_tokens_are_refused() {
        assert!(ManagementToken::new("short").is_err());
        assert!(ManagementToken::new(&"é".repeat(40)).is_err());
        assert!(ManagementToken::new(&format!("{TOKEN}\n")).is_ok());
    }
}
