//! The core's systems, one concern a file, run in the order of
//! [`CoreSystems`](super::CoreSystems).

pub mod global;
pub mod healthcheck;
pub mod heartbeat;
pub mod ingest;
pub mod reconnect;
pub mod restore;
pub mod shutdown;
pub mod traffic;
