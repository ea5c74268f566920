//! `troupe-bench`: comparative benchmarks of the Troupe actor runtime (in `benches/`) and a
//! load generator for the client HTTP API ([`loadgen`], binary `loadgen`).
//!
//! ```text
//!  benches/local.rs   in-node tell throughput and ask round trip: troupe, ractor, kameo,
//!                     actix, bare tokio mpsc; mailbox-depth accounting cost
//!  benches/remote.rs  node-to-node ask round trip and one-way throughput on loopback
//!  benches/http.rs    client HTTP API asks through one node on loopback
//!  src/bin/loadgen.rs bounded load against a node's client API (loopback only)
//! ```
//!
//! [`cluster`] starts runtimes on 127.0.0.1 for the benchmarks and the load generator.

pub mod cluster;
pub mod loadgen;
