//! Nobody gets in: from a pod that is not a member (`troupe-intruder:0.1.0`,
//! `hack/images/intruder.c`, in another namespace), the management routes that change or
//! reveal a cluster want its token, and the transport port wants its certificate, while
//! the members themselves (which hold both) form a cluster and forward to each other.
//!
//! The intruder tries, against every member pod: `POST /admin/drain`, `GET /cluster/members`,
//! `GET /metrics` (open to scrapers), and a forged `Claim` frame (the claim the reliability
//! review H4 used to steal an actor's state) sent in plaintext to the transport port. Its
//! log is the evidence; afterwards the actor's state is still there and every pod is Ready.

use std::time::Duration;

use anyhow::{Context, ensure};
use bytes::BytesMut;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{ListParams, PostParams};
use serde_json::json;
use troupe_actors::wire::{self, Frame, Request};
use troupe_contract::{labels, ports, tls};
use troupe_e2e::{TestContext, actor_cluster, http, members, one_shot, with_namespace};

const NAME: &str = "guarded";
const INTRUDER: &str = "intruder";

/// The plaintext forged claim: the right cluster id, a table order no one has, the name of a
/// real member as claimant.
fn forged_claim(cluster_id: &str, claimant: &str) -> String {
    let mut buf = BytesMut::new();
    wire::encode(
        &Frame::Request(
            1,
            Request::Claim {
                cluster: cluster_id.to_owned(),
                order: (u64::MAX, u64::MAX),
                claimant: claimant.to_owned(),
                claimant_addr: "10.0.0.1:25520".to_owned(),
                actor_type: "kv".to_owned(),
                id: "vault".to_owned(),
            },
        ),
        &mut buf,
    );
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

async fn run_intruder(ctx: &TestContext, args: Vec<String>) -> anyhow::Result<String> {
    let one_shot::Finished { phase, logs } =
        one_shot::run(ctx, INTRUDER, "troupe-intruder:0.1.0", args, "security").await?;
    ensure!(
        phase == "Succeeded",
        "the intruder pod ended {phase}:\n{logs}"
    );
    Ok(logs)
}

/// The one line of the intruder's log that starts with `prefix`.
fn line<'a>(logs: &'a str, prefix: &str) -> anyhow::Result<&'a str> {
    logs.lines()
        .find(|l| l.starts_with(prefix))
        .with_context(|| format!("no `{prefix}` line in the intruder's log:\n{logs}"))
}

#[tokio::test]
async fn a_pod_outside_the_cluster_cannot_drain_read_or_claim() -> anyhow::Result<()> {
    with_namespace("security", |ctx| async move {
        actor_cluster::create(
            &ctx,
            NAME,
            json!({ "replicas": 2, "image": "troupe-node:0.1.0" }),
        )
        .await?;
        // Members that hold the credential form a cluster (probes carry the token, links
        // speak mutual TLS).
        actor_cluster::until_settled(&ctx, NAME, 2, Duration::from_secs(180)).await?;
        let secret = ctx
            .api::<Secret>()
            .get(&tls::secret_name(NAME))
            .await
            .context("the operator issues the transport credential")?;
        let keys: Vec<String> = secret.data.unwrap_or_default().into_keys().collect();
        ensure!(
            !keys.iter().any(|k| k == "ca.key"),
            "the mounted Secret must not carry the CA key: {keys:?}"
        );

        // The operator's NetworkPolicy is there. (The local cluster's `bridge` CNI does
        // not enforce NetworkPolicies: the intruder's packets reach the ports, and what
        // refuses it below is the token and the TLS handshake.)
        let np = ctx
            .api::<k8s_openapi::api::networking::v1::NetworkPolicy>()
            .get(NAME)
            .await
            .context("the operator writes a NetworkPolicy")?;
        println!(
            "[security] NetworkPolicy {NAME}: {}",
            serde_json::to_string(&np.spec)?
        );

        // State to steal, written through the client Service (open to clients by design);
        // asks to the Service reach both pods, so some are forwarded over the TLS transport.
        let vip = actor_cluster::client_address(&ctx, NAME).await?;
        for _ in 0..4 {
            let r = http::request(
                "POST",
                &vip,
                "/actors/kv/vault/ask/put",
                Some(json!({"key": "k", "value": "secret"}).to_string()),
            )
            .await?;
            ensure!(r.status == 200, "put answered {}: {}", r.status, r.body);
        }

        let table = members::lease_table(&ctx, NAME)
            .await?
            .context("the member Lease")?;
        let pods = ctx
            .api::<Pod>()
            .list(&ListParams::default().labels(&labels::node_selector(NAME)))
            .await?;
        let ips: Vec<String> = pods
            .items
            .iter()
            .filter_map(|p| p.status.as_ref()?.pod_ip.clone())
            .collect();
        ensure!(ips.len() == 2, "pod IPs: {ips:?}");
        let claimant = table
            .members
            .first()
            .map(|m| m.pod.clone())
            .unwrap_or_default();
        let claim = forged_claim(&table.cluster, &claimant);

        // The intruder runs in a namespace of its own, without any API token.
        let outside = TestContext {
            client: ctx.client.clone(),
            namespace: format!("{}-outside", ctx.namespace),
        };
        let ns: k8s_openapi::api::core::v1::Namespace = serde_json::from_value(json!({
            "metadata": { "name": outside.namespace, "labels": { "troupe.dev/e2e": "true" } }
        }))?;
        kube::Api::<k8s_openapi::api::core::v1::Namespace>::all(ctx.client.clone())
            .create(&PostParams::default(), &ns)
            .await?;
        let mut args = Vec::new();
        for ip in &ips {
            let m = ports::MANAGEMENT;
            args.push(format!("http:POST:{ip}:{m}:/admin/drain"));
            args.push(format!("http:GET:{ip}:{m}:/cluster/members"));
            args.push(format!("http:GET:{ip}:{m}:/metrics"));
            args.push(format!("wire:{ip}:{}:{claim}", ports::TRANSPORT));
        }
        let logs = run_intruder(&outside, args).await;
        let _ = kube::Api::<k8s_openapi::api::core::v1::Namespace>::all(ctx.client.clone())
            .delete(&outside.namespace, &Default::default())
            .await;
        let logs = logs?;

        for ip in &ips {
            let m = ports::MANAGEMENT;
            let drain = line(&logs, &format!("http POST {ip}:{m} /admin/drain"))?;
            ensure!(drain.contains(" 401 "), "drain was not refused: {drain}");
            let read = line(&logs, &format!("http GET {ip}:{m} /cluster/members"))?;
            ensure!(
                read.contains(" 401 "),
                "the member table was not refused: {read}"
            );
            let scrape = line(&logs, &format!("http GET {ip}:{m} /metrics"))?;
            ensure!(
                scrape.contains(" 200 "),
                "/metrics must stay open: {scrape}"
            );
            let wire = line(&logs, &format!("wire {ip}:{}", ports::TRANSPORT))?;
            // Closed, reset, or a TLS alert record (0x15): never a frame back.
            let refused = wire.ends_with("-> closed")
                || wire.contains("-> reset")
                || wire.contains(" bytes 15");
            ensure!(refused, "the plaintext claim got an answer: {wire}");
        }

        // Nothing happened: every pod still Ready and serving, the state still there.
        actor_cluster::until_settled(&ctx, NAME, 2, Duration::from_secs(30)).await?;
        let r = http::request(
            "POST",
            &vip,
            "/actors/kv/vault/ask/get",
            Some(json!({"key": "k"}).to_string()),
        )
        .await?;
        ensure!(
            r.status == 200 && r.body.contains("secret"),
            "the actor's state after the intrusion: {} {}",
            r.status,
            r.body
        );
        // The test process holds the token (read from the Secret) and may read the table.
        let mine = members::pod_table(&pods.items[0]).await?;
        ensure!(mine.members.len() == 2, "members: {:?}", mine.members);
        Ok(())
    })
    .await
}
