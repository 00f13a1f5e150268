#![doc = include_str!("../README.md")]

mod error;
#[cfg(feature = "rocksdb")]
mod index;
#[cfg(feature = "rocksdb")]
mod journal;
mod memory;
#[cfg(feature = "rocksdb")]
mod rocks;
mod store;
pub mod valueset;

pub use error::{ErrorKind, StoreError};
pub use memory::MemoryStore;
#[cfg(feature = "rocksdb")]
pub use rocks::{RocksOptions, RocksStore, WalPolicy};
pub use store::{
    DropReport, EngineStat, EpochStats, Limits, PutItem, ScanVisitor, Store, StoreStats,
};
pub use valueset::StampedValue;
