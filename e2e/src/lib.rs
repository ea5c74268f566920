//! The end-to-end harness: talks to the real local cluster from `hack/` with the kube client.
//!
//! Every test runs inside [`with_namespace`], which
//!
//! 1. connects with the ambient kubeconfig (`KUBECONFIG`, as `make cluster-env` prints) and
//!    **fails loudly** when no cluster answers: an end-to-end test never skips;
//! 2. creates a fresh namespace `e2e-<name>-<suffix>`;
//! 3. runs the test body;
//! 4. on failure prints `kubectl describe`-like facts and the logs of every pod that is not
//!    Ready, plus the namespace's Events;
//! 5. deletes the namespace, pass or fail.
//!
//! Helpers for waiting and for HTTP requests live in [`wait`] and [`http`]. A test reaches a
//! Service's ClusterIP only through [`service::until_serving`], which waits until kube-proxy
//! routes it to the Service's ready endpoints.

pub mod actor_cluster;
pub mod diagnostics;
pub mod faults;
pub mod http;
pub mod load;
pub mod members;
pub mod one_shot;
pub mod service;
pub mod wait;

use std::future::Future;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{DeleteParams, PostParams};
use kube::{Api, Client};

/// What a test body gets: a client and its own namespace.
#[derive(Clone)]
pub struct TestContext {
    /// A client with the cluster admin's credentials.
    pub client: Client,
    /// The test's namespace; deleted after the test.
    pub namespace: String,
}

impl std::fmt::Debug for TestContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestContext")
            .field("namespace", &self.namespace)
            .finish()
    }
}

impl TestContext {
    /// A typed API for namespaced resources in the test's namespace.
    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.namespace)
    }
}

/// Connects to the cluster, or fails with what to do.
pub async fn connect() -> anyhow::Result<Client> {
    let client = Client::try_default().await.context(
        "no Kubernetes cluster configured: run `make cluster-up` and `eval \"$(make -s cluster-env)\"` first",
    )?;
    client.apiserver_version().await.context(
        "the Kubernetes API server does not answer: is the local cluster up (`make cluster-up`)?",
    )?;
    Ok(client)
}

/// Installs a tracing subscriber once, honouring `RUST_LOG`.
pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube=warn")),
        )
        .with_test_writer()
        .try_init();
}

/// Runs `body` in a fresh namespace, prints diagnostics when it fails, and always deletes
/// the namespace. Returns the body's result.
pub async fn with_namespace<F, Fut>(name: &str, body: F) -> anyhow::Result<()>
where
    F: FnOnce(TestContext) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    init_logging();
    let client = connect().await?;
    let suffix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() % 1_000_000)
        .unwrap_or_default();
    let namespace = format!("e2e-{name}-{suffix}");
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(serde_json::json!({
        "metadata": { "name": namespace, "labels": { "troupe.dev/e2e": "true" } }
    }))?;
    namespaces
        .create(&PostParams::default(), &ns)
        .await
        .with_context(|| format!("creating namespace {namespace}"))?;
    tracing::info!(%namespace, "test namespace created");
    let ctx = TestContext {
        client: client.clone(),
        namespace: namespace.clone(),
    };
    let result = body(ctx.clone()).await;
    if let Err(e) = &result {
        eprintln!("\n===== test {name} failed: {e:#}\n");
        diagnostics::dump(&ctx).await;
    }
    if std::env::var_os("TROUPE_E2E_KEEP").is_none()
        && let Err(e) = namespaces
            .delete(&namespace, &DeleteParams::background())
            .await
    {
        eprintln!("warning: could not delete namespace {namespace}: {e}");
    }
    result
}
