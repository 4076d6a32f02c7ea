//! What a simulated run looks like, and which runs are refused before they
//! start: empty ones, impossible ones, and ones that cannot end in time.

use std::time::Duration;

use super::faults::{Chaos, Fault};
use super::pace::max_rate;
use super::schedule::Schedule;
use crate::Config;

/// What the simulated run looks like.
#[derive(Clone, Debug, PartialEq)]
pub struct Scenario {
    /// Teams that join.
    pub teams: u64,
    /// Messages each team receives over the run (unless it leaves for
    /// good). Ignored when `run_for` is set.
    pub messages: u64,
    /// Duration mode: every team streams at `rate` until this long after
    /// the first Global connection, instead of up to `messages`.
    pub run_for: Option<Duration>,
    /// Messages per second per team.
    pub rate: f64,
    /// Fraction of messages whose text contains `props`.
    pub props_fraction: f64,
    /// Joins are spread evenly over this long.
    pub join_over: Duration,
    /// How often a `healthcheck` is asked during the run.
    pub healthcheck_every: Duration,
    /// A healthcheck request still unanswered this long after it was sent,
    /// on a Global connection that is still open, is a violation.
    pub reply_within: Duration,
    /// Fraction of teams that leave during the run.
    pub leave_fraction: f64,
    /// Of those, the fraction told on Global (the rest on their socket).
    pub leave_on_global: f64,
    /// Of those, the fraction that join again shortly after.
    pub rejoin_fraction: f64,
    /// The whole run (streaming, recovery, final check, goodbye) is over by
    /// then, counted from the first Global connection.
    pub max_duration: Duration,
    /// Size of the oversized frame (above the client's limit).
    pub oversize_bytes: usize,
    /// How long a slow reader stops reading.
    pub slow_read_for: Duration,
    /// How long a delayed `hello` is held back.
    pub delayed_hello_for: Duration,
    /// Longest wait, once chaos is off, for every team to be back: it must
    /// cover the client's own timings ([`Scenario::recovery_wait_for`]), or
    /// a slow but correct recovery is failed as "not recovered".
    pub recovery_wait: Duration,
    /// Longest wait, after that, for an exact healthcheck.
    pub final_check_wait: Duration,
    /// Longest wait, after `goodbye`, for the client to close everything.
    pub goodbye_wait: Duration,
    /// Once every message is written, stay quiet this long (no messages,
    /// no healthchecks) before the final check: an idle window in which a
    /// benchmark measures what an idle fleet costs the client.
    pub idle_for: Duration,
    /// Begin every message text with `t=<nanoseconds since the epoch> ` at
    /// its write, so a client on the same machine can measure latency.
    pub stamp: bool,
}

impl Default for Scenario {
    /// `switchboard sim`'s defaults: a recovery wait that covers
    /// `switchboard connect`'s defaults, a max duration that fits it.
    fn default() -> Self {
        let mut scenario = Scenario {
            teams: 50,
            messages: 200,
            run_for: None,
            rate: 50.0,
            props_fraction: 0.2,
            join_over: Duration::from_secs(1),
            healthcheck_every: Duration::from_millis(500),
            reply_within: Duration::from_secs(5),
            leave_fraction: 0.1,
            leave_on_global: 0.5,
            rejoin_fraction: 0.5,
            max_duration: Duration::ZERO,
            oversize_bytes: 2 << 20,
            slow_read_for: Duration::from_millis(1500),
            delayed_hello_for: Duration::from_millis(300),
            recovery_wait: Scenario::recovery_wait_for(&Config::default()),
            final_check_wait: Duration::from_secs(10),
            goodbye_wait: Duration::from_secs(10),
            idle_for: Duration::ZERO,
            stamp: false,
        };
        scenario.max_duration = scenario.default_max_duration();
        scenario
    }
}

/// How long play may last by default in message mode, or past the
/// duration in duration mode, before the run is cut short.
pub const PLAY_BUDGET: Duration = Duration::from_secs(120);

/// Most teams a scenario may have (each is a socket; past this the plan
/// alone would take memory for nothing a machine can serve).
pub const MAX_TEAMS: u64 = 1_000_000;

/// Longest run a scenario may ask for.
pub const MAX_RUN: Duration = Duration::from_secs(7 * 24 * 3600);

/// Largest oversized frame the simulator will build.
pub const MAX_OVERSIZE: usize = 64 << 20;

/// A scenario the simulator refuses to play.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ScenarioError {
    /// No team would join.
    #[error("teams must be at least 1: a run without teams verifies nothing")]
    NoTeams,
    /// More teams than [`MAX_TEAMS`].
    #[error("teams must be at most {MAX_TEAMS}, got {0}")]
    TooManyTeams(u64),
    /// No message would be sent.
    #[error("messages must be at least 1 (or give a duration)")]
    NoMessages,
    /// A rate that is not a positive number the server can keep up.
    #[error("rate must be above 0 and at most {max} messages per second per team, got {rate}")]
    Rate {
        /// The rate given.
        rate: f64,
        /// The fastest the server writes one socket.
        max: f64,
    },
    /// A fraction outside `[0, 1]`.
    #[error("{name} must be a fraction between 0 and 1, got {value}")]
    Fraction {
        /// Which one.
        name: &'static str,
        /// Its value.
        value: f64,
    },
    /// A period that must not be zero.
    #[error("{0} must be at least 1ms")]
    ZeroDuration(&'static str),
    /// Longer than [`MAX_RUN`].
    #[error("max duration must be at most {}s", MAX_RUN.as_secs())]
    RunTooLong,
    /// Joins still going on when streaming stops.
    #[error(
        "joins are spread over {:.1}s but teams stream only for {:.1}s",
        join_over.as_secs_f64(),
        run_for.as_secs_f64()
    )]
    JoinsOutlastRun {
        /// The join spread.
        join_over: Duration,
        /// The duration.
        run_for: Duration,
    },
    /// The scenario cannot end before its max duration.
    #[error(
        "the scenario streams for {} and its ending (recovery, final check, goodbye) may take \
         {}s more: longer than the max duration {}",
        streams.map_or_else(|| "longer than any clock counts".to_owned(), |d| format!("{:.1}s", d.as_secs_f64())),
        ending.as_secs_f64(),
        humantime::format_duration(*max)
    )]
    CannotEndInTime {
        /// How long the teams stream (`None`: longer than any duration).
        streams: Option<Duration>,
        /// How long the phases after streaming may take.
        ending: Duration,
        /// The max duration.
        max: Duration,
    },
    /// An oversized frame of zero bytes or above [`MAX_OVERSIZE`].
    #[error("oversize frame must be between 1 byte and {MAX_OVERSIZE} bytes, got {0}")]
    Oversize(usize),
    /// A fault rate that is negative or not a number.
    #[error("{} rate must be a finite number of at least 0, got {rate}", fault.name())]
    FaultRate {
        /// Which fault.
        fault: Fault,
        /// Its rate.
        rate: f64,
    },
    /// A probability above its bound.
    #[error("{} probability must be below {max}, got {rate}", fault.name())]
    Probability {
        /// Which fault.
        fault: Fault,
        /// Its probability.
        rate: f64,
        /// The bound it must stay below (or at, for delayed-hello).
        max: f64,
    },
    /// A trigger waits on a team the scenario never joins.
    #[error("a {} trigger waits on team {team}, but only {teams} teams join", fault.name())]
    TriggerTeam {
        /// Which fault.
        fault: Fault,
        /// The team it names.
        team: u64,
        /// Teams in the scenario.
        teams: u64,
    },
}

impl Scenario {
    /// The max duration when none is given: [`PLAY_BUDGET`] of play (past
    /// the duration in duration mode), then the ending.
    pub fn default_max_duration(&self) -> Duration {
        let play = self
            .run_for
            .map_or(PLAY_BUDGET, |d| d.saturating_add(PLAY_BUDGET));
        play.saturating_add(self.ending())
    }

    /// The recovery wait that covers a client with these timings: one
    /// recovery with every timer on its path run out (a silent socket
    /// pinged and declared dead, the longest backoff, the `team.connect`
    /// answer, the handshake), plus a quarter for ticks and a loaded
    /// machine, in whole seconds. Shorter, and a client that recovers as
    /// configured can be failed for the simulator's own impatience.
    pub fn recovery_wait_for(client: &Config) -> Duration {
        let path = [
            client.ping_interval,
            client.pong_timeout,
            client.backoff_max,
            client.request_timeout,
            client.connect_timeout,
        ]
        .into_iter()
        .fold(Duration::ZERO, Duration::saturating_add);
        let wait = path.saturating_add(path / 4);
        Duration::from_secs(
            wait.as_secs()
                .saturating_add(u64::from(wait.subsec_nanos() > 0)),
        )
    }

    /// The longest the phases after streaming (recovery, final check,
    /// goodbye) may take.
    pub fn ending(&self) -> Duration {
        self.idle_for
            .saturating_add(self.recovery_wait)
            .saturating_add(self.final_check_wait)
            .saturating_add(self.goodbye_wait)
    }

    /// How long the teams stream, counted from the first Global connection:
    /// the last join plus its messages at the rate, or the duration.
    /// `None` when that is longer than any `Duration`.
    pub fn streams_for(&self) -> Option<Duration> {
        match self.run_for {
            Some(d) => Some(d),
            None => Duration::try_from_secs_f64(self.messages as f64 / self.rate)
                .ok()
                .and_then(|d| d.checked_add(self.join_over)),
        }
    }

    /// Refuses runs that are empty, impossible, or cannot end in time.
    pub fn validate(&self) -> Result<(), ScenarioError> {
        if self.teams == 0 {
            return Err(ScenarioError::NoTeams);
        }
        if self.teams > MAX_TEAMS {
            return Err(ScenarioError::TooManyTeams(self.teams));
        }
        if self.run_for.is_none() && self.messages == 0 {
            return Err(ScenarioError::NoMessages);
        }
        let max = max_rate();
        if !(self.rate.is_finite() && self.rate > 0.0 && self.rate <= max) {
            return Err(ScenarioError::Rate {
                rate: self.rate,
                max,
            });
        }
        for (name, value) in [
            ("props fraction", self.props_fraction),
            ("leave fraction", self.leave_fraction),
            ("leave-on-Global fraction", self.leave_on_global),
            ("rejoin fraction", self.rejoin_fraction),
        ] {
            if !(0.0..=1.0).contains(&value) {
                return Err(ScenarioError::Fraction { name, value });
            }
        }
        for (name, value) in [
            ("healthcheck interval", self.healthcheck_every),
            ("healthcheck reply deadline", self.reply_within),
            ("recovery wait", self.recovery_wait),
            ("final check wait", self.final_check_wait),
            ("goodbye wait", self.goodbye_wait),
        ] {
            if value < Duration::from_millis(1) {
                return Err(ScenarioError::ZeroDuration(name));
            }
        }
        if self.max_duration > MAX_RUN || self.ending() > MAX_RUN {
            return Err(ScenarioError::RunTooLong);
        }
        if let Some(run_for) = self.run_for
            && self.join_over >= run_for
        {
            return Err(ScenarioError::JoinsOutlastRun {
                join_over: self.join_over,
                run_for,
            });
        }
        let streams = self.streams_for();
        let ending = self.ending();
        let ends_by = streams.and_then(|s| s.checked_add(ending));
        if ends_by.is_none_or(|end| end > self.max_duration) {
            return Err(ScenarioError::CannotEndInTime {
                streams,
                ending,
                max: self.max_duration,
            });
        }
        if self.oversize_bytes == 0 || self.oversize_bytes > MAX_OVERSIZE {
            return Err(ScenarioError::Oversize(self.oversize_bytes));
        }
        Ok(())
    }
}

impl Chaos {
    /// Refuses rates that are not numbers, and probabilities that would
    /// make the run impossible (a connect-error of 1 refuses every request).
    pub fn validate(&self) -> Result<(), ScenarioError> {
        for (&fault, &rate) in &self.0 {
            if !rate.is_finite() || rate < 0.0 {
                return Err(ScenarioError::FaultRate { fault, rate });
            }
            let (max, refused) = match fault {
                Fault::ConnectError => (1.0, rate >= 1.0),
                Fault::DelayedHello => (1.0, rate > 1.0),
                _ => continue,
            };
            if refused {
                return Err(ScenarioError::Probability { fault, rate, max });
            }
        }
        Ok(())
    }
}

impl Schedule {
    /// Refuses triggers on teams that never join.
    pub fn validate(&self, teams: u64) -> Result<(), ScenarioError> {
        match self.0.iter().find(|t| t.team.0 == 0 || t.team.0 > teams) {
            Some(t) => Err(ScenarioError::TriggerTeam {
                fault: t.fault,
                team: t.team.0,
                teams,
            }),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::TeamId;
    use crate::sim::schedule::Trigger;

    fn refused(change: impl FnOnce(&mut Scenario)) -> ScenarioError {
        let mut scenario = Scenario::default();
        change(&mut scenario);
        scenario.validate().unwrap_err()
    }

    #[test]
    fn the_default_scenario_is_playable() {
        assert_eq!(Scenario::default().validate(), Ok(()));
    }

    #[test]
    fn empty_and_impossible_scenarios_are_refused() {
        assert_eq!(refused(|s| s.teams = 0), ScenarioError::NoTeams);
        assert_eq!(refused(|s| s.messages = 0), ScenarioError::NoMessages);
        for rate in [0.0, -1.0, f64::NAN, f64::INFINITY, 1e12] {
            assert!(matches!(
                refused(|s| s.rate = rate),
                ScenarioError::Rate { .. }
            ));
        }
        assert!(matches!(
            refused(|s| s.props_fraction = 1.5),
            ScenarioError::Fraction { .. }
        ));
        assert!(matches!(
            refused(|s| s.leave_fraction = f64::NAN),
            ScenarioError::Fraction { .. }
        ));
        assert!(matches!(
            refused(|s| s.healthcheck_every = Duration::ZERO),
            ScenarioError::ZeroDuration(_)
        ));
    }

    #[test]
    fn a_scenario_that_cannot_end_in_time_is_refused() {
        // Huge counts at a tiny rate: refused, not a panic.
        let error = refused(|s| {
            s.messages = u64::MAX;
            s.rate = 1e-300;
        });
        assert!(matches!(
            error,
            ScenarioError::CannotEndInTime { streams: None, .. }
        ));
        let error = refused(|s| {
            s.messages = 10_000;
            s.rate = 1.0;
        });
        assert!(error.to_string().contains("10001.0s"), "{error}");
        let error = refused(|s| {
            s.run_for = Some(Duration::from_secs(600));
            s.max_duration = Duration::from_secs(600);
        });
        assert!(matches!(error, ScenarioError::CannotEndInTime { .. }));
        let mut long = Scenario {
            run_for: Some(Duration::from_secs(600)),
            ..Scenario::default()
        };
        long.max_duration = long.default_max_duration();
        assert_eq!(long.validate(), Ok(()));
    }

    #[test]
    fn the_recovery_wait_covers_every_timer_on_the_clients_recovery_path() {
        for client in [Config::default(), Config::demo()] {
            let path = client.ping_interval
                + client.pong_timeout
                + client.backoff_max
                + client.request_timeout
                + client.connect_timeout;
            let wait = Scenario::recovery_wait_for(&client);
            assert!(wait > path, "{wait:?} does not cover {path:?}");
        }
        assert_eq!(
            Scenario::default().recovery_wait,
            Scenario::recovery_wait_for(&Config::default())
        );
        // Absurd timings saturate instead of overflowing.
        let forever = Config {
            ping_interval: Duration::MAX,
            ..Config::default()
        };
        assert_eq!(
            Scenario::recovery_wait_for(&forever),
            Duration::from_secs(u64::MAX)
        );
    }

    #[test]
    fn the_default_max_duration_leaves_play_its_budget_after_the_ending() {
        let scenario = Scenario::default();
        assert_eq!(scenario.max_duration, PLAY_BUDGET + scenario.ending());
    }

    #[test]
    fn impossible_chaos_and_stray_triggers_are_refused() {
        assert!(Chaos::all().validate().is_ok());
        assert!(Chaos::only(Fault::ConnectError, 1.0).validate().is_err());
        assert!(Chaos::only(Fault::DelayedHello, 1.0).validate().is_ok());
        assert!(Chaos::only(Fault::Zombie, f64::NAN).validate().is_err());
        let stray = Schedule(vec![Trigger {
            team: TeamId(9),
            after: 1,
            fault: Fault::Zombie,
        }]);
        assert!(stray.validate(8).is_err());
        assert!(stray.validate(9).is_ok());
    }
}
