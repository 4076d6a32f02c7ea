//! Bot logic in-process, no broker: run the client with a tap and count the
//! words each team says. The built-in simulator plays the server, so this
//! runs anywhere:
//!
//! ```text
//! cargo run --release --example word_count -- [TEAMS]
//! ```
//!
//! Against a real Global API, build the [`RunConfig`] from its URL instead
//! and drop the simulator. The core decides what happened (the lifecycle
//! events); the tap carries the text, on the I/O side. A slow consumer
//! never loses a message: when it is `BUDGET` bytes behind, team sockets
//! stop reading until it catches up.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use switchboard::Config;
use switchboard::runtime::{self, RunConfig, StopHandle};
use switchboard::sim::{Chaos, Scenario, Schedule, SimConfig, SimServer};
use switchboard::tap::{self, Delivery};
use switchboard::transport::TransportConfig;

/// Bytes of text the counter may fall behind by.
const BUDGET: usize = 1 << 20;

#[derive(Default)]
struct Tally {
    messages: u64,
    words: HashMap<String, u64>,
    events: Vec<String>,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let teams: u64 = match std::env::args().nth(1) {
        Some(n) => n
            .parse()
            .map_err(|_| format!("TEAMS must be a number, not {n:?}"))?,
        None => 5,
    };
    let runtime = tokio::runtime::Runtime::new()?;
    let sim = runtime.block_on(SimServer::start(SimConfig {
        listen: "127.0.0.1:0".parse()?,
        scenario: Scenario {
            teams,
            messages: 50,
            ..Scenario::default()
        },
        chaos: Chaos::none(),
        schedule: Schedule::default(),
        seed: 1,
        tls: false,
    }))?;
    let (tap, mut deliveries) = tap::tap(BUDGET);
    let config = RunConfig {
        core: Config {
            global_url: sim.global_url(),
            ..Config::demo()
        },
        transport: TransportConfig::default(),
        seed: 1,
        status_interval: None,
        give_up_after: Some(Duration::from_secs(30)),
        tap: Some(tap),
    };
    // The bot's own logic: a task on the I/O side, fed by the tap.
    let counter = runtime.spawn(async move {
        let mut tallies: BTreeMap<u64, Tally> = BTreeMap::new();
        while let Some(delivery) = deliveries.recv().await {
            match delivery {
                Delivery::Message(message) => {
                    let tally = tallies.entry(message.team.0).or_default();
                    tally.messages += 1;
                    for word in message.text.split_whitespace() {
                        *tally.words.entry(word.to_lowercase()).or_default() += 1;
                    }
                    // Dropping `message` gives its bytes back to the budget.
                }
                Delivery::Team(event) => {
                    let tally = tallies.entry(event.team.0).or_default();
                    tally.events.push(event.kind.name().to_owned());
                }
            }
        }
        tallies
    });
    let verdict = runtime.spawn(sim.verdict());
    let outcome = runtime::run(
        &config,
        runtime.handle().clone(),
        &StopHandle::new(),
        &mut [],
    )?;
    // The run is over and `config` holds the last tap: let the counter end.
    drop(config);
    let tallies = runtime.block_on(counter)?;
    for (team, tally) in &tallies {
        let mut words: Vec<(&String, &u64)> = tally.words.iter().collect();
        words.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let top: Vec<String> = words
            .iter()
            .take(3)
            .map(|(w, n)| format!("{w} ×{n}"))
            .collect();
        println!(
            "team {team}: {} messages, {} distinct words; top: {}; lifecycle: {}",
            tally.messages,
            tally.words.len(),
            top.join(", "),
            tally.events.join(" → ")
        );
    }
    let counted: u64 = tallies.values().map(|t| t.messages).sum();
    println!(
        "{counted} messages counted by the bot, {} by switchboard; simulator: {}",
        outcome.report.messages,
        runtime.block_on(verdict)?
    );
    Ok(())
}
