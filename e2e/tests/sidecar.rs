//! Sidecar mode end to end: an ActorCluster whose pods run the example application
//! (`actors/examples/sidecar_greeter.rs`, image `troupe-sidecar-example:0.1.0`) next to the
//! node. Clients reach the application's `greeter` actors through the client Service; the
//! node keeps the mailboxes and placement, and the actors' state follows them when the
//! cluster shrinks and they move to other pods.

use std::time::Duration;

use anyhow::ensure;
use serde_json::{Value, json};
use troupe_e2e::http::Response;
use troupe_e2e::{actor_cluster, http, service, with_namespace};

const NAME: &str = "greeters";
const GREETERS: usize = 12;

async fn greet(vip: &str, id: usize) -> anyhow::Result<Value> {
    let r = http::request(
        "POST",
        vip,
        &format!("/actors/greeter/g{id}/ask/greet"),
        Some(r#"{"name":"troupe"}"#.into()),
    )
    .await?;
    ensure!(
        r.status == 200,
        "greet g{id} answered {}: {}",
        r.status,
        r.body
    );
    Ok(serde_json::from_str(&r.body)?)
}

/// A greeting of the probe greeter (not one of the test's), answered with the name of the
/// application pod that hosts it.
fn greeter_probe() -> service::Probe {
    service::Probe::post(
        "/actors/greeter/e2e-probe/ask/greet",
        Some(r#"{"name":"probe"}"#.into()),
        200,
    )
    .answered_by(greeting_pod)
}

fn greeting_pod(r: &Response) -> Option<String> {
    let v: Value = serde_json::from_str(&r.body).ok()?;
    v.get("pod")?.as_str().map(str::to_owned)
}

#[tokio::test]
async fn a_sidecar_application_serves_actor_types_and_its_state_follows_hand_over()
-> anyhow::Result<()> {
    with_namespace("sidecar", |ctx| async move {
        actor_cluster::create(
            &ctx,
            NAME,
            json!({
                "replicas": 3,
                "image": "troupe-node:0.1.0",
                "app": {
                    "image": "troupe-sidecar-example:0.1.0",
                    "port": 3000,
                    "types": ["greeter"],
                    "env": [
                        { "name": "PORT", "value": "3000" },
                        { "name": "POD_NAME", "valueFrom": { "fieldRef": { "fieldPath": "metadata.name" } } }
                    ]
                }
            }),
        )
        .await?;
        actor_cluster::until_settled(&ctx, NAME, 3, Duration::from_secs(180)).await?;
        // The client Service serves (kube-proxy programmed it) and the application's actor
        // type answers, from a pod among the Service's ready endpoints.
        let vip = service::until_serving(
            &ctx,
            NAME,
            troupe_contract::ports::CLIENT,
            &greeter_probe(),
            service::DEFAULT_TIMEOUT,
        )
        .await?
        .addr;

        let mut pods = std::collections::BTreeSet::new();
        for round in 1..=3u64 {
            for id in 0..GREETERS {
                let reply = greet(&vip, id).await?;
                ensure!(
                    reply["greeting"] == "hello troupe" && reply["count"] == round,
                    "greeter g{id} in round {round} answered {reply}"
                );
                if let Some(p) = reply["pod"].as_str() {
                    pods.insert(p.to_owned());
                }
            }
        }
        eprintln!("{GREETERS} greeters served by the applications of {pods:?}");
        ensure!(pods.len() > 1, "every greeter ran in one pod: placement did not spread them");

        // Shrink: the actors of the leaving pod move, their state goes with them through
        // $deactivate / $activate, and counts continue where they were.
        actor_cluster::scale(&ctx, NAME, 2).await?;
        actor_cluster::until_settled(&ctx, NAME, 2, Duration::from_secs(180)).await?;
        let vip = service::until_serving(
            &ctx,
            NAME,
            troupe_contract::ports::CLIENT,
            &greeter_probe(),
            service::DEFAULT_TIMEOUT,
        )
        .await?
        .addr;
        for id in 0..GREETERS {
            let reply = troupe_e2e::wait::until(
                &format!("greeter g{id} to answer after the scale-down"),
                Duration::from_secs(30),
                Duration::from_millis(200),
                || async { Ok(greet(&vip, id).await.ok()) },
            )
            .await?;
            ensure!(
                reply["count"] == 4,
                "greeter g{id} lost or repeated state across the hand-over: {reply}"
            );
        }
        Ok(())
    })
    .await
}
