//! A bot worker fed by `switchboard connect --publish`: a JetStream pull
//! consumer in a shared durable consumer, so any number of copies, on any
//! machines, split the stream between them. Each record is acknowledged
//! only after it was processed: a worker that dies mid-batch leaves its
//! unacknowledged records to be redelivered (after `--ack-wait`) to the
//! others, and a restarted worker carries on where the group left off.
//!
//! ```text
//! nats-server -js                                           # 1. NATS
//! switchboard connect wss://global.example --publish nats://127.0.0.1:4222   # 2.
//! cargo run --release --example worker -- --name a &        # 3. two workers
//! cargo run --release --example worker -- --name b
//! ```
//!
//! Here the bot logic is a tally of messages and words per team, printed
//! every few seconds; put yours in [`Worker::process`]. Records of one team
//! may be processed by different workers, so a worker must not assume it
//! sees a team's every message; the payload's per-team `seq` orders them.
//! (For strict per-team order, give each worker a share of the teams with
//! `--filter 'switchboard.teams.<id>.>'` and its own durable name.)

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer};
use clap::Parser;
use futures_util::StreamExt;
use serde_json::Value;

#[derive(Parser, Debug)]
#[command(
    about = "A switchboard worker: consumes the JetStream stream in a shared durable consumer"
)]
struct Args {
    /// The NATS server.
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    nats: String,
    /// The stream switchboard publishes to.
    #[arg(long, default_value = "SWITCHBOARD")]
    stream: String,
    /// The durable consumer every copy shares (one group of workers).
    #[arg(long, default_value = "workers")]
    durable: String,
    /// Which subjects the group takes.
    #[arg(long, default_value = "switchboard.teams.>")]
    filter: String,
    /// This worker's name, for its lines.
    #[arg(long, default_value = "worker")]
    name: String,
    /// Records fetched per pull.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// How long a delivered record may stay unacknowledged before NATS
    /// gives it to another worker.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    ack_wait: Duration,
    /// Exit after this long with nothing to do, printing the tally as JSON
    /// (default: run until killed).
    #[arg(long, value_parser = humantime::parse_duration)]
    exit_when_idle: Option<Duration>,
    /// On exit, also list the message ids (`Nats-Msg-Id`) it processed, so
    /// a check can tell a doubled record from a missed one.
    #[arg(long)]
    report_ids: bool,
}

/// What this worker has seen.
#[derive(Default)]
struct Worker {
    messages: u64,
    per_team: BTreeMap<u64, u64>,
    words: u64,
    events: BTreeMap<String, u64>,
    /// Message ids processed, kept only with `--report-ids`.
    ids: Option<Vec<String>>,
}

impl Worker {
    /// The bot logic, for one record.
    fn process(&mut self, subject: &str, payload: &Value) {
        let team = payload["team_id"].as_u64().unwrap_or(0);
        if subject.ends_with(".message") {
            self.messages += 1;
            *self.per_team.entry(team).or_default() += 1;
            let text = payload["text"].as_str().unwrap_or_default();
            self.words += text.split_whitespace().count() as u64;
        } else {
            let event = payload["event"].as_str().unwrap_or("?").to_owned();
            *self.events.entry(event).or_default() += 1;
        }
    }

    fn line(&self, name: &str) -> String {
        format!(
            "{name}: {} messages from {} teams, {} words; lifecycle {:?}",
            self.messages,
            self.per_team.len(),
            self.words,
            self.events
        )
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let args = Args::parse();
    let client = async_nats::ConnectOptions::new()
        .name(format!("switchboard-worker-{}", args.name))
        .retry_on_initial_connect()
        .connect(args.nats.as_str())
        .await?;
    let js = jetstream::new(client);
    let stream = js.get_stream(&args.stream).await?;
    let consumer = stream
        .get_or_create_consumer(
            &args.durable,
            consumer::pull::Config {
                durable_name: Some(args.durable.clone()),
                filter_subject: args.filter.clone(),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: args.ack_wait,
                ..Default::default()
            },
        )
        .await?;
    let mut worker = Worker {
        ids: args.report_ids.then(Vec::new),
        ..Worker::default()
    };
    let mut idle_since = Instant::now();
    let mut last_line = Instant::now();
    loop {
        let mut batch = consumer
            .fetch()
            .max_messages(args.batch)
            .expires(Duration::from_millis(500))
            .messages()
            .await?;
        let mut got = 0;
        while let Some(message) = batch.next().await {
            let message = message?;
            let payload: Value = serde_json::from_slice(&message.payload).unwrap_or(Value::Null);
            worker.process(message.subject.as_str(), &payload);
            if let Some(ids) = worker.ids.as_mut() {
                let id = message
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
                    .map(|v| v.as_str().to_owned())
                    .unwrap_or_default();
                ids.push(id);
            }
            // Acknowledged only once processed: a crash before this line
            // means redelivery, never loss.
            message.double_ack().await?;
            got += 1;
        }
        if got > 0 {
            idle_since = Instant::now();
        }
        if last_line.elapsed() >= Duration::from_secs(5) {
            eprintln!("{}", worker.line(&args.name));
            last_line = Instant::now();
        }
        if args
            .exit_when_idle
            .is_some_and(|idle| idle_since.elapsed() >= idle)
        {
            eprintln!("{}", worker.line(&args.name));
            let per_team: BTreeMap<String, u64> = worker
                .per_team
                .iter()
                .map(|(team, n)| (team.to_string(), *n))
                .collect();
            println!(
                "{}",
                serde_json::json!({
                    "worker": args.name,
                    "messages": worker.messages,
                    "per_team": per_team,
                    "events": worker.events,
                    "ids": worker.ids,
                })
            );
            return Ok(());
        }
    }
}
