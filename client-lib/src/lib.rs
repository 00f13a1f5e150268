#![doc = include_str!("../README.md")]

pub mod node;

pub use node::{ClientError, ClientErrorKind, NodeClient, NodeOptions};
