//! The broker side: the three things the publisher asks of JetStream
//! (make sure the stream exists, publish one record and wait for its
//! acknowledgement, tell which record a subject last stored), as a trait so
//! the publisher's loop can be tested against a scripted broker, and its
//! implementation on `async-nats`.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, context, stream};

use super::config::{Discard, PublishConfig, Retention, StreamSettings};
use super::record::Encoded;

/// How JetStream acknowledged a publish.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ack {
    /// Stored now.
    New,
    /// Its message id was seen within the duplicate window: an earlier
    /// attempt was stored, this one was dropped.
    Duplicate,
}

/// Why a broker request failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BrokerError {
    /// Nothing listens on the subject: the stream is gone, or JetStream is
    /// not up yet. Nothing was stored.
    #[error("no stream takes the subject (JetStream down or the stream missing)")]
    NoStream,
    /// JetStream answered no (a full stream that discards new messages, a
    /// message over its size limit, a config it refuses). Nothing was stored.
    #[error("refused: {0}")]
    Refused(String),
    /// No usable answer (timeout, lost connection): the record may or may
    /// not have been stored.
    #[error("{0}")]
    NoAnswer(String),
}

/// What the publisher needs from a broker.
pub trait Broker: Clone + Send + Sync + 'static {
    /// Creates the stream, or updates it to the configured settings.
    fn ensure_stream(&self) -> impl Future<Output = Result<(), BrokerError>> + Send;

    /// Publishes one record and waits for its acknowledgement.
    fn publish(&self, record: Encoded) -> impl Future<Output = Result<Ack, BrokerError>> + Send;

    /// The message id of the last record stored on `subject`, if any.
    fn last_id(
        &self,
        subject: String,
    ) -> impl Future<Output = Result<Option<String>, BrokerError>> + Send;
}

/// JetStream through `async-nats`: one connection, which reconnects by
/// itself for as long as the process runs.
#[derive(Clone, Debug)]
pub struct JetStream {
    context: jetstream::Context,
    settings: Arc<StreamSettings>,
}

impl JetStream {
    /// Starts connecting; returns at once (the connection is made, and
    /// remade, in the background, so a NATS that is not up yet is waited
    /// for, not an error).
    pub async fn connect(config: &PublishConfig) -> Result<JetStream, BrokerError> {
        let client = async_nats::ConnectOptions::new()
            .name("switchboard")
            .retry_on_initial_connect()
            .max_reconnects(None)
            .reconnect_delay_callback(reconnect_delay)
            .connect(config.url.as_str())
            .await
            .map_err(|e| BrokerError::NoAnswer(e.to_string()))?;
        let context = context::ContextBuilder::new()
            .timeout(config.ack_timeout)
            .max_ack_inflight(config.max_in_flight)
            .backpressure_on_inflight(true)
            .build(client);
        Ok(JetStream {
            context,
            settings: Arc::new(config.stream.clone()),
        })
    }

    /// The stream's configuration as JetStream takes it.
    fn stream_config(&self) -> stream::Config {
        let s = &self.settings;
        stream::Config {
            name: s.name.clone(),
            subjects: vec![s.subjects()],
            retention: match s.retention {
                Retention::Limits => stream::RetentionPolicy::Limits,
                Retention::Interest => stream::RetentionPolicy::Interest,
                Retention::WorkQueue => stream::RetentionPolicy::WorkQueue,
            },
            discard: match s.discard {
                Discard::Old => stream::DiscardPolicy::Old,
                Discard::New => stream::DiscardPolicy::New,
            },
            max_bytes: s
                .max_bytes
                .map_or(-1, |b| i64::try_from(b).unwrap_or(i64::MAX)),
            max_age: s.max_age.unwrap_or(Duration::ZERO),
            max_messages: -1,
            max_messages_per_subject: -1,
            max_message_size: -1,
            max_consumers: -1,
            duplicate_window: s.duplicate_window,
            storage: stream::StorageType::File,
            num_replicas: 1,
            ..Default::default()
        }
    }
}

/// Reconnect attempts: at once, then doubling from 50ms up to 1s, so a
/// NATS that comes back is found quickly without hammering one that does not.
fn reconnect_delay(attempts: usize) -> Duration {
    let doublings = u32::try_from(attempts.saturating_sub(2)).unwrap_or(u32::MAX);
    if attempts <= 1 {
        return Duration::ZERO;
    }
    Duration::from_millis(50)
        .saturating_mul(2u32.saturating_pow(doublings.min(10)))
        .min(Duration::from_secs(1))
}

impl Broker for JetStream {
    async fn ensure_stream(&self) -> Result<(), BrokerError> {
        use context::CreateStreamErrorKind as K;
        match self
            .context
            .create_or_update_stream(self.stream_config())
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => Err(match e.kind() {
                K::JetStream(_) | K::InvalidStreamName | K::EmptyStreamName => {
                    BrokerError::Refused(e.to_string())
                }
                K::JetStreamUnavailable => BrokerError::NoStream,
                _ => BrokerError::NoAnswer(e.to_string()),
            }),
        }
    }

    async fn publish(&self, record: Encoded) -> Result<Ack, BrokerError> {
        let message = jetstream::message::PublishMessage::build()
            .payload(record.payload)
            .message_id(&record.msg_id);
        let ack = self
            .context
            .send_publish(record.subject, message)
            .await
            .map_err(publish_error)?
            .await
            .map_err(publish_error)?;
        Ok(if ack.duplicate {
            Ack::Duplicate
        } else {
            Ack::New
        })
    }

    async fn last_id(&self, subject: String) -> Result<Option<String>, BrokerError> {
        use stream::LastRawMessageErrorKind as K;
        let stream = self
            .context
            .get_stream_no_info(&self.settings.name)
            .await
            .map_err(|e| BrokerError::Refused(e.to_string()))?;
        match stream.get_last_raw_message_by_subject(&subject).await {
            Ok(message) => Ok(message
                .headers
                .get(async_nats::header::NATS_MESSAGE_ID)
                .map(|id| id.as_str().to_owned())),
            Err(e) if e.kind() == K::NoMessageFound => Ok(None),
            Err(e) => Err(BrokerError::NoAnswer(e.to_string())),
        }
    }
}

fn publish_error(error: context::PublishError) -> BrokerError {
    use context::PublishErrorKind as K;
    match error.kind() {
        K::StreamNotFound => BrokerError::NoStream,
        K::MaxPayloadExceeded | K::WrongLastMessageId | K::WrongLastSequence => {
            BrokerError::Refused(error.to_string())
        }
        // A JetStream refusal also arrives as `Other`, but so do answers
        // that could not be read: assume the worst (it may be stored).
        K::TimedOut | K::BrokenPipe | K::MaxAckPending | K::Other => {
            BrokerError::NoAnswer(error.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnects_start_at_once_and_level_off_at_a_second() {
        let ms: Vec<u128> = (1..=8).map(|a| reconnect_delay(a).as_millis()).collect();
        assert_eq!(ms, [0, 50, 100, 200, 400, 800, 1000, 1000]);
    }
}
