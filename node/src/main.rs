//! The `troupe-node` binary: parses its configuration and serves until SIGTERM.

use anyhow::Context;
use clap::Parser;
use tracing_subscriber::EnvFilter;
use troupe_node::health::{self, Health};

#[derive(Debug, Parser)]
#[command(version, about = "Troupe actor node")]
struct Args {
    /// Address of the management server (/alive, /ready, /metrics).
    #[arg(long, env = "TROUPE_MANAGEMENT_ADDR", default_value = "0.0.0.0:8558")]
    management_addr: std::net::SocketAddr,
    /// Start Ready without waiting for membership (skeleton mode, for cluster tests).
    #[arg(long, env = "TROUPE_STANDALONE", default_value_t = true)]
    standalone: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env(troupe_contract::env::LOG)
                .unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let health = Health::default();
    health.set_member_up(args.standalone);
    let listener = tokio::net::TcpListener::bind(args.management_addr)
        .await
        .with_context(|| format!("cannot listen on {}", args.management_addr))?;
    tracing::info!(addr = %args.management_addr, "management server listening");
    axum::serve(listener, health::router(health))
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("management server failed")?;
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {},
                _ = tokio::signal::ctrl_c() => {},
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the node");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    tracing::info!("shutting down");
}
