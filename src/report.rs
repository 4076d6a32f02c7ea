//! The final report: one line per team, as a table or as JSON.

use std::fmt::Write as _;

use serde::Serialize;

use crate::core::LinkState;
use crate::core::Snapshot;
use crate::protocol::TeamId;

/// One team at the end of the run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TeamReport {
    /// The team.
    pub id: TeamId,
    /// `left` if the team left, else `joined`.
    pub state: &'static str,
    /// Whether its socket was open when the run began to end.
    pub connected: bool,
    /// Messages counted.
    pub messages: u64,
    /// Of those, with `props`.
    pub props: u64,
    /// Open links lost and re-established.
    pub reconnects: u64,
    /// Round-trip time of the last answered ping, ms.
    pub last_rtt_ms: Option<u64>,
}

/// The whole fleet at the end of the run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Every team ever joined, sorted by id.
    pub teams: Vec<TeamReport>,
    /// Sum of `messages`.
    pub messages: u64,
    /// Sum of `props`.
    pub props: u64,
}

impl Report {
    /// Builds the report from a core snapshot.
    pub fn from_snapshot(snapshot: &Snapshot) -> Report {
        let teams: Vec<TeamReport> = snapshot
            .teams
            .iter()
            .map(|t| TeamReport {
                id: t.id,
                state: if t.link == LinkState::Left {
                    "left"
                } else {
                    "joined"
                },
                connected: t.connected || t.health.connected_at_shutdown,
                messages: t.counters.message_count,
                props: t.counters.props_count,
                reconnects: t.health.reconnects,
                last_rtt_ms: t.health.rtt_ms,
            })
            .collect();
        Report {
            messages: teams.iter().map(|t| t.messages).sum(),
            props: teams.iter().map(|t| t.props).sum(),
            teams,
        }
    }

    /// A fixed-width table for a terminal.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:>8}  {:<6}  {:<9}  {:>10}  {:>8}  {:>10}  {:>8}",
            "team", "state", "connected", "messages", "props", "reconnects", "rtt_ms"
        );
        for t in &self.teams {
            let rtt = t
                .last_rtt_ms
                .map_or_else(|| "-".to_owned(), |r| r.to_string());
            let _ = writeln!(
                out,
                "{:>8}  {:<6}  {:<9}  {:>10}  {:>8}  {:>10}  {:>8}",
                t.id.0, t.state, t.connected, t.messages, t.props, t.reconnects, rtt
            );
        }
        let _ = writeln!(
            out,
            "{:>8}  {:<6}  {:<9}  {:>10}  {:>8}",
            "total", "", "", self.messages, self.props
        );
        out
    }

    /// The report as JSON.
    pub fn json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}
