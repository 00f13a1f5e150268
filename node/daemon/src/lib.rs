#![doc = include_str!("../README.md")]

pub mod cluster;
pub mod config;
pub mod cpu;
pub mod identity;
pub mod maintenance;
pub mod metrics;
pub mod peer;
pub mod server;
pub mod timesync;
