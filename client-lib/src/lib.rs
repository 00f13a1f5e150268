#![doc = include_str!("../README.md")]

pub mod bootstrap;
pub mod identity;
pub mod node;
pub mod record;

pub use bootstrap::{BootstrapError, BootstrapList, BootstrapNode, VouchedNode};
pub use node::{Channel, ClientError, ClientErrorKind, NodeClient, NodeOptions};
