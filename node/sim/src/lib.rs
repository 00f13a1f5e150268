#![doc = include_str!("../README.md")]

mod net;
mod scenario;

pub use net::{Sim, SimNet};
pub use scenario::{run_scenario, Outcome, Scenario};
