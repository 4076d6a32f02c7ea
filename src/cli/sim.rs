//! `switchboard sim`: the simulated Global API on its own, and the scenario
//! flags it shares with the demo.

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use switchboard::sim::{Chaos, Fault, Scenario, Schedule, SimConfig, SimServer};
use tracing::info;

use super::{duration, human};

/// `switchboard sim`.
#[derive(Args, Debug)]
pub struct SimCommand {
    /// Address to listen on.
    #[arg(long, env = "SWITCHBOARD_LISTEN", default_value = "127.0.0.1:8080")]
    listen: std::net::SocketAddr,
    #[command(flatten)]
    sim: SimArgs,
}

/// The help line of `--fault`: the names come from the fault enum.
fn fault_help() -> String {
    let names: Vec<&str> = Fault::ALL.iter().map(|f| f.name()).collect();
    format!(
        "Set one fault's rate, e.g. --fault zombie=2 (per second; for connect-error and \
         delayed-hello a probability). Repeatable. Faults: {}",
        names.join(", ")
    )
}

/// The simulated run.
#[derive(Args, Debug, Clone)]
pub struct SimArgs {
    /// Teams that join.
    #[arg(long, default_value_t = Scenario::default().teams)]
    pub teams: u64,
    /// Messages each team receives.
    #[arg(long, default_value_t = Scenario::default().messages)]
    messages: u64,
    /// Messages per second per team.
    #[arg(long, default_value_t = Scenario::default().rate)]
    rate: f64,
    /// Fraction of messages containing "props".
    #[arg(long, default_value_t = Scenario::default().props_fraction)]
    props: f64,
    /// Joins are spread over this long.
    #[arg(long, value_parser = duration, default_value_t = human(Scenario::default().join_over))]
    join_over: humantime::Duration,
    /// How often the simulator asks for a healthcheck.
    #[arg(long, value_parser = duration,
          default_value_t = human(Scenario::default().healthcheck_every))]
    healthcheck_every: humantime::Duration,
    /// Fraction of teams that leave during the run (half of them rejoin).
    #[arg(long, default_value_t = Scenario::default().leave_fraction)]
    leave: f64,
    /// Chaos level: 0 turns faults off, 1 is the default mix, 2 doubles it.
    #[arg(long, default_value_t = 1.0)]
    pub chaos: f64,
    #[arg(long = "fault", value_parser = fault_rate, help = fault_help())]
    faults: Vec<(Fault, f64)>,
    /// Give up the run after this long.
    #[arg(long, value_parser = duration, default_value_t = human(Scenario::default().max_duration))]
    max_duration: humantime::Duration,
    /// Seed for the simulator's decisions (and the client's jitter in the demo).
    #[arg(long, default_value_t = 1)]
    pub sim_seed: u64,
}

impl SimArgs {
    /// The simulator's configuration, listening on `listen`.
    pub fn config(&self, listen: std::net::SocketAddr) -> SimConfig {
        let mut chaos = Chaos::level(self.chaos);
        for &(fault, rate) in &self.faults {
            chaos.0.insert(fault, rate);
        }
        SimConfig {
            listen,
            scenario: Scenario {
                teams: self.teams,
                messages: self.messages,
                rate: self.rate,
                props_fraction: self.props,
                join_over: self.join_over.into(),
                healthcheck_every: self.healthcheck_every.into(),
                leave_fraction: self.leave,
                max_duration: self.max_duration.into(),
                ..Scenario::default()
            },
            chaos,
            schedule: Schedule::none(),
            seed: self.sim_seed,
        }
    }
}

fn fault_rate(text: &str) -> Result<(Fault, f64), String> {
    let (name, rate) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?}: expected NAME=RATE, e.g. zombie=0.5"))?;
    let fault = Fault::ALL
        .into_iter()
        .find(|f| f.name() == name)
        .ok_or_else(|| format!("unknown fault {name:?}"))?;
    let rate: f64 = rate
        .parse()
        .map_err(|_| format!("{rate:?} is not a number"))?;
    if !rate.is_finite() || rate < 0.0 {
        return Err("a rate is a non-negative number".into());
    }
    Ok((fault, rate))
}

/// `switchboard sim`: serve one scenario, print the verdict.
pub fn run(command: &SimCommand) -> ExitCode {
    let runtime = match super::tokio_runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    let listen = command.listen;
    let config = command.sim.config(listen);
    runtime.block_on(async {
        let server = match SimServer::start(config).await {
            Ok(server) => server,
            Err(error) => {
                eprintln!("error: cannot listen on {listen}: {error}");
                return ExitCode::FAILURE;
            }
        };
        println!("simulator listening: {}", server.global_url());
        let progress = server.progress_handle();
        let ticker = tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(2));
            loop {
                every.tick().await;
                let p = progress.progress();
                if p.started {
                    info!(
                        teams = p.teams,
                        connected = p.connected,
                        messages = p.messages,
                        faults = p.faults,
                        healthchecks = p.healthchecks,
                        "simulator"
                    );
                }
            }
        });
        let verdict = server.verdict().await;
        ticker.abort();
        println!("{verdict}");
        if verdict.verified {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_rates_parse_by_name() {
        assert_eq!(fault_rate("zombie=0.5"), Ok((Fault::Zombie, 0.5)));
        assert!(fault_rate("zombie").is_err());
        assert!(fault_rate("gremlins=1").is_err());
        assert!(fault_rate("zombie=-1").is_err());
        assert!(fault_rate("zombie=NaN").is_err());
    }

    #[test]
    fn every_fault_is_named_in_the_help() {
        let help = fault_help();
        for fault in Fault::ALL {
            assert!(help.contains(fault.name()), "{}", fault.name());
        }
    }
}
