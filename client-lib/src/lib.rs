#![doc = include_str!("../README.md")]

pub mod bootstrap;
pub mod engine;
pub mod identity;
pub mod node;
pub mod profile;
pub mod record;
pub mod registry;
pub mod session;
#[cfg(feature = "tor")]
pub mod tor;
pub mod transport;

pub use bootstrap::{BootstrapError, BootstrapList, BootstrapNode, VouchedNode};
pub use node::{Channel, ClientError, ClientErrorKind, NodeClient, NodeOptions};
