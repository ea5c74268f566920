//! A cluster's membership as the tests see it: the member table in the Lease, and the
//! table every pod serves on `/cluster/members`.

use anyhow::Context;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use troupe_contract::{MemberTable, coordination, ports};

use crate::{TestContext, http};

/// The member table in the Lease of `cluster`, if the Lease exists.
pub async fn lease_table(ctx: &TestContext, cluster: &str) -> anyhow::Result<Option<MemberTable>> {
    let lease = ctx
        .api::<Lease>()
        .get_opt(&coordination::lease_name(cluster))
        .await?;
    let Some(lease) = lease else { return Ok(None) };
    let json = lease
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(coordination::MEMBER_TABLE_ANNOTATION))
        .context("the Lease has no member table annotation")?;
    Ok(Some(MemberTable::from_json(json)?))
}

/// The table a pod serves on `/cluster/members`.
pub async fn pod_table(pod: &Pod) -> anyhow::Result<MemberTable> {
    let ip = pod
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .context("pod without IP")?;
    let r = http::get(&format!("{ip}:{}", ports::MANAGEMENT), "/cluster/members").await?;
    anyhow::ensure!(
        r.status == 200,
        "{ip}/cluster/members answered {}",
        r.status
    );
    Ok(MemberTable::from_json(&r.body)?)
}

/// `/cluster/self` of a pod.
pub async fn self_view(pod: &Pod) -> anyhow::Result<serde_json::Value> {
    let ip = pod
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .context("pod without IP")?;
    let r = http::get(&format!("{ip}:{}", ports::MANAGEMENT), "/cluster/self").await?;
    anyhow::ensure!(r.status == 200, "{ip}/cluster/self answered {}", r.status);
    Ok(serde_json::from_str(&r.body)?)
}

/// The cluster id and epoch of a table, for reports: `4f1c…@2`.
pub fn history(t: &MemberTable) -> String {
    format!("{}@{}", t.cluster, t.epoch)
}
