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
        .header("connection", "close")
        .body(Full::new(Bytes::from(body.unwrap_or_default())))?;
    let resp = sender.send_request(req).await?;
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await?.to_bytes();
    Ok(Response {
        status,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    })
}

/// `GET http://addr/path`.
pub async fn get(addr: &str, path: &str) -> anyhow::Result<Response> {
    request("GET", addr, path, None).await
}
