//! `troupe-sim`: the membership protocol and the actor runtime proven by deterministic
//! simulation.
//!
//! The production membership code (`troupe_node::Node::start`: driver, election,
//! coordinator, failure detector, view) and, beside each node, the production actor
//! runtime (`troupe_actors::ActorRuntime`, hosted as the binary hosts it) run for several
//! pods in one process, on one thread, under one seeded schedule and a virtual clock; the
//! store and the network are in-process doubles behind the node's own seams
//! (`MemberStore`, `Prober`) and the runtime's (`transport::Connector`) that inject the
//! faults the schedule draws, and a client workload increments counter actors. Invariants are checked after every step of simulated time
//! ([`world`] says which). A failing seed prints its schedule and replays exactly.
//!
//! * [`clock`]: the virtual clock behind `std::time` on the simulation thread;
//! * [`rng`]: the one seeded generator; [`schedule`]: the faults a seed draws;
//! * [`store`]: [`store::SimStore`], the Lease with CAS, a watch and store faults;
//! * [`net`]: [`net::SimNet`]/[`net::SimProber`], pings answered from the target's view;
//! * [`transport`]: the runtime's node-to-node links as in-memory pipes on that network;
//! * [`actors`]: the client workload and the actor oracles;
//! * [`invariants`]: the properties checked, as pure functions;
//! * [`world`]: one run — nodes, the schedule, the invariants, the trace.
//!
//! A binary that runs simulations must invoke [`install_virtual_clock!`] once; the
//! `troupe-sim` binary does, and the integration tests drive that binary (in an optimised
//! test harness the override symbol is not kept, see [`clock`]).

pub mod actors;
pub mod clock;
pub mod invariants;
pub mod net;
pub mod rng;
pub mod schedule;
pub mod store;
pub mod transport;
pub mod world;

pub use schedule::{FaultKind, Shape};
pub use world::{Config, Outcome, Summary, Violation, run, run_schedule, run_seeds, shrink};
