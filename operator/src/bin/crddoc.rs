//! Prints the ActorCluster reference as Markdown, from the same CRD `crdgen` prints; its
//! output is committed as `docs/reference/actorcluster.md` (`make crds`).

use kube::CustomResourceExt;
use troupe_operator::crd::ActorCluster;

fn main() -> anyhow::Result<()> {
    print!(
        "{}",
        troupe_operator::reference::reference_markdown(&ActorCluster::crd())?
    );
    Ok(())
}
