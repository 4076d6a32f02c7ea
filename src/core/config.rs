//! The core's configuration, validated once at construction.

use std::time::Duration;

use bevy_ecs::prelude::*;

use super::url_policy::{HostPattern, TeamUrlPolicy};

/// The longest tick: every event waits up to a tick, and a shutdown waits
/// for the tick in progress, so a longer one would make both sluggish.
pub const MAX_TICK: Duration = Duration::from_secs(1);

/// Tunables of the connection manager. Durations are rounded down to whole
/// milliseconds, the core's unit of time. Serialisable, so a recording can
/// carry the exact configuration its run had.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Config {
    /// The Global API's websocket URL (`ws`, `wss`, `http` or `https`).
    pub global_url: String,
    /// Length of one tick of the core's clock.
    pub tick: Duration,
    /// How often an open team link is pinged.
    pub ping_interval: Duration,
    /// How long after a ping a link may stay silent before it is declared
    /// dead. May exceed `ping_interval`: several pings are then in flight.
    pub pong_timeout: Duration,
    /// Smallest backoff ceiling after a failure (the first retry's ceiling).
    pub backoff_min: Duration,
    /// Largest backoff ceiling, however many failures in a row.
    pub backoff_max: Duration,
    /// How long a socket may take to open before the attempt is abandoned.
    pub connect_timeout: Duration,
    /// How long a `team.connect` request may go unanswered before a retry.
    pub request_timeout: Duration,
    /// How long a close handshake may take before the socket is dropped.
    pub close_timeout: Duration,
    /// Most `team.connect` requests awaiting an answer at once: after a
    /// Global reconnect with thousands of teams, requests go out in waves
    /// instead of one flood.
    pub max_requests_in_flight: usize,
    /// The driver's batch: most events it hands the core for one step; the
    /// rest wait in its inbox for the next, so one step's work stays
    /// bounded. (The core applies whatever it is handed.)
    // Recordings of format 1 call it by its old name.
    #[serde(alias = "max_events_per_tick")]
    pub max_events_per_step: usize,
    /// Most teams the client keeps: a `team.join` for a new team beyond it
    /// is refused (logged and counted), so a hostile Global cannot grow the
    /// table, or the healthcheck reply, without bound.
    pub max_teams: usize,
    /// Open plaintext (`ws://`) team URLs handed out by a `wss://` Global.
    pub allow_insecure_team_urls: bool,
    /// Hosts team URLs may point to; empty allows any.
    pub team_hosts: Vec<HostPattern>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            global_url: "ws://127.0.0.1:8080/global".into(),
            tick: Duration::from_millis(10),
            ping_interval: Duration::from_secs(15),
            pong_timeout: Duration::from_secs(10),
            backoff_min: Duration::from_millis(250),
            backoff_max: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
            close_timeout: Duration::from_secs(2),
            max_requests_in_flight: 512,
            max_events_per_step: 65_536,
            max_teams: 100_000,
            allow_insecure_team_urls: false,
            team_hosts: Vec::new(),
        }
    }
}

impl Config {
    /// The demo's settings: a run of seconds against a simulator that
    /// injects faults several times a second, so a dead link must be noticed
    /// within a second and a retry must not wait long. Everything not named
    /// here is the service default.
    pub fn demo() -> Config {
        Config {
            ping_interval: Duration::from_secs(1),
            pong_timeout: Duration::from_secs(1),
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_secs(1),
            ..Config::default()
        }
    }
}

/// A configuration the core refuses.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A duration that must be at least one millisecond is not.
    #[error("`{0}` must be at least 1ms")]
    ZeroDuration(&'static str),
    /// A tick longer than [`MAX_TICK`].
    #[error("tick must be at most {}ms", MAX_TICK.as_millis())]
    TickTooLong,
    /// `backoff_min` above `backoff_max`.
    #[error("backoff-min ({min_ms}ms) is above backoff-max ({max_ms}ms)")]
    BackoffOrder {
        /// The minimum, in ms.
        min_ms: u64,
        /// The maximum, in ms.
        max_ms: u64,
    },
    /// A count that must be positive is zero.
    #[error("`{0}` must be at least 1")]
    ZeroCount(&'static str),
    /// The Global URL cannot be used.
    #[error("global url: {0}")]
    GlobalUrl(#[from] crate::protocol::UrlError),
}

/// The validated configuration in core units, as a resource.
#[derive(Resource, Clone, Debug)]
pub struct Settings {
    /// The normalised Global URL.
    pub global_url: String,
    /// Tick length, ms.
    pub tick: u64,
    /// Ping interval, ms.
    pub ping_interval: u64,
    /// Pong timeout, ms.
    pub pong_timeout: u64,
    /// Backoff floor, ms.
    pub backoff_min: u64,
    /// Backoff ceiling, ms.
    pub backoff_max: u64,
    /// Connect timeout, ms.
    pub connect_timeout: u64,
    /// Request timeout, ms.
    pub request_timeout: u64,
    /// Close timeout, ms.
    pub close_timeout: u64,
    /// Request slots.
    pub max_requests_in_flight: usize,
    /// The driver's batch of events per step.
    pub max_events_per_step: usize,
    /// Teams kept at most.
    pub max_teams: usize,
    /// Which team URLs are opened.
    pub team_urls: TeamUrlPolicy,
}

impl Config {
    /// Validates and converts to core units.
    pub fn validate(&self) -> Result<Settings, ConfigError> {
        let ms = |d: Duration, name: &'static str| -> Result<u64, ConfigError> {
            match u64::try_from(d.as_millis()) {
                Ok(0) => Err(ConfigError::ZeroDuration(name)),
                Ok(v) => Ok(v),
                Err(_) => Ok(u64::MAX / 4),
            }
        };
        let global_url = crate::protocol::normalize_ws_url(&self.global_url)?;
        let mut settings = Settings {
            global_url,
            tick: ms(self.tick, "tick")?,
            ping_interval: ms(self.ping_interval, "ping_interval")?,
            pong_timeout: ms(self.pong_timeout, "pong_timeout")?,
            backoff_min: ms(self.backoff_min, "backoff_min")?,
            backoff_max: ms(self.backoff_max, "backoff_max")?,
            connect_timeout: ms(self.connect_timeout, "connect_timeout")?,
            request_timeout: ms(self.request_timeout, "request_timeout")?,
            close_timeout: ms(self.close_timeout, "close_timeout")?,
            max_requests_in_flight: self.max_requests_in_flight,
            max_events_per_step: self.max_events_per_step,
            max_teams: self.max_teams,
            team_urls: TeamUrlPolicy {
                global_secure: false,
                allow_insecure: self.allow_insecure_team_urls,
                hosts: self.team_hosts.clone(),
            },
        };
        settings.team_urls.global_secure = settings.global_url.starts_with("wss://");
        if self.tick > MAX_TICK {
            return Err(ConfigError::TickTooLong);
        }
        if settings.backoff_min > settings.backoff_max {
            return Err(ConfigError::BackoffOrder {
                min_ms: settings.backoff_min,
                max_ms: settings.backoff_max,
            });
        }
        if settings.max_requests_in_flight == 0 {
            return Err(ConfigError::ZeroCount("max_requests_in_flight"));
        }
        if settings.max_events_per_step == 0 {
            return Err(ConfigError::ZeroCount("max_events_per_step"));
        }
        if settings.max_teams == 0 {
            return Err(ConfigError::ZeroCount("max_teams"));
        }
        Ok(settings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_what_cannot_work() {
        let zero = Config {
            tick: Duration::ZERO,
            ..Config::default()
        };
        assert_eq!(
            zero.validate().unwrap_err(),
            ConfigError::ZeroDuration("tick")
        );
        let long = Config {
            tick: Duration::from_secs(1_000_000),
            ..Config::default()
        };
        assert_eq!(long.validate().unwrap_err(), ConfigError::TickTooLong);
        let order = Config {
            backoff_min: Duration::from_secs(5),
            backoff_max: Duration::from_secs(1),
            ..Config::default()
        };
        assert!(matches!(
            order.validate(),
            Err(ConfigError::BackoffOrder { .. })
        ));
        let url = Config {
            global_url: "ftp://x/global".into(),
            ..Config::default()
        };
        assert!(matches!(url.validate(), Err(ConfigError::GlobalUrl(_))));
    }

    #[test]
    fn a_pong_timeout_longer_than_the_interval_is_valid() {
        let cfg = Config {
            ping_interval: Duration::from_secs(1),
            pong_timeout: Duration::from_secs(5),
            ..Config::default()
        };
        assert!(cfg.validate().is_ok());
    }
}
