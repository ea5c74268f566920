//! The HTTP side of `custom.metrics.k8s.io/v1beta2`: discovery and the pods metric, behind
//! front-proxy authentication and delegated authorization ([`super::auth`]).
//!
//! | path | answer |
//! |---|---|
//! | `/apis` | `APIGroupList` |
//! | `/apis/custom.metrics.k8s.io` | `APIGroup` |
//! | `/apis/custom.metrics.k8s.io/v1beta2` | `APIResourceList` (`pods/troupe_mailbox_depth`) |
//! | `/apis/custom.metrics.k8s.io/v1beta2/namespaces/{ns}/pods/{name or *}/{metric}` | `MetricValueList` |
//! | `/healthz` | `ok` (no authentication) |
//!
//! [`app`] is a plain `Router`, tested without a socket: the verified client CN arrives as
//! `ConnectInfo<PeerInfo>` (see [`super::tls`]).

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::extract::connect_info::ConnectInfo;
use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;

use super::api;
use super::auth::{Authorizer, MetricAccess, RequestHeaderConfig, User, authenticate};
use super::cache::DepthCache;
use super::selector::Selector;
use super::tls::PeerInfo;
use super::{GROUP, METRIC, VERSION};

/// What the metrics API reads.
#[derive(Debug, Clone)]
pub struct ApiState {
    /// Depth samples of every node pod.
    pub cache: Arc<RwLock<DepthCache>>,
    /// The front-proxy settings (refreshed by the reload loop).
    pub request_header: Arc<RwLock<RequestHeaderConfig>>,
    /// Who may read metrics.
    pub authorizer: Arc<Authorizer>,
    /// `windowSeconds` of every value (the scrape interval).
    pub window: Duration,
    /// Samples older than this are not served.
    pub max_age: Duration,
}

/// The router.
pub fn app(state: ApiState) -> Router {
    let base = format!("/apis/{GROUP}/{VERSION}");
    let apis = Router::new()
        .route("/apis", get(|| async { axum::Json(api::api_group_list()) }))
        .route(
            &format!("/apis/{GROUP}"),
            get(|| async { axum::Json(api::api_group()) }),
        )
        .route(
            &base,
            get(|| async { axum::Json(api::api_resource_list()) }),
        )
        .route(
            &format!("{base}/namespaces/{{namespace}}/pods/{{name}}/{{metric}}"),
            get(pods_metric),
        )
        .fallback(|| async {
            failure(
                StatusCode::NOT_FOUND,
                "NotFound",
                &format!("this server serves only pods/{METRIC} in {GROUP}/{VERSION}"),
            )
        })
        .layer(middleware::from_fn_with_state(state.clone(), authn));
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .merge(apis)
        .with_state(state)
}

fn failure(code: StatusCode, reason: &str, message: &str) -> Response {
    (
        code,
        axum::Json(api::status(code.as_u16(), reason, message)),
    )
        .into_response()
}

async fn authn(State(s): State<ApiState>, mut req: Request, next: Next) -> Response {
    let cn = req
        .extensions()
        .get::<ConnectInfo<PeerInfo>>()
        .and_then(|c| c.0.client_cn.clone());
    let result = match s.request_header.read() {
        Ok(config) => authenticate(&config, cn.as_deref(), req.headers()),
        Err(_) => {
            return failure(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                "poisoned lock",
            );
        }
    };
    match result {
        Ok(user) => {
            req.extensions_mut().insert(user);
            next.run(req).await
        }
        Err(e) => {
            tracing::debug!(error = %e, "custom metrics: unauthenticated request");
            failure(StatusCode::UNAUTHORIZED, "Unauthorized", &e.to_string())
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct MetricQuery {
    label_selector: Option<String>,
    metric_label_selector: Option<String>,
}

async fn pods_metric(
    State(s): State<ApiState>,
    Path((namespace, name, metric)): Path<(String, String, String)>,
    Query(q): Query<MetricQuery>,
    req: Request,
) -> Response {
    let user = req
        .extensions()
        .get::<User>()
        .cloned()
        .unwrap_or_else(User::anonymous);
    if metric != METRIC {
        return failure(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("the server could not find the metric {metric} for pods (only {METRIC})"),
        );
    }
    let access = MetricAccess {
        namespace: namespace.clone(),
        name: name.clone(),
        metric: metric.clone(),
    };
    match s.authorizer.allowed(&user, &access).await {
        Ok(true) => {}
        Ok(false) => {
            return failure(
                StatusCode::FORBIDDEN,
                "Forbidden",
                &format!(
                    "user {:?} cannot get pods/{metric} in {GROUP} in namespace {namespace:?}: \
                     grant get on {GROUP} resources",
                    user.name
                ),
            );
        }
        Err(e) => {
            tracing::warn!(error = %e, "custom metrics: authorization failed");
            return failure(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                &e.to_string(),
            );
        }
    }
    let selector = match Selector::parse(q.label_selector.as_deref().unwrap_or("")) {
        Ok(s) => s,
        Err(e) => return failure(StatusCode::BAD_REQUEST, "BadRequest", &e.to_string()),
    };
    // The metric has no labels: a metric selector that needs one matches nothing.
    let metric_selector = match Selector::parse(q.metric_label_selector.as_deref().unwrap_or("")) {
        Ok(s) => s,
        Err(e) => return failure(StatusCode::BAD_REQUEST, "BadRequest", &e.to_string()),
    };
    let one = (name != "*").then_some(name.as_str());
    let pods = if metric_selector.matches(&BTreeMap::new()) {
        match s.cache.read() {
            Ok(c) => c.query(&namespace, one, &selector, SystemTime::now(), s.max_age),
            Err(_) => {
                return failure(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "InternalError",
                    "poisoned lock",
                );
            }
        }
    } else {
        Vec::new()
    };
    if let Some(pod) = one
        && pods.is_empty()
    {
        return failure(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!(
                "no fresh {metric} sample for pod {namespace}/{pod} (not a node pod, or not scraped yet)"
            ),
        );
    }
    let window = i64::try_from(s.window.as_secs().max(1)).unwrap_or(i64::MAX);
    axum::Json(api::metric_value_list(&pods, window)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::custom_metrics::cache::{DepthSample, tests::target};
    use axum::body::Body;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    fn state() -> ApiState {
        let mut cache = DepthCache::default();
        cache.set_pods(vec![
            target("shop", "orders-a", "orders"),
            target("shop", "orders-b", "orders"),
            target("shop", "billing-a", "billing"),
        ]);
        let now = SystemTime::now();
        cache.record(
            "shop",
            "orders-a",
            DepthSample {
                value: 40.0,
                at: now,
            },
        );
        cache.record(
            "shop",
            "billing-a",
            DepthSample {
                value: 3.0,
                at: now,
            },
        );
        ApiState {
            cache: Arc::new(RwLock::new(cache)),
            request_header: Arc::new(RwLock::new(RequestHeaderConfig {
                client_ca_pem: String::new(),
                allowed_names: vec!["front-proxy-client".into()],
                username_headers: vec!["X-Remote-User".into()],
                group_headers: vec!["X-Remote-Group".into()],
            })),
            authorizer: Arc::new(Authorizer::AllowAuthenticated),
            window: Duration::from_secs(2),
            max_age: Duration::from_secs(30),
        }
    }

    async fn get(path: &str, cn: Option<&str>) -> (StatusCode, serde_json::Value) {
        let mut req = Request::get(path)
            .header(
                "X-Remote-User",
                "system:serviceaccount:kube-system:horizontal-pod-autoscaler",
            )
            .body(Body::empty())
            .expect("request");
        req.extensions_mut().insert(ConnectInfo(PeerInfo {
            remote: ([127, 0, 0, 1], 1).into(),
            client_cn: cn.map(str::to_owned),
        }));
        let resp = app(state()).oneshot(req).await.expect("response");
        let code = resp.status();
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        let json = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
        (code, json)
    }

    const FP: Option<&str> = Some("front-proxy-client");

    #[tokio::test]
    async fn discovery_is_served_to_the_front_proxy() {
        let (code, body) = get("/apis/custom.metrics.k8s.io/v1beta2", FP).await;
        assert_eq!(code, StatusCode::OK);
        assert_eq!(body["resources"][0]["name"], "pods/troupe_mailbox_depth");
        assert_eq!(get("/apis", FP).await.0, StatusCode::OK);
        assert_eq!(
            get("/apis/custom.metrics.k8s.io", FP).await.0,
            StatusCode::OK
        );
    }

    #[tokio::test]
    async fn without_the_proxy_certificate_nothing_but_healthz() {
        let (code, body) = get("/apis/custom.metrics.k8s.io/v1beta2", None).await;
        assert_eq!(code, StatusCode::UNAUTHORIZED);
        assert_eq!(body["reason"], "Unauthorized");
        let (code, _) = get("/apis", Some("someone-else")).await;
        assert_eq!(code, StatusCode::UNAUTHORIZED);
        let req = Request::get("/healthz")
            .body(Body::empty())
            .expect("request");
        assert_eq!(
            app(state()).oneshot(req).await.expect("r").status(),
            StatusCode::OK
        );
    }

    #[tokio::test]
    async fn all_pods_of_a_cluster_with_a_sample() {
        let sel = "app.kubernetes.io%2Fname%3Dtroupe-node%2Capp.kubernetes.io%2Finstance%3Dorders";
        let (code, body) = get(
            &format!("/apis/custom.metrics.k8s.io/v1beta2/namespaces/shop/pods/*/troupe_mailbox_depth?labelSelector={sel}"),
            FP,
        )
        .await;
        assert_eq!(code, StatusCode::OK);
        let items = body["items"].as_array().expect("items");
        assert_eq!(items.len(), 1, "orders-b has no sample yet: omitted, not 0");
        assert_eq!(items[0]["describedObject"]["name"], "orders-a");
        assert_eq!(items[0]["value"], "40");
        let (_, body) = get(
            "/apis/custom.metrics.k8s.io/v1beta2/namespaces/shop/pods/%2A/troupe_mailbox_depth",
            FP,
        )
        .await;
        assert_eq!(body["items"].as_array().map(Vec::len), Some(2));
    }

    #[tokio::test]
    async fn one_pod_unknown_metrics_and_bad_selectors() {
        let base = "/apis/custom.metrics.k8s.io/v1beta2/namespaces/shop/pods";
        let (code, body) = get(&format!("{base}/billing-a/troupe_mailbox_depth"), FP).await;
        assert_eq!(code, StatusCode::OK);
        assert_eq!(body["items"][0]["value"], "3");
        assert_eq!(
            get(&format!("{base}/orders-b/troupe_mailbox_depth"), FP)
                .await
                .0,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            get(&format!("{base}/*/cpu"), FP).await.0,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            get(
                &format!("{base}/*/troupe_mailbox_depth?labelSelector=a%20in%20(b"),
                FP
            )
            .await
            .0,
            StatusCode::BAD_REQUEST
        );
        let (code, body) = get(
            &format!("{base}/*/troupe_mailbox_depth?metricLabelSelector=x%3Dy"),
            FP,
        )
        .await;
        assert_eq!(code, StatusCode::OK);
        assert_eq!(body["items"].as_array().map(Vec::len), Some(0));
        assert_eq!(
            get(
                "/apis/custom.metrics.k8s.io/v1beta2/namespaces/shop/metrics/x",
                FP
            )
            .await
            .0,
            StatusCode::NOT_FOUND
        );
    }
}
