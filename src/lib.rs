//! switchboard keeps a fleet of bot connections alive: one websocket to a
//! Global API that announces teams, and one websocket per team, opened,
//! watched, counted and closed as the Global API directs. The protocol, and
//! every decision it leaves to the client, is in `docs/PROTOCOL.md`.
//!
//! # The library
//!
//! - [`Core`]: the deterministic core, a bevy_ecs world stepped on a fixed
//!   tick. No I/O, no clock, no unseeded randomness: events in
//!   ([`Core::handle`]), time in ([`Core::step`]), commands out
//!   ([`Core::drain_commands`]); its views ([`Snapshot`],
//!   [`Core::healthcheck`], [`Core::summary`]) and its vocabulary are in
//!   [`core`].
//! - [`bridge`]: [`NetEvent`] in, [`NetCommand`] out: the only contract
//!   between the core and the network; plain data.
//! - [`reader`]: one connection's read side without the socket: frames in,
//!   bridge events out (messages batched in runs), for any driver.
//! - [`protocol`]: the wire types, decode and encode.
//! - [`runtime`]: the driver that runs the core against real sockets
//!   ([`runtime::run`]), with sidecars beside it; [`transport`] and
//!   [`inbox`] are its socket side, [`report`] its final report.
//! - [`tap`]: message texts and team events for a consumer on the I/O side.
//! - [`cli`]: the command line, as the `switchboard` binary runs it.
//! - `testkit` (cargo feature `testkit`): a scripted peer that steps the
//!   core with no sockets, a scripted websocket server, the runtime on a
//!   thread with test timings.
//!
//! The rest is the crate's own: the state file (`store`, `persistence`),
//! the flight recorder (`record`), the HTTP side (`http`), the NATS
//! publisher (`publish`), the simulator (`sim`), and small helpers. With the
//! `testkit` feature they are public too, for this crate's integration
//! tests; they are not a stable API.
#![warn(missing_docs)]

/// Declares a module of the crate's own: `pub(crate)`, and public with the
/// `testkit` feature so that this crate's integration tests reach it.
macro_rules! internal {
    ($(#[$attr:meta])* mod $name:ident;) => {
        $(#[$attr])*
        #[cfg(feature = "testkit")]
        pub mod $name;
        $(#[$attr])*
        #[cfg(not(feature = "testkit"))]
        #[allow(dead_code, unused_imports)] // what only the integration tests use
        pub(crate) mod $name;
    };
}

pub mod bridge;
pub mod cli;
pub mod cluster;
pub mod core;
pub mod inbox;
pub mod protocol;
pub mod reader;
pub mod report;
pub mod runtime;
pub mod tap;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod transport;

mod fnv;
internal! { mod http; }
internal! { mod persistence; }
internal! { mod procfs; }
internal! { mod publish; }
internal! { mod record; }
internal! { mod redact; }
internal! { mod sim; }
internal! { mod store; }

pub use bridge::{CloseReason, ConnId, ConnKind, Inbound, NetCommand, NetEvent, TeamControl, Text};
pub use core::{Config, ConfigError, Core, Snapshot, TeamSnapshot};
pub use protocol::{DecodeError, TeamId, TeamStats};

// The README's examples are compiled and run with the doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeExamples;
