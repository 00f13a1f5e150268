#![doc = include_str!("../README.md")]

mod hops;
mod net;
mod records;
mod scenario;

pub use hops::{route_stats, RouteStats};
pub use net::{node_id, Sim, SimNet};
pub use records::{Acked, DataConfig};
pub use scenario::{run_scenario, Outcome, Scenario};
