//! What the publisher needs: where NATS is, how much it may buffer, and
//! the stream it writes to. Every default lives here, once.

use std::str::FromStr;
use std::time::Duration;

/// The publisher's configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct PublishConfig {
    /// The NATS server, e.g. `nats://127.0.0.1:4222`.
    pub url: String,
    /// The tap's budget: bytes of message text (plus the tap's
    /// per-message charge) held between a socket and NATS's
    /// acknowledgement. When it is spent, team sockets stop reading.
    pub buffer_bytes: usize,
    /// The stream, created or updated at start.
    pub stream: StreamSettings,
    /// Longest wait for a publish acknowledgement (or any JetStream API
    /// answer) before the attempt counts as failed and is retried.
    pub ack_timeout: Duration,
    /// Most publishes awaiting an acknowledgement at once (at most one per
    /// team, whatever this says: see [`super::outbox`]).
    pub max_in_flight: usize,
    /// At the end of a run, how long to keep publishing what is left.
    pub drain_timeout: Duration,
}

impl PublishConfig {
    /// The defaults, publishing to `url`.
    pub fn new(url: impl Into<String>) -> PublishConfig {
        PublishConfig {
            url: url.into(),
            buffer_bytes: 64 << 20,
            stream: StreamSettings::default(),
            ack_timeout: Duration::from_secs(5),
            max_in_flight: 1024,
            drain_timeout: Duration::from_secs(10),
        }
    }

    /// Checks what NATS would reject later, or what cannot work at all.
    pub fn validate(&self) -> Result<(), PublishConfigError> {
        use PublishConfigError as E;
        async_nats::ServerAddr::from_str(&self.url)
            .map_err(|e| E::Url(self.url.clone(), e.to_string()))?;
        if !self.url.contains("://") {
            return Err(E::Url(
                self.url.clone(),
                "give a scheme, e.g. nats://HOST:PORT".into(),
            ));
        }
        if self.buffer_bytes == 0 {
            return Err(E::Zero("buffer"));
        }
        if self.max_in_flight == 0 {
            return Err(E::Zero("max in flight"));
        }
        if self.ack_timeout.is_zero() {
            return Err(E::Zero("ack timeout"));
        }
        let s = &self.stream;
        let bad_name = |c: char| c.is_whitespace() || matches!(c, '.' | '*' | '>' | '/' | '\\');
        if s.name.is_empty() || s.name.chars().any(bad_name) {
            return Err(E::StreamName(s.name.clone()));
        }
        let bad_token = |t: &str| {
            t.is_empty()
                || t.chars()
                    .any(|c| c.is_whitespace() || matches!(c, '*' | '>'))
        };
        if s.subject_prefix.split('.').any(bad_token) {
            return Err(E::Prefix(s.subject_prefix.clone()));
        }
        if s.duplicate_window.is_zero() {
            return Err(E::Zero("duplicate window"));
        }
        if let Some(age) = s.max_age
            && s.duplicate_window > age
        {
            return Err(E::WindowAboveAge);
        }
        Ok(())
    }
}

/// The JetStream stream the publisher writes to.
#[derive(Clone, Debug, PartialEq)]
pub struct StreamSettings {
    /// The stream's name.
    pub name: String,
    /// Subjects are `<prefix>.teams.<team_id>.<kind>`; the stream takes
    /// `<prefix>.teams.>`.
    pub subject_prefix: String,
    /// When stored messages go away.
    pub retention: Retention,
    /// What a full stream does.
    pub discard: Discard,
    /// Largest size of the stream; `None` for no limit.
    pub max_bytes: Option<u64>,
    /// Oldest message kept; `None` for no limit.
    pub max_age: Option<Duration>,
    /// How long JetStream remembers a message id to drop a retried publish.
    pub duplicate_window: Duration,
}

impl Default for StreamSettings {
    fn default() -> Self {
        StreamSettings {
            name: "SWITCHBOARD".into(),
            subject_prefix: "switchboard".into(),
            retention: Retention::Limits,
            discard: Discard::Old,
            max_bytes: Some(1 << 30),
            max_age: Some(Duration::from_secs(7 * 24 * 3600)),
            duplicate_window: Duration::from_secs(120),
        }
    }
}

impl StreamSettings {
    /// The stream's subject filter.
    pub fn subjects(&self) -> String {
        format!("{}.teams.>", self.subject_prefix)
    }
}

/// JetStream's retention policies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retention {
    /// Kept until a limit (size, age) removes them: a log any number of
    /// consumers read.
    Limits,
    /// Kept while some consumer has not acknowledged them.
    Interest,
    /// Removed once one consumer acknowledges them.
    WorkQueue,
}

/// What JetStream does with a publish to a full stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Discard {
    /// Drops the oldest messages to make room.
    Old,
    /// Refuses the publish: the publisher retries it, so the buffer fills
    /// and team sockets stop reading until there is room.
    New,
}

/// The names both policies read from the command line.
macro_rules! named {
    ($ty:ty, $($name:literal => $value:expr),+) => {
        impl FromStr for $ty {
            type Err = String;
            fn from_str(text: &str) -> Result<Self, String> {
                match text {
                    $($name => Ok($value),)+
                    other => Err(format!(
                        "{other:?} is not one of: {}",
                        [$($name),+].join(", ")
                    )),
                }
            }
        }
        impl $ty {
            /// The name used on the command line.
            pub fn name(self) -> &'static str {
                $(if self == $value { return $name; })+
                unreachable!("every variant is named")
            }
        }
    };
}

named!(Retention, "limits" => Retention::Limits, "interest" => Retention::Interest,
       "workqueue" => Retention::WorkQueue);
named!(Discard, "old" => Discard::Old, "new" => Discard::New);

/// A configuration the publisher cannot use.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PublishConfigError {
    /// The NATS URL does not parse.
    #[error("NATS URL {0:?}: {1}")]
    Url(String, String),
    /// A size, count or duration that must not be zero.
    #[error("the publish {0} must be above zero")]
    Zero(&'static str),
    /// A stream name NATS refuses.
    #[error("stream name {0:?}: use letters, digits, - and _ (no dots, spaces or wildcards)")]
    StreamName(String),
    /// A subject prefix that is not plain subject tokens.
    #[error("subject prefix {0:?}: use dot-separated tokens without spaces or wildcards")]
    Prefix(String),
    /// JetStream refuses a duplicate window longer than the stream's max age.
    #[error("the duplicate window must not exceed the stream's max age")]
    WindowAboveAge,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_valid_and_bad_input_is_named() {
        let config = PublishConfig::new("nats://127.0.0.1:4222");
        assert_eq!(config.validate(), Ok(()));
        assert_eq!(config.stream.subjects(), "switchboard.teams.>");
        let with = |f: fn(&mut PublishConfig)| {
            let mut c = config.clone();
            f(&mut c);
            c.validate()
        };
        assert!(matches!(
            with(|c| c.url = "127.0.0.1:4222".into()),
            Err(PublishConfigError::Url(..))
        ));
        assert!(matches!(
            with(|c| c.stream.name = "a.b".into()),
            Err(PublishConfigError::StreamName(_))
        ));
        assert!(matches!(
            with(|c| c.stream.subject_prefix = "a..b".into()),
            Err(PublishConfigError::Prefix(_))
        ));
        assert_eq!(
            with(|c| c.stream.max_age = Some(Duration::from_secs(1))),
            Err(PublishConfigError::WindowAboveAge)
        );
        assert_eq!("workqueue".parse(), Ok(Retention::WorkQueue));
        assert_eq!(Discard::New.name(), "new");
        assert!("sometimes".parse::<Discard>().is_err());
    }
}
