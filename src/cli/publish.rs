//! `--publish`: the flags that start a NATS JetStream publisher beside the
//! client, and its closing line. Defaults come from
//! [`PublishConfig::new`] and [`StreamSettings::default`], once.

use std::process::ExitCode;
use std::time::Duration;

use crate::http::HttpServer;
use crate::publish::{Discard, PublishConfig, PublishStats, Publisher, Retention, StreamSettings};
use crate::runtime::RunConfig;
use clap::Args;
use tracing::info;

use super::{
    byte_size, byte_size_or_zero, duration, duration_or_zero, heading, human, span_or_zero,
    usage_error,
};

fn defaults() -> PublishConfig {
    PublishConfig::new(String::new())
}

/// Publishing to NATS JetStream.
#[derive(Args, Debug, Clone)]
pub struct PublishArgs {
    /// Publish every team message and lifecycle event to NATS JetStream at
    /// this URL (e.g. nats://127.0.0.1:4222) [default: off].
    #[arg(long, help_heading = heading::PUBLISHING, env = "SWITCHBOARD_PUBLISH", value_name = "URL")]
    publish: Option<String>,
    /// Bytes of message text held until JetStream acknowledges it
    /// (suffixes KiB, MiB, GiB); when spent, team sockets stop reading.
    #[arg(long, help_heading = heading::PUBLISHING, env = "SWITCHBOARD_PUBLISH_BUFFER", value_parser = byte_size,
          default_value_t = defaults().buffer_bytes, requires = "publish")]
    publish_buffer: usize,
    /// The JetStream stream, created or updated at start.
    #[arg(long, help_heading = heading::PUBLISHING, env = "SWITCHBOARD_PUBLISH_STREAM",
          default_value_t = StreamSettings::default().name, requires = "publish")]
    publish_stream: String,
    /// Subjects are PREFIX.teams.<team_id>.<message|joined|connected|dropped|left|stopped>.
    #[arg(long, help_heading = heading::PUBLISHING, env = "SWITCHBOARD_PUBLISH_SUBJECT_PREFIX", value_name = "PREFIX",
          default_value_t = StreamSettings::default().subject_prefix, requires = "publish")]
    publish_subject_prefix: String,
    /// The stream's retention: limits, interest or workqueue.
    #[arg(long, help_heading = heading::PUBLISHING, env = "SWITCHBOARD_PUBLISH_RETENTION",
          default_value = StreamSettings::default().retention.name(), requires = "publish")]
    publish_retention: Retention,
    /// What a full stream does: old (drop the oldest) or new (refuse, so
    /// the buffer fills and sockets pause until there is room).
    #[arg(long, help_heading = heading::PUBLISHING, env = "SWITCHBOARD_PUBLISH_DISCARD",
          default_value = StreamSettings::default().discard.name(), requires = "publish")]
    publish_discard: Discard,
    /// Largest stream size (suffixes KiB, MiB, GiB; 0: no limit).
    #[arg(long, help_heading = heading::PUBLISHING, env = "SWITCHBOARD_PUBLISH_MAX_BYTES", value_parser = byte_size_or_zero,
          default_value_t = StreamSettings::default().max_bytes.unwrap_or(0) as usize,
          requires = "publish")]
    publish_max_bytes: usize,
    /// Oldest record kept in the stream (0s: no limit).
    #[arg(long, help_heading = heading::PUBLISHING, env = "SWITCHBOARD_PUBLISH_MAX_AGE", value_parser = span_or_zero,
          default_value_t = human(StreamSettings::default().max_age.unwrap_or_default()),
          requires = "publish")]
    publish_max_age: humantime::Duration,
    /// How long JetStream remembers a message id to drop a retried publish.
    #[arg(long, help_heading = heading::PUBLISHING, env = "SWITCHBOARD_PUBLISH_DUPLICATE_WINDOW", value_parser = duration,
          default_value_t = human(StreamSettings::default().duplicate_window),
          requires = "publish")]
    publish_duplicate_window: humantime::Duration,
    /// Longest wait for JetStream to acknowledge a publish before it is
    /// retried (with the same message id).
    #[arg(long, help_heading = heading::PUBLISHING, env = "SWITCHBOARD_PUBLISH_ACK_TIMEOUT", value_parser = duration,
          default_value_t = human(defaults().ack_timeout), requires = "publish")]
    publish_ack_timeout: humantime::Duration,
    /// At the end of a run, how long to keep publishing what is left.
    #[arg(long, help_heading = heading::PUBLISHING, env = "SWITCHBOARD_PUBLISH_DRAIN_TIMEOUT", value_parser = duration_or_zero,
          default_value_t = human(defaults().drain_timeout), requires = "publish")]
    publish_drain_timeout: humantime::Duration,
}

impl PublishArgs {
    /// The publisher's configuration, if `--publish` asks for one.
    pub fn config(&self) -> Result<Option<PublishConfig>, ExitCode> {
        let Some(url) = &self.publish else {
            return Ok(None);
        };
        let limit = |d: Duration| (!d.is_zero()).then_some(d);
        let config = PublishConfig {
            buffer_bytes: self.publish_buffer,
            stream: StreamSettings {
                name: self.publish_stream.clone(),
                subject_prefix: self.publish_subject_prefix.clone(),
                retention: self.publish_retention,
                discard: self.publish_discard,
                max_bytes: (self.publish_max_bytes > 0).then_some(self.publish_max_bytes as u64),
                max_age: limit(self.publish_max_age.into()),
                duplicate_window: self.publish_duplicate_window.into(),
            },
            ack_timeout: self.publish_ack_timeout.into(),
            drain_timeout: self.publish_drain_timeout.into(),
            ..PublishConfig::new(url.clone())
        };
        config.validate().map_err(usage_error)?;
        Ok(Some(config))
    }

    /// Whether `--publish` was given.
    pub fn requested(&self) -> bool {
        self.publish.is_some()
    }

    /// Starts the publisher, if asked for, and hands it `config`'s tap (and
    /// `http`'s `/metrics`, if serving). Must be called with the tokio
    /// runtime the run uses; a NATS that is not up yet is waited for.
    pub fn start(
        &self,
        runtime: &tokio::runtime::Runtime,
        config: &mut RunConfig,
        http: Option<&HttpServer>,
    ) -> Result<Option<Publishing>, ExitCode> {
        let publishing = self.begin(runtime)?;
        if let Some(publishing) = &publishing {
            config.tap = publishing.publisher.tap();
            if let Some(http) = http {
                http.watch_publisher(publishing.publisher.watch());
            }
        }
        Ok(publishing)
    }

    /// Starts the publisher, if asked for, without handing its tap to
    /// anything ([`Publishing::tap`]): a cluster worker's sockets take it.
    pub fn begin(&self, runtime: &tokio::runtime::Runtime) -> Result<Option<Publishing>, ExitCode> {
        let Some(publish) = self.config()? else {
            return Ok(None);
        };
        let publisher = runtime
            .block_on(Publisher::start(&publish))
            .map_err(|e| usage_error(format!("--publish {}: {e}", publish.url)))?;
        info!(url = %crate::redact::Redacted(&publish.url), stream = %publish.stream.name,
              subjects = %publish.stream.subjects(), run = publisher.run_id(),
              "publishing to NATS JetStream");
        Ok(Some(Publishing {
            publisher,
            drain: publish.drain_timeout,
        }))
    }
}

/// A publisher running beside the client.
pub struct Publishing {
    publisher: Publisher,
    drain: Duration,
}

impl Publishing {
    /// The tap its records come from, for the sockets.
    pub fn tap(&self) -> Option<crate::tap::Tap> {
        self.publisher.tap()
    }

    /// Its numbers, for `/metrics`.
    pub fn watch(&self) -> crate::publish::PublishWatch {
        self.publisher.watch()
    }

    /// After the run: drains what is left (within the drain timeout), says
    /// what was published on stderr, and fails the exit if any record never
    /// reached NATS.
    pub fn finish(self, runtime: &tokio::runtime::Runtime) -> Result<PublishStats, ExitCode> {
        let stats = runtime.block_on(self.publisher.finish(self.drain));
        eprintln!("{}", line(&stats));
        if stats.waiting > 0 {
            eprintln!(
                "error: {} records never reached NATS within --publish-drain-timeout",
                stats.waiting
            );
            return Err(ExitCode::FAILURE);
        }
        Ok(stats)
    }
}

/// The closing line.
fn line(s: &PublishStats) -> String {
    format!(
        "publish: {} messages and {} team events taken; {} stored, {} duplicates dropped \
         by JetStream, {} found already stored, {} failed attempts retried, {} unacknowledged; \
         buffer peak {} of {} bytes",
        s.messages_taken,
        s.events_taken,
        s.stored,
        s.duplicates,
        s.found_stored,
        s.failed_attempts,
        s.waiting,
        s.buffer_peak,
        s.buffer_budget
    )
}
