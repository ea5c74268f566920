//! Faults injected into the local cluster from its host (the tests run where the cluster
//! runs, as root): the API server stopped and started again, a node process SIGKILLed
//! through its host PID, a pod cut off from its peers with iptables inside its network
//! namespace. Every fault is undone by a guard, also when the test fails or panics, and
//! by a detached backstop after a bound, also when the test process itself is killed.
//!
//! Also here: the figures a fault test prints ([`figure`]), the one lock that keeps fault
//! tests from overlapping ([`exclusive`]), and [`MetricLedger`], which sums a node
//! counter over every container a pod has had (a SIGKILLed node restarts from zero).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use k8s_openapi::api::core::v1::Pod;
use troupe_contract::ports;

use crate::http;

/// The project's `hack/` directory.
pub fn hack_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../hack")
}

/// The local cluster's containerd socket (`hack/lib.sh`).
pub fn containerd_socket() -> String {
    std::env::var("TROUPE_CONTAINERD_SOCK")
        .unwrap_or_else(|_| "/run/troupe-containerd/containerd.sock".to_owned())
}

/// Prints one figure line of a fault test, `[faults] <test>: <line>`, and appends it to
/// the file named by `TROUPE_E2E_FIGURES` (hack/e2e.sh prints that file after the run, so
/// the figures show without `--nocapture`).
pub fn figure(test: &str, line: &str) {
    let text = format!("[faults] {test}: {line}");
    println!("{text}");
    if let Some(path) = std::env::var_os("TROUPE_E2E_FIGURES")
        && let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
    {
        let _ = writeln!(f, "{text}");
    }
}

static FAULTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Held for the whole of a fault test: faults are cluster-wide (an API server outage
/// stops everybody's watches; chaos loads the two cores), so the suite's tests never
/// overlap, whatever `--test-threads` says.
pub async fn exclusive() -> tokio::sync::MutexGuard<'static, ()> {
    FAULTS.lock().await
}

/// A number from the environment, or `default`.
pub fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

async fn run(cmd: &mut tokio::process::Command, what: &str) -> anyhow::Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .await
        .with_context(|| format!("running {what}"))?;
    ensure!(
        out.status.success(),
        "{what} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

// --- the API server -------------------------------------------------------------------

/// The local cluster's kube-apiserver, stopped by `hack/apiserver.sh stop`. Started again
/// by [`ApiServerOutage::end`], else by `Drop`, else by the script's watchdog after the
/// bound given to [`ApiServerOutage::begin`].
#[derive(Debug)]
pub struct ApiServerOutage {
    restored: bool,
}

impl ApiServerOutage {
    /// Stops the API server (SIGTERM; returns once the process is gone).
    pub async fn begin(restore_after: Duration) -> anyhow::Result<Self> {
        let script = hack_dir().join("apiserver.sh");
        run(
            tokio::process::Command::new(&script)
                .arg("stop")
                .arg("--restore-after")
                .arg(restore_after.as_secs().to_string()),
            "hack/apiserver.sh stop",
        )
        .await?;
        Ok(Self { restored: false })
    }

    /// Starts it again with its original arguments and waits until `/readyz` answers.
    pub async fn end(mut self) -> anyhow::Result<()> {
        self.restored = true;
        run(
            tokio::process::Command::new(hack_dir().join("apiserver.sh")).arg("start"),
            "hack/apiserver.sh start",
        )
        .await?;
        Ok(())
    }
}

impl Drop for ApiServerOutage {
    fn drop(&mut self) {
        if !self.restored {
            eprintln!("[faults] restoring the API server after a failed test");
            let _ = std::process::Command::new(hack_dir().join("apiserver.sh"))
                .arg("start")
                .stdin(Stdio::null())
                .status();
        }
    }
}

// --- SIGKILL ---------------------------------------------------------------------------

/// The container id (without `containerd://`) of the container `name` of `pod`.
pub fn container_id(pod: &Pod, name: &str) -> anyhow::Result<String> {
    let id = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.name == name))
        .and_then(|c| c.container_id.clone())
        .with_context(|| {
            format!(
                "pod {} has no running container {name}",
                pod.metadata.name.clone().unwrap_or_default()
            )
        })?;
    Ok(id.trim_start_matches("containerd://").to_owned())
}

/// Restarts of the container `name` of `pod`.
pub fn restarts(pod: &Pod, name: &str) -> i32 {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.name == name))
        .map_or(0, |c| c.restart_count)
}

/// The host PID of a running container's init process, from the local containerd.
pub async fn container_pid(container: &str) -> anyhow::Result<u32> {
    let out = run(
        tokio::process::Command::new("ctr").args([
            "--address",
            &containerd_socket(),
            "-n",
            "k8s.io",
            "tasks",
            "ls",
        ]),
        "ctr tasks ls",
    )
    .await?;
    for line in out.lines() {
        let mut f = line.split_whitespace();
        if f.next() == Some(container)
            && let Some(pid) = f.next().and_then(|p| p.parse().ok())
        {
            return Ok(pid);
        }
    }
    bail!("container {container} has no task in the local containerd (ctr tasks ls)")
}

/// SIGKILLs the node process of `pod` (`kill -9` of its host PID, checked to be
/// `troupe-node`). Returns the PID.
pub async fn sigkill_node(pod: &Pod) -> anyhow::Result<u32> {
    let id = container_id(pod, "node")?;
    let pid = container_pid(&id).await?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
        .with_context(|| format!("reading /proc/{pid}/cmdline"))?;
    ensure!(
        String::from_utf8_lossy(&cmdline).contains("troupe-node"),
        "PID {pid} of container {id} is not troupe-node: {}",
        String::from_utf8_lossy(&cmdline)
    );
    run(
        tokio::process::Command::new("kill").args(["-9", &pid.to_string()]),
        "kill -9",
    )
    .await?;
    Ok(pid)
}

// --- partitions ------------------------------------------------------------------------

const CHAIN: &str = "TROUPE-E2E-PARTITION";

/// The network namespace (`/run/netns/cni-…`) of the pod sandbox that holds `ip`.
pub async fn netns_of(ip: &str) -> anyhow::Result<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/run/netns").context("listing /run/netns")? {
        let path = entry?.path();
        if !path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("cni-"))
        {
            continue;
        }
        let out = tokio::process::Command::new("nsenter")
            .arg(format!("--net={}", path.display()))
            .args(["ip", "-4", "-o", "addr", "show"])
            .stdin(Stdio::null())
            .output()
            .await
            .context("running nsenter ip addr")?;
        if String::from_utf8_lossy(&out.stdout).contains(&format!("inet {ip}/")) {
            found.push(path);
        }
    }
    ensure!(
        found.len() == 1,
        "expected one pod network namespace with {ip}, found {found:?}"
    );
    Ok(found.remove(0))
}

/// One pod cut off from some peers: TCP between it and them on the given ports dropped,
/// by a chain in the pod's own network namespace (the host's rules are not touched).
/// [`Partition::heal`] removes it; so do `Drop` and a detached backstop after the bound.
#[derive(Debug)]
pub struct Partition {
    netns: PathBuf,
    healed: bool,
}

fn heal_script(netns: &Path) -> String {
    let ns = netns.display();
    format!(
        "for c in INPUT OUTPUT; do while nsenter --net={ns} iptables -w -D $c -j {CHAIN} 2>/dev/null; do :; done; done; \
         nsenter --net={ns} iptables -w -F {CHAIN} 2>/dev/null; nsenter --net={ns} iptables -w -X {CHAIN} 2>/dev/null; true"
    )
}

impl Partition {
    /// Drops TCP between `ip` and each of `peers` on `ports` (either side's port), in both
    /// directions, inside `ip`'s network namespace. Healed by the backstop after `bound`
    /// at the latest.
    pub async fn isolate(
        ip: &str,
        peers: &[String],
        ports: &[u16],
        bound: Duration,
    ) -> anyhow::Result<Self> {
        let netns = netns_of(ip).await?;
        let ipt = |args: Vec<String>| {
            let mut c = tokio::process::Command::new("nsenter");
            c.arg(format!("--net={}", netns.display()))
                .args(["iptables", "-w"])
                .args(args);
            c
        };
        let s = |v: &[&str]| v.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
        // Left over from a killed run: start clean.
        let _ = tokio::process::Command::new("sh")
            .args(["-c", &heal_script(&netns)])
            .status()
            .await;
        let partition = Self {
            netns: netns.clone(),
            healed: false,
        };
        // The backstop first, so that even a half-built partition is undone.
        tokio::process::Command::new("setsid")
            .args([
                "sh",
                "-c",
                &format!("sleep {}; {}", bound.as_secs().max(1), heal_script(&netns)),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting the partition's backstop")?;
        run(&mut ipt(s(&["-N", CHAIN])), "iptables -N").await?;
        for peer in peers {
            for port in ports {
                let port = port.to_string();
                for (addr, dir) in [
                    ("-s", "--dport"),
                    ("-s", "--sport"),
                    ("-d", "--dport"),
                    ("-d", "--sport"),
                ] {
                    run(
                        &mut ipt(s(&[
                            "-A", CHAIN, addr, peer, "-p", "tcp", dir, &port, "-j", "DROP",
                        ])),
                        "iptables -A",
                    )
                    .await?;
                }
            }
        }
        run(
            &mut ipt(s(&["-I", "INPUT", "-j", CHAIN])),
            "iptables -I INPUT",
        )
        .await?;
        run(
            &mut ipt(s(&["-I", "OUTPUT", "-j", CHAIN])),
            "iptables -I OUTPUT",
        )
        .await?;
        Ok(partition)
    }

    /// Removes the rules; checks that none is left.
    pub async fn heal(mut self) -> anyhow::Result<()> {
        self.healed = true;
        run(
            tokio::process::Command::new("sh").args(["-c", &heal_script(&self.netns)]),
            "healing the partition",
        )
        .await?;
        let left = tokio::process::Command::new("nsenter")
            .arg(format!("--net={}", self.netns.display()))
            .args(["iptables", "-w", "-S"])
            .output()
            .await?;
        let rules = String::from_utf8_lossy(&left.stdout);
        ensure!(
            !rules.contains(CHAIN),
            "partition rules left in {}: {rules}",
            self.netns.display()
        );
        Ok(())
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        if !self.healed {
            eprintln!("[faults] healing the partition after a failed test");
            let _ = std::process::Command::new("sh")
                .args(["-c", &heal_script(&self.netns)])
                .status();
        }
    }
}

// --- node metrics ----------------------------------------------------------------------

/// The sum of every series of `metric` in a node's `/metrics`, and the node's incarnation
/// (from `/cluster/self`).
pub async fn node_metric(ip: &str, metric: &str) -> anyhow::Result<(String, f64)> {
    let addr = format!("{ip}:{}", ports::MANAGEMENT);
    let me = http::get(&addr, "/cluster/self").await?;
    ensure!(
        me.status == 200,
        "{addr}/cluster/self answered {}",
        me.status
    );
    let me: serde_json::Value = serde_json::from_str(&me.body)?;
    let incarnation = me
        .get("incarnation")
        .and_then(serde_json::Value::as_str)
        .context("/cluster/self without incarnation")?
        .to_owned();
    let m = http::get(&addr, "/metrics").await?;
    ensure!(m.status == 200, "{addr}/metrics answered {}", m.status);
    Ok((incarnation, sum_metric(&m.body, metric)))
}

/// The sum of every series of `metric` in a Prometheus text page.
pub fn sum_metric(page: &str, metric: &str) -> f64 {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(metric)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// A node counter summed over every node process a test saw: the last value read from
/// each `(pod, incarnation)`, less what the first processes had at the start. A process
/// that is killed takes its counter with it, so read the ledger just before every kill or
/// deletion, and at the end.
#[derive(Debug, Clone, Default)]
pub struct MetricLedger {
    metric: String,
    baseline: BTreeMap<(String, String), f64>,
    last: BTreeMap<(String, String), f64>,
}

impl MetricLedger {
    /// A ledger of `metric`; the first [`MetricLedger::read`] sets the baseline.
    pub fn new(metric: &str) -> Self {
        Self {
            metric: metric.to_owned(),
            ..Self::default()
        }
    }

    /// Reads every pod that has an IP and answers; returns how many answered.
    pub async fn read(&mut self, pods: &[Pod]) -> usize {
        let first = self.last.is_empty();
        let mut answered = 0;
        for p in pods {
            let Some(ip) = p.status.as_ref().and_then(|s| s.pod_ip.clone()) else {
                continue;
            };
            let name = p.metadata.name.clone().unwrap_or_default();
            if let Ok((incarnation, v)) = node_metric(&ip, &self.metric).await {
                answered += 1;
                let key = (name, incarnation);
                if first {
                    self.baseline.insert(key.clone(), v);
                }
                let e = self.last.entry(key).or_insert(v);
                *e = e.max(v);
            }
        }
        answered
    }

    /// The rise since the first read, over every process seen.
    pub fn rise(&self) -> f64 {
        self.last
            .iter()
            .map(|(k, v)| v - self.baseline.get(k).copied().unwrap_or(0.0))
            .sum()
    }

    /// Node processes seen.
    pub fn processes(&self) -> usize {
        self.last.len()
    }
}

/// Reads every counter of `record` through the client Service of ActorCluster `cluster`
/// (once it serves the current pods) and prints the reckoning as a figure of `test`.
pub async fn reckon(
    ctx: &crate::TestContext,
    cluster: &str,
    test: &str,
    record: &crate::load::Record,
) -> anyhow::Result<crate::load::Reckoning> {
    let vip = crate::actor_cluster::client_address(ctx, cluster).await?;
    let r = crate::load::reckon(&vip, record).await?;
    figure(test, &format!("reckoning: {}", r.summary()));
    Ok(r)
}

/// Polls a TCP connect to the `kubernetes` Service's cluster IP (port 443) from the host
/// every 100 ms until one succeeds, and returns how long that took (`None` after `bound`).
/// In-cluster clients reach the API server only through it: a single API server's lease
/// reconciler removes its endpoint when it shuts down and re-adds it after it starts,
/// and kube-proxy has to resync before the cluster IP answers again.
pub async fn service_ip_answers_within(
    client: &kube::Client,
    bound: Duration,
) -> anyhow::Result<Option<Duration>> {
    use k8s_openapi::api::core::v1::Service;
    let svc = kube::Api::<Service>::namespaced(client.clone(), "default")
        .get("kubernetes")
        .await
        .context("reading Service default/kubernetes")?;
    let ip = svc
        .spec
        .and_then(|s| s.cluster_ip)
        .context("Service default/kubernetes has no cluster IP")?;
    let addr = format!("{ip}:443");
    let started = tokio::time::Instant::now();
    while started.elapsed() < bound {
        let attempt = tokio::time::timeout(
            Duration::from_millis(300),
            tokio::net::TcpStream::connect(&addr),
        );
        if let Ok(Ok(_)) = attempt.await {
            return Ok(Some(started.elapsed()));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_metric_is_summed_over_its_series_and_only_its_own() {
        let page = "# HELP troupe_actor_states_lost_total x\n\
                    troupe_actor_states_lost_total{actor_type=\"counter\"} 3\n\
                    troupe_actor_states_lost_total{actor_type=\"kv\"} 1\n\
                    troupe_actor_states_lost_total_other 7\n\
                    troupe_handovers_missed_total 2\n";
        assert!((sum_metric(page, "troupe_actor_states_lost_total") - 4.0).abs() < 1e-9);
        assert!((sum_metric(page, "troupe_handovers_missed_total") - 2.0).abs() < 1e-9);
        assert!(sum_metric(page, "troupe_absent").abs() < 1e-9);
    }

    #[test]
    fn the_ledger_counts_every_incarnation_from_its_own_zero() {
        let mut l = MetricLedger::new("m");
        let k = |p: &str, i: &str| (p.to_owned(), i.to_owned());
        l.baseline.insert(k("a", "1"), 2.0);
        l.last.insert(k("a", "1"), 5.0);
        // A restarted container starts from zero; everything it counted is a rise.
        l.last.insert(k("a", "2"), 4.0);
        assert!((l.rise() - 7.0).abs() < 1e-9);
        assert_eq!(l.processes(), 2);
    }

    #[test]
    fn the_heal_script_names_only_the_partition_chain() {
        let s = heal_script(Path::new("/run/netns/cni-x"));
        assert!(s.contains("-D $c -j TROUPE-E2E-PARTITION"));
        assert!(s.contains("-X TROUPE-E2E-PARTITION"));
        assert!(!s.contains("-F;") && !s.contains("-F ;"));
    }
}
