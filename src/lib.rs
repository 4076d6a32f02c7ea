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
//!   between the core and the network; credit-bounded.
//! - [`core`]: the deterministic core, a bevy_ecs world stepped on a fixed
//!   tick. No I/O, no clock, no unseeded randomness.
//! - [`report`]: the final report, table or JSON.
//! - [`redact`]: URLs with their credentials masked, for every output.
//!
//! The I/O side:
//! - [`transport`]: tokio + tungstenite sockets, one task per socket.
//! - [`runtime`]: the driver joining core and transport on its own thread,
//!   asleep when nothing is due; sidecars run beside it.
//! - [`store`] and [`persistence`]: the state file that keeps counts across
//!   restarts, and the sidecar that keeps it current.
//! - [`tap`]: message texts and team events for a consumer on the I/O side.
//! - [`publish`]: the tap published to NATS JetStream (`--publish`).
//! - [`record`]: the flight recorder, and replay of what it wrote.
//! - [`http`]: metrics, health, team views and the status page.
//! - [`procfs`]: this process's memory, descriptors and CPU time from /proc.
//!
//! For tests and rehearsals:
//! - [`sim`]: the simulated Global API, with chaos and a verdict.
//! - [`testkit`]: a scripted peer that steps the core with no sockets, a
//!   scripted websocket server, the runtime with test timings.
#![warn(missing_docs)]

pub mod bridge;
pub mod core;
pub mod http;
pub mod persistence;
pub mod procfs;
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
pub mod testkit;
pub mod transport;

pub use bridge::{CloseReason, ConnId, ConnKind, Inbound, NetCommand, NetEvent, TeamControl, Text};
pub use core::config::{Config, ConfigError};
pub use core::snapshot::{Snapshot, TeamSnapshot};
pub use core::{Core, CoreSystems};
pub use protocol::{DecodeError, TeamId, TeamStats};
