//! switchboard keeps a fleet of bot connections alive: one websocket to a
//! Global API that announces teams, and one websocket per team, opened,
//! watched, counted and closed as the Global API directs.
//!
//! # Layout
//!
//! - [`protocol`]: wire types, decode and encode. Pure.
//! - [`bridge`]: [`NetEvent`] in, [`NetCommand`] out: the only contract
//!   between the core and the network.
//! - [`core`]: the deterministic core, a bevy_ecs world stepped on a fixed
//!   tick. No I/O, no clock, no unseeded randomness.
//! - [`testkit`]: a scripted peer that steps the core in tests, no sockets.
//! - [`record`]: the flight recorder, and replay of what it wrote.
#![warn(missing_docs)]

pub mod bridge;
pub mod core;
pub mod persistence;
pub mod protocol;
pub mod reader;
pub mod record;
pub mod report;
pub mod runtime;
pub mod sim;
pub mod store;
pub mod tap;
pub mod testkit;
pub mod transport;

pub use bridge::{CloseReason, ConnId, ConnKind, Inbound, NetCommand, NetEvent, TeamControl, Text};
pub use core::config::{Config, ConfigError};
pub use core::snapshot::{Snapshot, TeamSnapshot};
pub use core::{Core, CoreSystems};
pub use protocol::{DecodeError, TeamId, TeamStats};
