#![doc = include_str!("../README.md")]

pub mod epoch;
pub mod frame;
pub mod id;
pub mod msg;
pub mod noise;
pub mod peer;
pub mod ring;

pub use epoch::Epoch;
pub use frame::{Decoder, FrameError, Parsed, RawFrame};
pub use id::{Id, Key, ParseIdError};
pub use msg::{FailCause, Kind, Message, NetworkId, PROTOCOL_VERSION};
