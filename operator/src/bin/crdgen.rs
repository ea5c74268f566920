//! Prints the `ActorCluster` CRD as YAML; its output is committed as `crds/actorcluster.yaml`.

fn main() -> anyhow::Result<()> {
    print!("{}", troupe_operator::crd::crd_yaml()?);
    Ok(())
}
