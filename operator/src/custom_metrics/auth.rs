//! Who is asking, and may they: the aggregation layer's front-proxy authentication and a
//! delegated authorization through `SubjectAccessReview`.
//!
//! ```text
//!  TLS handshake: client certificate signed by the requestheader client CA? (tls.rs)
//!     │ CN
//!     ▼
//!  authenticate: CN in requestheader-allowed-names? ── no ─► 401
//!     │ user = X-Remote-User, groups = X-Remote-Group (header names from the ConfigMap)
//!     ▼
//!  Authorizer::allowed: SubjectAccessReview (cached 10 s) ── denied ─► 403
//! ```
//!
//! The requestheader settings come from the ConfigMap
//! `kube-system/extension-apiserver-authentication` that the API server publishes
//! ([`RequestHeaderConfig::from_configmap`], pure); reading it is [`super::tls`]'s job.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::PostParams;
use kube::{Api, Client};

use super::Error;

/// Namespace of the API server's authentication ConfigMap.
pub const AUTH_CONFIGMAP_NAMESPACE: &str = "kube-system";
/// Name of the API server's authentication ConfigMap.
pub const AUTH_CONFIGMAP: &str = "extension-apiserver-authentication";

/// The front-proxy (requestheader) settings of the API server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHeaderConfig {
    /// PEM of the CA that signs the aggregator's client certificate.
    pub client_ca_pem: String,
    /// Common names allowed to act as the front proxy (empty: any certificate of the CA).
    pub allowed_names: Vec<String>,
    /// Headers carrying the user name, first non-empty wins.
    pub username_headers: Vec<String>,
    /// Headers carrying the groups (every value of each).
    pub group_headers: Vec<String>,
}

impl RequestHeaderConfig {
    /// Reads the settings from the ConfigMap's data.
    pub fn from_configmap(data: &BTreeMap<String, String>) -> Result<Self, Error> {
        let client_ca_pem = data
            .get("requestheader-client-ca-file")
            .filter(|s| !s.trim().is_empty())
            .cloned()
            .ok_or_else(|| {
                Error::Config(format!(
                    "ConfigMap {AUTH_CONFIGMAP_NAMESPACE}/{AUTH_CONFIGMAP} has no requestheader-client-ca-file: \
                     start kube-apiserver with --requestheader-client-ca-file (the aggregation layer)"
                ))
            })?;
        let list = |key: &str, default: &[&str]| -> Result<Vec<String>, Error> {
            match data.get(key) {
                None => Ok(default.iter().map(|s| (*s).to_owned()).collect()),
                Some(s) if s.trim().is_empty() => Ok(Vec::new()),
                Some(s) => serde_json::from_str(s).map_err(|e| {
                    Error::Config(format!(
                        "ConfigMap {AUTH_CONFIGMAP_NAMESPACE}/{AUTH_CONFIGMAP} key {key} is not a JSON list: {e}"
                    ))
                }),
            }
        };
        Ok(Self {
            client_ca_pem,
            allowed_names: list("requestheader-allowed-names", &[])?,
            username_headers: list("requestheader-username-headers", &["X-Remote-User"])?,
            group_headers: list("requestheader-group-headers", &["X-Remote-Group"])?,
        })
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct User {
    /// User name.
    pub name: String,
    /// Groups.
    pub groups: Vec<String>,
}

impl User {
    /// The anonymous user (front proxy with no user header, e.g. availability checks).
    pub fn anonymous() -> Self {
        Self {
            name: "system:anonymous".into(),
            groups: vec!["system:unauthenticated".into()],
        }
    }
}

/// Why a request is not authenticated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthnError {
    /// No verified client certificate.
    #[error("a client certificate signed by the requestheader client CA is required")]
    NoClientCertificate,
    /// A certificate of the CA, but not an allowed front proxy.
    #[error("client certificate CN {0:?} is not in requestheader-allowed-names")]
    NotAllowed(String),
}

/// Authenticates a request: `client_cn` is the CN of the client certificate the TLS layer
/// verified against the requestheader CA (`None`: no certificate).
pub fn authenticate(
    config: &RequestHeaderConfig,
    client_cn: Option<&str>,
    headers: &HeaderMap,
) -> Result<User, AuthnError> {
    let cn = client_cn.ok_or(AuthnError::NoClientCertificate)?;
    if !config.allowed_names.is_empty() && !config.allowed_names.iter().any(|n| n == cn) {
        return Err(AuthnError::NotAllowed(cn.to_owned()));
    }
    let name = config.username_headers.iter().find_map(|h| {
        headers
            .get_all(h.as_str())
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|v| !v.is_empty())
    });
    let Some(name) = name else {
        return Ok(User::anonymous());
    };
    let groups = config
        .group_headers
        .iter()
        .flat_map(|h| headers.get_all(h.as_str()).iter())
        .filter_map(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
        .collect();
    Ok(User {
        name: name.to_owned(),
        groups,
    })
}

/// What a metric read asks for, as the API server's authorizer would see it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MetricAccess {
    /// Namespace of the pods.
    pub namespace: String,
    /// Pod name or `*`.
    pub name: String,
    /// Metric name (the subresource).
    pub metric: String,
}

/// The SubjectAccessReview the API server would make for `user` reading `access`.
pub fn access_review(user: &User, access: &MetricAccess) -> SubjectAccessReview {
    SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(user.name.clone()),
            groups: Some(user.groups.clone()),
            resource_attributes: Some(ResourceAttributes {
                group: Some(super::GROUP.into()),
                version: Some(super::VERSION.into()),
                resource: Some("pods".into()),
                subresource: Some(access.metric.clone()),
                name: Some(access.name.clone()),
                namespace: Some(access.namespace.clone()),
                verb: Some("get".into()),
                ..ResourceAttributes::default()
            }),
            ..SubjectAccessReviewSpec::default()
        },
        ..SubjectAccessReview::default()
    }
}

/// How metric reads are authorized.
pub enum Authorizer {
    /// Ask the API server (`system:auth-delegator`), caching answers for a few seconds.
    Delegated {
        /// The operator's client.
        client: Client,
        /// (user, access) → (allowed, when asked).
        cache: Mutex<HashMap<(User, MetricAccess), (bool, Instant)>>,
    },
    /// Every authenticated caller may read (tests and `--custom-metrics-authorization=false`).
    AllowAuthenticated,
}

const ALLOWED_TTL: Duration = Duration::from_secs(10);
const DENIED_TTL: Duration = Duration::from_secs(2);
const CACHE_LIMIT: usize = 1024;

impl std::fmt::Debug for Authorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Delegated { .. } => f.write_str("Authorizer::Delegated"),
            Self::AllowAuthenticated => f.write_str("Authorizer::AllowAuthenticated"),
        }
    }
}

impl Authorizer {
    /// Delegates to the API server.
    pub fn delegated(client: Client) -> Self {
        Self::Delegated {
            client,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `user` may read `access`.
    pub async fn allowed(&self, user: &User, access: &MetricAccess) -> Result<bool, Error> {
        let (client, cache) = match self {
            Self::AllowAuthenticated => return Ok(true),
            Self::Delegated { client, cache } => (client, cache),
        };
        let key = (user.clone(), access.clone());
        if let Ok(c) = cache.lock()
            && let Some((allowed, at)) = c.get(&key)
        {
            let ttl = if *allowed { ALLOWED_TTL } else { DENIED_TTL };
            if at.elapsed() < ttl {
                return Ok(*allowed);
            }
        }
        let api: Api<SubjectAccessReview> = Api::all(client.clone());
        let review = api
            .create(&PostParams::default(), &access_review(user, access))
            .await
            .map_err(Error::Authorization)?;
        let allowed = review.status.is_some_and(|s| s.allowed);
        if let Ok(mut c) = cache.lock() {
            if c.len() >= CACHE_LIMIT {
                c.clear();
            }
            c.insert(key, (allowed, Instant::now()));
        }
        Ok(allowed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn config() -> RequestHeaderConfig {
        let data: BTreeMap<String, String> = [
            (
                "requestheader-client-ca-file",
                "-----BEGIN CERTIFICATE-----\n...",
            ),
            ("requestheader-allowed-names", r#"["front-proxy-client"]"#),
            ("requestheader-username-headers", r#"["X-Remote-User"]"#),
            ("requestheader-group-headers", r#"["X-Remote-Group"]"#),
            (
                "requestheader-extra-headers-prefix",
                r#"["X-Remote-Extra-"]"#,
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        RequestHeaderConfig::from_configmap(&data).expect("config")
    }

    #[test]
    fn reads_the_configmap_the_api_server_publishes() {
        let c = config();
        assert_eq!(c.allowed_names, ["front-proxy-client"]);
        assert_eq!(c.username_headers, ["X-Remote-User"]);
        let mut data = BTreeMap::new();
        assert!(RequestHeaderConfig::from_configmap(&data).is_err());
        data.insert("requestheader-client-ca-file".into(), "pem".into());
        let d = RequestHeaderConfig::from_configmap(&data).expect("defaults");
        assert!(d.allowed_names.is_empty());
        assert_eq!(d.group_headers, ["X-Remote-Group"]);
        data.insert("requestheader-allowed-names".into(), "not json".into());
        assert!(RequestHeaderConfig::from_configmap(&data).is_err());
    }

    #[test]
    fn the_front_proxy_user_comes_from_the_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            "X-Remote-User",
            HeaderValue::from_static("system:serviceaccount:kube-system:horizontal-pod-autoscaler"),
        );
        h.append(
            "X-Remote-Group",
            HeaderValue::from_static("system:serviceaccounts"),
        );
        h.append(
            "X-Remote-Group",
            HeaderValue::from_static("system:authenticated"),
        );
        let u = authenticate(&config(), Some("front-proxy-client"), &h).expect("user");
        assert_eq!(
            u.name,
            "system:serviceaccount:kube-system:horizontal-pod-autoscaler"
        );
        assert_eq!(u.groups, ["system:serviceaccounts", "system:authenticated"]);
    }

    #[test]
    fn only_the_allowed_proxy_with_a_certificate_is_authenticated() {
        let h = HeaderMap::new();
        assert_eq!(
            authenticate(&config(), None, &h),
            Err(AuthnError::NoClientCertificate)
        );
        assert_eq!(
            authenticate(&config(), Some("mallory"), &h),
            Err(AuthnError::NotAllowed("mallory".into()))
        );
        assert_eq!(
            authenticate(&config(), Some("front-proxy-client"), &h),
            Ok(User::anonymous()),
            "no user header: anonymous, still subject to authorization"
        );
    }

    #[test]
    fn the_review_asks_what_the_api_server_would() {
        let r = access_review(
            &User {
                name: "u".into(),
                groups: vec!["g".into()],
            },
            &MetricAccess {
                namespace: "ns".into(),
                name: "*".into(),
                metric: "troupe_mailbox_depth".into(),
            },
        );
        let a = r.spec.resource_attributes.expect("attributes");
        assert_eq!(a.group.as_deref(), Some("custom.metrics.k8s.io"));
        assert_eq!(a.resource.as_deref(), Some("pods"));
        assert_eq!(a.subresource.as_deref(), Some("troupe_mailbox_depth"));
        assert_eq!(a.verb.as_deref(), Some("get"));
        assert_eq!(r.spec.user.as_deref(), Some("u"));
    }
}
