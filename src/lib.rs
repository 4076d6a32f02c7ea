//! switchboard keeps a fleet of bot connections alive: one websocket to a
//! Global API that announces teams, and one websocket per team, opened,
//! watched, counted and closed as the Global API directs. The protocol, and
//! every decision it leaves to the client, is in `docs/PROTOCOL.md`.
//!
//! # Layout
//!
//! The deterministic part:
//! - [`protocol`]: wire types, decode and encode. Pure.
//! - [`reader`]: one connection's read side without the socket: frames in,
//!   bridge events out (messages batched in runs).
//! - [`bridge`]: [`NetEvent`] in, [`NetCommand`] out: the only contract
//!   between the core and the network; plain data.
//! - [`core`]: the deterministic core, a bevy_ecs world stepped on a fixed
//!   tick. No I/O, no clock, no unseeded randomness.
//! - [`report`]: the final report, table or JSON.
//! - [`redact`]: URLs with their credentials masked, for every output.
//! - `fnv`: the one stable hash, for names and digests kept on disk.
//!
//! The I/O side:
//! - [`inbox`]: the credit-bounded channel from socket tasks to the driver.
//! - [`transport`]: tokio + tungstenite sockets, one task per socket.
//! - [`runtime`]: the driver joining core and transport on its own thread,
//!   asleep when nothing is due; sidecars run beside it.
//! - [`store`] and [`persistence`]: the state file that keeps counts across
//!   restarts, and the sidecar that keeps it current.
//! - [`tap`]: message texts and team events for a consumer on the I/O side.
//! - [`publish`]: the tap published to NATS JetStream (`--publish`).
//! - [`record`]: the flight recorder, and replay of what it wrote.
//! - [`http`]: metrics, health, team views and the status page.
//!
//! For tests and rehearsals:
//! - [`sim`]: the simulated Global API, with chaos and a verdict.
//! - [`testkit`]: a scripted peer that steps the core with no sockets, a
//!   scripted websocket server, the runtime with test timings.
#![warn(missing_docs)]

pub mod bridge;
pub mod core;
mod fnv;
pub mod http;
pub mod inbox;
pub mod persistence;
pub mod protocol;
pub mod publish;
pub mod reader;
pub mod record;
pub mod redact;
pub mod report;
pub mod runtime;
pub mod sim;
pub mod store;
pub mod tap;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod transport;

pub use bridge::{CloseReason, ConnId, ConnKind, Inbound, NetCommand, NetEvent, TeamControl, Text};
pub use core::{Config, ConfigError, Core, Snapshot, TeamSnapshot};
pub use protocol::{DecodeError, TeamId, TeamStats};

// The README's examples are compiled and run with the doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeExamples;
