#![doc = include_str!("../README.md")]

pub mod cluster;
pub mod config;
pub mod cpu;
pub mod identity;
pub mod maintenance;
pub mod metrics;
pub mod peer;
pub mod server;
pub mod sock;
pub mod timesync;

/// File in the data directory holding the running tarnd's PID (for `tarnctl drain`).
pub const PID_FILE: &str = "tarnd.pid";
