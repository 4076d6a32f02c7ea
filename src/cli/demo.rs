//! `switchboard demo` (the default): the simulator on an ephemeral loopback
//! port, the client against it, live progress, and the simulator's verdict.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;
use switchboard::Config;
use switchboard::sim::{ProgressHandle, SimServer};

use super::client::{ClientArgs, run_client};
use super::logging::{self, Audience, LogFormat, Progress};
use super::sim::SimArgs;

/// The demo's flags: a scenario and the client's tunables.
#[derive(Args, Debug, Clone)]
pub struct DemoArgs {
    #[command(flatten)]
    sim: SimArgs,
    #[command(flatten)]
    client: ClientArgs,
}

/// The live progress of the demo: a line rewritten in place on a terminal,
/// plain lines otherwise.
struct DemoProgress {
    sim: ProgressHandle,
    display: Progress,
    started: Instant,
    last: Instant,
}

impl DemoProgress {
    fn tick(&mut self, core: &switchboard::Core) {
        let now = Instant::now();
        if now.duration_since(self.last) < self.display.every() {
            return;
        }
        self.last = now;
        let c = core.summary();
        let s = self.sim.progress();
        self.display.show(format!(
            "[{:>5.1}s] client: {}/{} teams connected, {} messages counted, {} reconnects | simulator: {} written, {} faults injected",
            now.duration_since(self.started).as_secs_f64(),
            c.connected,
            c.teams,
            c.messages,
            c.reconnects,
            s.messages,
            s.faults,
        ));
    }
}

/// Runs the demo.
pub fn run(args: &DemoArgs, format: LogFormat) -> ExitCode {
    let display = logging::init(format, Audience::Demo);
    let runtime = match super::tokio_runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    let listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let server = match runtime.block_on(SimServer::start(args.sim.config(listen))) {
        Ok(server) => server,
        Err(error) => {
            eprintln!("error: cannot start the simulator: {error}");
            return ExitCode::FAILURE;
        }
    };
    let mut config = match args.client.run_config(server.global_url(), Config::demo()) {
        Ok(config) => config,
        Err(code) => return code,
    };
    // The simulator starts fresh every time: no state file unless asked.
    let mut persistence =
        match args
            .client
            .persistence(&server.global_url(), config.core.max_teams, false)
        {
            Ok(persistence) => persistence,
            Err(code) => return code,
        };
    eprintln!(
        "demo: simulator on {} with {} teams, chaos level {}; the client connects to it",
        server.global_url(),
        args.sim.teams,
        args.sim.chaos
    );
    config.seed = args.client.seed.unwrap_or(args.sim.sim_seed);
    let mut recorder = match args.client.recorder(&config) {
        Ok(recorder) => recorder,
        Err(code) => return code,
    };
    let mut progress = DemoProgress {
        sim: server.progress_handle(),
        display,
        started: Instant::now(),
        last: Instant::now() - Duration::from_secs(60),
    };
    let verdict = runtime.spawn(server.verdict());
    let mut show = |core: &switchboard::Core| progress.tick(core);
    let mut sidecars: Vec<&mut dyn switchboard::runtime::Sidecar> = vec![&mut show];
    if let Some(persistence) = persistence.as_mut() {
        sidecars.push(persistence);
    }
    if let Some(recorder) = recorder.as_mut() {
        sidecars.push(recorder);
    }
    let outcome = run_client(config, args.client.report, &runtime, &mut sidecars);
    progress.display.finish();
    let verdict = match runtime.block_on(verdict) {
        Ok(verdict) => verdict,
        Err(error) => {
            eprintln!("error: simulator failed: {error}");
            return ExitCode::FAILURE;
        }
    };
    println!("{verdict}");
    match outcome {
        Ok(_) if verdict.verified => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(code) => code,
    }
}
