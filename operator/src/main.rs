//! The `troupe-operator` binary (work in progress).

fn main() -> anyhow::Result<()> {
    anyhow::bail!("troupe-operator is not implemented yet")
}
