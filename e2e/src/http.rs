//! A tiny HTTP/1.1 client for requests from the test process to the cluster's own
//! addresses (ClusterIPs and pod IPs on the local bridge). One connection per request, so
//! that kube-proxy picks a backend afresh every time.

use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;

/// A response: status and body as text.
#[derive(Debug, Clone)]
pub struct Response {
    /// The HTTP status code.
    pub status: u16,
    /// The body, lossily decoded as UTF-8.
    pub body: String,
}

/// Sends one request to `addr` (`ip:port`) and returns the response. Times out after 5 s.
pub async fn request(
    method: &str,
    addr: &str,
    path: &str,
    body: Option<String>,
) -> anyhow::Result<Response> {
    tokio::time::timeout(
        Duration::from_secs(5),
        request_inner(method, addr, path, body),
    )
    .await
    .with_context(|| format!("{method} http://{addr}{path} timed out"))?
}

async fn request_inner(
    method: &str,
    addr: &str,
    path: &str,
    body: Option<String>,
) -> anyhow::Result<Response> {
    let token = if path.starts_with("/admin/") || path.starts_with("/cluster/") {
        management_token(addr).await?
    } else {
        None
    };
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr)
        .header("content-type", "application/json")
        .header("connection", "close");
    let req = match token {
        Some(t) => req.header("authorization", format!("Bearer {t}")),
        None => req,
    };
    let req = req.body(Full::new(Bytes::from(body.unwrap_or_default())))?;
    let resp = sender.send_request(req).await?;
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await?.to_bytes();
    Ok(Response {
        status,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    })
}

/// The management token of the node pod at `addr` (`ip:port`), as its members send it
/// (SECURITY.md): read from its ActorCluster's credential Secret with the test's admin
/// credentials. `None` when no node pod has that IP or its cluster has no credential.
pub async fn management_token(addr: &str) -> anyhow::Result<Option<String>> {
    use k8s_openapi::api::core::v1::{Pod, Secret};
    use kube::Api;
    use kube::api::ListParams;
    use troupe_contract::{labels, tls};
    let ip = addr.rsplit_once(':').map_or(addr, |(ip, _)| ip);
    let client = crate::connect().await?;
    let params = ListParams::default()
        .labels(&format!("{}={}", labels::NAME, labels::NAME_VALUE))
        .fields(&format!("status.podIP={ip}"));
    let pods = Api::<Pod>::all(client.clone()).list(&params).await?;
    let Some((namespace, cluster)) = pods.items.iter().find_map(|p| {
        Some((
            p.metadata.namespace.clone()?,
            p.metadata.labels.as_ref()?.get(labels::INSTANCE)?.clone(),
        ))
    }) else {
        return Ok(None);
    };
    let secret = Api::<Secret>::namespaced(client, &namespace)
        .get_opt(&tls::secret_name(&cluster))
        .await?;
    Ok(secret
        .and_then(|s| s.data?.remove(tls::TOKEN_FILE))
        .map(|b| String::from_utf8_lossy(&b.0).trim().to_owned()))
}

/// `GET http://addr/path`.
pub async fn get(addr: &str, path: &str) -> anyhow::Result<Response> {
    request("GET", addr, path, None).await
}
