//! The faults the simulator can inject, the rates at which it injects
//! them when they are left to chance, and the name of one injected fault.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A fault the simulator can inject.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    /// Team socket closed with 1000 after a flush.
    TeamClose,
    /// Team socket closed with 1011 after a flush.
    TeamErrorClose,
    /// Team socket reset (RST), after the client confirmed every message.
    TeamReset,
    /// Global closed and reopened; hello and joins replayed.
    GlobalDrop,
    /// Team socket that stops answering and sending, TCP kept open.
    Zombie,
    /// Malformed JSON, unknown type, missing/ill-typed field, binary frame.
    Garbage,
    /// An `error` in place of a `team.connect` answer.
    ConnectError,
    /// `team.join` again for a team already joined.
    DuplicateJoin,
    /// `hello` held back on a new socket.
    DelayedHello,
    /// A frame above the client's size limit.
    Oversize,
    /// The server stops reading the client's frames for a while.
    SlowReader,
}

impl Fault {
    /// Every fault, in a stable order.
    pub const ALL: [Fault; 11] = [
        Fault::TeamClose,
        Fault::TeamErrorClose,
        Fault::TeamReset,
        Fault::GlobalDrop,
        Fault::Zombie,
        Fault::Garbage,
        Fault::ConnectError,
        Fault::DuplicateJoin,
        Fault::DelayedHello,
        Fault::Oversize,
        Fault::SlowReader,
    ];

    /// The knob's name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Fault::TeamClose => "team-close",
            Fault::TeamErrorClose => "team-error-close",
            Fault::TeamReset => "team-reset",
            Fault::GlobalDrop => "global-drop",
            Fault::Zombie => "zombie",
            Fault::Garbage => "garbage",
            Fault::ConnectError => "connect-error",
            Fault::DuplicateJoin => "duplicate-join",
            Fault::DelayedHello => "delayed-hello",
            Fault::Oversize => "oversize",
            Fault::SlowReader => "slow-reader",
        }
    }

    /// The fault whose [`name`](Fault::name) is `name`.
    pub fn from_name(name: &str) -> Option<Fault> {
        Fault::ALL.into_iter().find(|f| f.name() == name)
    }

    /// Whether its rate is a probability, rolled where it applies (per
    /// `team.connect` request, per new socket), rather than injections per
    /// second across the fleet.
    pub fn is_probability(self) -> bool {
        matches!(self, Fault::ConnectError | Fault::DelayedHello)
    }

    /// Whether it takes a team's socket down (or refuses one), so that
    /// surviving it means the team connected again.
    pub fn disconnects_team(self) -> bool {
        matches!(
            self,
            Fault::TeamClose
                | Fault::TeamErrorClose
                | Fault::TeamReset
                | Fault::Zombie
                | Fault::ConnectError
                | Fault::Oversize
        )
    }
}

/// Fault rates. For `connect-error` and `delayed-hello` the value is a
/// probability per request / per new socket; for every other fault it is
/// injections per second across the whole fleet.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Chaos(pub BTreeMap<Fault, f64>);

/// The default mix: every kind at its default rate.
const MIX: [(Fault, f64); 11] = [
    (Fault::TeamClose, 1.0),
    (Fault::TeamErrorClose, 1.0),
    (Fault::TeamReset, 0.5),
    (Fault::GlobalDrop, 0.2),
    (Fault::Zombie, 0.3),
    (Fault::Garbage, 3.0),
    (Fault::ConnectError, 0.05),
    (Fault::DuplicateJoin, 1.0),
    (Fault::DelayedHello, 0.05),
    (Fault::Oversize, 0.3),
    (Fault::SlowReader, 0.3),
];

/// A scaled probability is capped here: at 1, a connect-error would refuse
/// every request and no team could ever connect.
const MAX_SCALED_PROBABILITY: f64 = 0.9;

impl Chaos {
    /// No faults.
    pub fn none() -> Chaos {
        Chaos::default()
    }

    /// Every fault kind at its default rate (the same as `level(1.0)`).
    pub fn all() -> Chaos {
        Chaos::level(1.0)
    }

    /// The default mix scaled by `level` (0 = none, 1 = default). Scaled
    /// probabilities are capped below 1.
    pub fn level(level: f64) -> Chaos {
        if level.is_nan() || level <= 0.0 {
            return Chaos::none();
        }
        Chaos(
            MIX.into_iter()
                .map(|(f, r)| {
                    let scaled = r * level;
                    let rate = if f.is_probability() {
                        scaled.min(MAX_SCALED_PROBABILITY)
                    } else {
                        scaled
                    };
                    (f, rate)
                })
                .collect(),
        )
    }

    /// Only `fault`, at `rate`.
    pub fn only(fault: Fault, rate: f64) -> Chaos {
        Chaos(BTreeMap::from([(fault, rate)]))
    }

    /// The rate (or probability) of `fault`.
    pub fn rate(&self, fault: Fault) -> f64 {
        self.0.get(&fault).copied().unwrap_or(0.0)
    }

    /// The rate-driven kinds that are on, with their rates per second.
    pub fn per_second(&self) -> Vec<(Fault, f64)> {
        self.0
            .iter()
            .filter(|(f, r)| !f.is_probability() && **r > 0.0)
            .map(|(f, r)| (*f, *r))
            .collect()
    }
}

/// Names one injected fault, so the team socket task that writes its frame
/// can report it written (and its recovery armed) once the frame is out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct WatchId(pub(super) u64);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_mix_names_every_kind_once() {
        let all = Chaos::all();
        assert_eq!(all.0.len(), Fault::ALL.len());
        for fault in Fault::ALL {
            assert!(all.rate(fault) > 0.0, "{}", fault.name());
            assert_eq!(Fault::from_name(fault.name()), Some(fault));
        }
    }

    #[test]
    fn scaled_probabilities_stay_below_one() {
        let wild = Chaos::level(1000.0);
        assert!(wild.rate(Fault::ConnectError) < 1.0);
        assert_eq!(wild.rate(Fault::Garbage), 3000.0);
        assert_eq!(Chaos::level(f64::NAN), Chaos::none());
        assert_eq!(Chaos::level(-1.0), Chaos::none());
    }
}
