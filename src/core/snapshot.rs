//! A serialisable view of the whole core, in stable order, with no entity
//! ids or addresses: the thing snapshot tests assert on.

use serde::Serialize;

use super::components::{Counters, Health, LinkState};
use super::global_link::GlobalLink;
use super::resources::{Clock, Shutdown, Stats};
use crate::protocol::TeamId;

/// The core at one instant.
#[derive(Clone, Debug, Serialize)]
pub struct Snapshot {
    /// Tick and time.
    pub clock: Clock,
    /// The Global link.
    pub global: GlobalLink,
    /// Every team ever joined, sorted by id.
    pub teams: Vec<TeamSnapshot>,
    /// Run-wide counters.
    pub stats: Stats,
    /// Shutdown progress.
    pub shutdown: Shutdown,
    /// Connections the core still holds.
    pub live_connections: usize,
    /// Whether the run is over (shut down, every connection gone).
    pub finished: bool,
}

/// One team.
#[derive(Clone, Debug, Serialize)]
pub struct TeamSnapshot {
    /// Its id.
    pub id: TeamId,
    /// Whether its websocket is open.
    pub connected: bool,
    /// Where its link stands.
    pub link: LinkState,
    /// Its counts.
    pub counters: Counters,
    /// Its health.
    pub health: Health,
    /// Its last few transitions.
    pub history: super::lifecycle::History,
}
