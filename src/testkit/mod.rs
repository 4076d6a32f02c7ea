//! Test kits, for this crate's tests and for a library user's.
//!
//! - [`peer`]: a scripted peer for stepping the core deterministically,
//!   with no sockets: it plays the transport's part (answering `Open` with
//!   `Opened`, feeding frames) through the same [`Reader`](crate::reader)
//!   a socket task uses.
//! - [`server`]: a scripted websocket server on loopback, driven by hand.
//! - [`client`]: the real runtime on its own thread with test timings.
//!
//! ```
//! use switchboard::testkit::Peer;
//! use switchboard::TeamId;
//!
//! let mut peer = Peer::new(7);
//! peer.open_global();
//! peer.join(TeamId(1));
//! peer.connect_team(TeamId(1));
//! peer.message(TeamId(1), "props to you");
//! peer.step();
//! assert_eq!(peer.core.healthcheck()[0].props_count, 1);
//! ```

pub mod client;
pub mod peer;
pub mod server;

pub use peer::{Peer, test_config};
