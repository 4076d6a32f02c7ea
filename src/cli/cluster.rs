//! The cluster's side of the command line: `connect --cluster` (a core:
//! the leader, or a standby waiting for the lease) and `worker`.

use std::net::IpAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::Args;
use tracing::{error, info, warn};

use super::{duration, human, usage_error};
use crate::cluster::dispatch::LeaderLink;
use crate::cluster::lease::{self, LeaderLease, RenewError};
use crate::cluster::membership::{self, Roster};
use crate::cluster::worker::{self, Leave, WorkerConfig, WorkerEnd};
use crate::cluster::{self, ClusterConfig};
use crate::core::Config;
use crate::runtime::StopHandle;
use crate::transport::TransportConfig;

const HEADING: &str = "Cluster (NATS)";

/// Descriptors a worker keeps for itself (NATS, logs, the runtime) below
/// its open-files limit when it sizes its default capacity.
const DESCRIPTOR_MARGIN: u64 = 64;

fn cluster_name(name: &str) -> Result<String, String> {
    if cluster::valid_name(name) {
        Ok(name.to_owned())
    } else {
        Err("letters, digits, '-' and '_' only, 1 to 64 of them".into())
    }
}

/// One NATS URL, or several separated by commas (the servers of a NATS
/// cluster: the first that answers is used, the others on a reconnect).
fn nats_url(url: &str) -> Result<String, String> {
    if url
        .split(',')
        .all(|u| u.trim().starts_with("nats://") || u.trim().starts_with("tls://"))
    {
        Ok(url.to_owned())
    } else {
        Err("expected nats://HOST:PORT[,nats://HOST:PORT…]".into())
    }
}

/// Where the cluster is, for both roles.
#[derive(Args, Debug, Clone)]
pub struct Where {
    /// Name of the cluster: prefixes its NATS subjects and KV buckets, so
    /// that several fleets can share one NATS.
    #[arg(long, env = "SWITCHBOARD_CLUSTER_NAME", value_parser = cluster_name,
          default_value = cluster::DEFAULT_NAME, help_heading = HEADING)]
    cluster_name: String,
    /// Length of a lease (the leader's and each worker's), set by the
    /// first process to create the cluster's buckets; the others read it
    /// back. A worker fences itself after half of it.
    #[arg(long, env = "SWITCHBOARD_LEASE", value_parser = duration,
          default_value_t = human(cluster::DEFAULT_LEASE), help_heading = HEADING)]
    lease: humantime::Duration,
}

impl Where {
    fn config(&self, url: String) -> ClusterConfig {
        ClusterConfig {
            url,
            name: self.cluster_name.clone(),
            lease: *self.lease,
        }
    }
}

/// `connect`'s cluster flags.
#[derive(Args, Debug, Clone)]
pub struct ClusterArgs {
    /// Run as one core of a cluster whose team sockets live on `switchboard
    /// worker`s: lead when the leader lease is free, else wait as a standby.
    /// With --publish, the leader publishes the teams' lifecycle events and
    /// each worker (given --publish too) its own teams' messages.
    #[arg(long, env = "SWITCHBOARD_CLUSTER", value_parser = nats_url,
          value_name = "NATS_URL", help_heading = HEADING)]
    cluster: Option<String>,
    #[command(flatten)]
    place: Where,
    /// Teams moved a second onto a worker that joins (each closed on its
    /// worker and reopened on the new one); 0: a worker that joins takes
    /// only new sockets.
    #[arg(long, env = "SWITCHBOARD_MOVE_RATE", value_name = "TEAMS_PER_SECOND",
          default_value_t = cluster::DEFAULT_MOVE_RATE, help_heading = HEADING)]
    move_rate: u32,
}

/// A core that holds the leader lease: what the driver needs, and how the
/// lease ended.
pub struct Leading {
    /// For the driver.
    pub link: LeaderLink,
    /// For `/metrics` and `/workers`.
    pub watch: cluster::LeaderWatch,
    deposed: Arc<AtomicBool>,
    /// Tells the renewing task how the run ended: the lease is given up,
    /// or (`true`: Global's goodbye) marked ended.
    ended: tokio::sync::oneshot::Sender<bool>,
    renewing: tokio::task::JoinHandle<()>,
}

impl Leading {
    /// The saved teams of `global_url` in the cluster's bucket, and the mirror that keeps
    /// them current from now on.
    pub fn state(
        &self,
        runtime: &tokio::runtime::Runtime,
        global_url: &str,
    ) -> Result<
        (
            Box<dyn crate::persistence::Mirror>,
            Vec<crate::core::SavedTeam>,
        ),
        ExitCode,
    > {
        let store = self.link.buckets.state.clone();
        let saved = runtime
            .block_on(cluster::state::load(&store, global_url))
            .map_err(|e| {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            })?;
        info!(teams = saved.len(), "saved teams in the cluster");
        let mirror = cluster::state::KvState::start(store, runtime.handle(), global_url, &saved);
        Ok((Box::new(mirror), saved))
    }

    /// Whether the lease was lost while leading.
    pub fn deposed(&self) -> bool {
        self.deposed.load(Ordering::SeqCst)
    }

    /// After the run: false (said on stderr) if the lease was lost while
    /// leading. Else, after `goodbye`, marks the run ended in the lease
    /// (the standbys end too; the lease expires); after any other end,
    /// gives it up. Either way the renewing task is told, and waited for.
    pub fn end(self, runtime: &tokio::runtime::Runtime, goodbye: bool) -> bool {
        if self.deposed() {
            eprintln!("error: lost the leader lease; a standby leads now");
            return false;
        }
        // Given up, a standby leads within a tenth of a lease rather than
        // a whole one. Bounded by half a lease; a lease not given up expires.
        let _ = self.ended.send(goodbye);
        let within = self.watch.lease / 2;
        let renewing = self.renewing;
        if runtime
            .block_on(async { tokio::time::timeout(within, renewing).await })
            .is_err()
        {
            warn!("the leader lease was not given up in time: it expires instead");
        }
        true
    }
}

impl ClusterArgs {
    /// Without `--cluster`, `None`. With it, waits (as a standby, for as
    /// long as it takes, until a signal) for the leader lease, then keeps
    /// renewing it; losing it forces `stop` (the run ends at once).
    pub fn lead(
        &self,
        runtime: &tokio::runtime::Runtime,
        stop: &StopHandle,
        standby: &cluster::StandbyWatch,
    ) -> Result<Option<Leading>, ExitCode> {
        let Some(url) = self.cluster.clone() else {
            return Ok(None);
        };
        let config = self.place.config(url);
        let failed = |e: cluster::ClusterError| {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        };
        let (client, js) = runtime
            .block_on(cluster::connect(&config, "core"))
            .map_err(failed)?;
        let (buckets, lease_length) = runtime
            .block_on(lease::buckets(&js, &config))
            .map_err(failed)?;
        let config = ClusterConfig {
            lease: lease_length,
            ..config
        };
        let holder = format!("{}:{}", hostname(), std::process::id());
        let lease = stand_by(runtime, stop, &buckets, &holder, lease_length, standby)?;
        standby.leads();
        info!(epoch = lease.epoch, holder, "leading");
        let roster = Roster::default();
        runtime.spawn(membership::watch(
            buckets.workers.clone(),
            roster.clone(),
            lease_length,
        ));
        let deposed = Arc::new(AtomicBool::new(false));
        let link = LeaderLink {
            config,
            epoch: lease.epoch,
            client,
            buckets,
            roster,
            loads: Default::default(),
            placed: Default::default(),
            move_rate: self.move_rate,
            moves: Default::default(),
            traffic: Default::default(),
        };
        let watch = cluster::LeaderWatch {
            epoch: link.epoch,
            lease: lease_length,
            renewed: Arc::new(std::sync::Mutex::new(Instant::now())),
            loads: link.loads.clone(),
            placed: link.placed.clone(),
            moves: link.moves.clone(),
            traffic: link.traffic.clone(),
            roster: link.roster.clone(),
        };
        let (ended, run_ended) = tokio::sync::oneshot::channel();
        let renewing = runtime.spawn(keep_leading(
            lease,
            watch.clone(),
            stop.clone(),
            deposed.clone(),
            run_ended,
        ));
        Ok(Some(Leading {
            link,
            watch,
            deposed,
            ended,
            renewing,
        }))
    }
}

/// Waits as a standby (announced in the leader's bucket, for `status`;
/// shown on `watch`, for HTTP) until the leader lease is free and taken,
/// polling every tenth of a lease; `Err` (exit 0) when stopped meanwhile.
fn stand_by(
    runtime: &tokio::runtime::Runtime,
    stop: &StopHandle,
    buckets: &lease::Buckets,
    holder: &str,
    lease_length: Duration,
    watch: &cluster::StandbyWatch,
) -> Result<LeaderLease, ExitCode> {
    let standby = lease::standby_key(holder);
    let mut said = false;
    let mut announced: Option<Instant> = None;
    let since = Instant::now();
    watch.waiting(since, None);
    let lease = loop {
        if stop.is_stopped() {
            info!("stopped while standing by");
            return Err(ExitCode::SUCCESS);
        }
        match runtime.block_on(lease::try_lead(&buckets.leader, holder)) {
            Ok(Some(lease)) => break lease,
            Ok(None) => {
                // Seen by `status` for as long as it is renewed.
                if announced.is_none_or(|at| at.elapsed() >= lease_length / 3) {
                    let _ =
                        runtime.block_on(buckets.leader.put(&standby, holder.to_owned().into()));
                    announced = Some(Instant::now());
                    let current = runtime
                        .block_on(lease::current_leader(&buckets.leader))
                        .ok()
                        .flatten();
                    if current.as_ref().is_some_and(|l| l.ended) {
                        info!("the leader's run ended with goodbye: this standby ends too");
                        return Err(ExitCode::SUCCESS);
                    }
                    let leader = current.map(|l| (l.holder, l.epoch));
                    if !said {
                        info!(leader = ?leader.as_ref().map(|l| &l.0), "standby: waiting for the leader lease");
                        said = true;
                    }
                    watch.waiting(since, leader);
                }
            }
            Err(e) => warn!(error = %e, "taking the leader lease"),
        }
        // A tenth of a lease: a standby leads within lease + this of
        // the leader's last renewal.
        std::thread::sleep(lease_length / 10);
    };
    if announced.is_some() {
        let _ = runtime.block_on(buckets.leader.delete(&standby));
    }
    Ok(lease)
}

/// Renews the leader lease every third of a lease, until `run_ended`
/// says the run is over and its state saved: the lease is given up, or
/// after Global's goodbye (`true`) marked ended. Lost (taken,
/// revoked) or unrenewed for half a lease, the run is forced to end: a
/// leader that cannot prove its lease stops commanding before a standby
/// may lead.
async fn keep_leading(
    mut lease: LeaderLease,
    watch: cluster::LeaderWatch,
    stop: StopHandle,
    deposed: Arc<AtomicBool>,
    mut run_ended: tokio::sync::oneshot::Receiver<bool>,
) {
    let length = watch.lease;
    let mut every = tokio::time::interval(length / 3);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_ok = Instant::now();
    loop {
        tokio::select! {
            _ = every.tick() => {}
            goodbye = &mut run_ended => {
                match goodbye {
                    Ok(true) => {
                        lease.end().await;
                        info!("marked the run ended in the leader lease (goodbye): the standbys end too");
                    }
                    Ok(false) => {
                        lease.release().await;
                        info!("gave the leader lease up");
                    }
                    // Dropped without an end (the process is exiting on
                    // an error): the lease expires.
                    Err(_) => {}
                }
                return;
            }
        }
        let now = watch.loads.lock().map(|l| l.clone()).unwrap_or_default();
        match tokio::time::timeout(length / 4, lease.renew(now)).await {
            Ok(Ok(())) => {
                last_ok = Instant::now();
                if let Ok(mut renewed) = watch.renewed.lock() {
                    *renewed = last_ok;
                }
            }
            Ok(Err(RenewError::Lost)) => {
                error!("the leader lease was taken: stopping");
                break;
            }
            Ok(Err(RenewError::Unreachable(e))) => warn!(error = %e, "renewing the leader lease"),
            Err(_) => warn!("renewing the leader lease: no answer"),
        }
        if last_ok.elapsed() > length / 2 {
            error!("the leader lease went unrenewed for half its length: stopping");
            break;
        }
    }
    deposed.store(true, Ordering::SeqCst);
    stop.force();
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".into())
}

/// `switchboard worker`'s flags.
#[derive(Args, Debug, Clone)]
pub struct WorkerArgs {
    /// The cluster's NATS server.
    #[arg(long, env = "SWITCHBOARD_CLUSTER", value_parser = nats_url,
          value_name = "NATS_URL", help_heading = HEADING)]
    cluster: String,
    #[command(flatten)]
    place: Where,
    /// This worker's name, unique among live workers (default: the host
    /// name).
    #[arg(long, env = "SWITCHBOARD_WORKER_NAME", value_parser = cluster_name, help_heading = HEADING)]
    name: Option<String>,
    /// Most team sockets it takes (default: the open-files limit less a
    /// margin).
    #[arg(long, env = "SWITCHBOARD_WORKER_CAPACITY", help_heading = HEADING)]
    capacity: Option<usize>,
    /// Local address its team sockets connect from (one source address
    /// has ~28,000 ports towards one server address).
    #[arg(long, env = "SWITCHBOARD_BIND_IP", help_heading = HEADING)]
    bind_ip: Option<IpAddr>,
    /// How often events are batched to the leader (its tick, by default).
    #[arg(long, env = "SWITCHBOARD_TICK", value_parser = duration,
          default_value_t = human(Config::default().tick), help_heading = HEADING)]
    tick: humantime::Duration,
    /// A socket whose writes cannot drain, or whose message stays
    /// incomplete, this long is dropped (the core's pong timeout).
    #[arg(long, env = "SWITCHBOARD_PONG_TIMEOUT", value_parser = duration,
          default_value_t = human(Config::default().pong_timeout), help_heading = HEADING)]
    pong_timeout: humantime::Duration,
    /// Longest wait for a close handshake when handing teams over.
    #[arg(long, env = "SWITCHBOARD_CLOSE_TIMEOUT", value_parser = duration,
          default_value_t = human(Config::default().close_timeout), help_heading = HEADING)]
    close_timeout: humantime::Duration,
    /// PEM file of extra CA certificates to trust for wss:// team URLs.
    #[arg(long, env = "SWITCHBOARD_CA_FILE", help_heading = HEADING)]
    ca_file: Option<std::path::PathBuf>,
    #[command(flatten)]
    http: super::client::HttpArgs,
    /// The texts of its teams' messages are published from here (the
    /// leader gets counts only), with the same flags as `connect`'s.
    #[command(flatten)]
    publish: super::publish::PublishArgs,
}

impl WorkerArgs {
    /// The worker's settings from its flags (a bad CA file: exit 2).
    fn config(&self) -> Result<WorkerConfig, ExitCode> {
        let limit = super::client::raise_fd_limit();
        let capacity = self.capacity.unwrap_or_else(|| {
            limit.map_or(1_000, |l| {
                l.saturating_sub(DESCRIPTOR_MARGIN).max(1) as usize
            })
        });
        let transport = super::client::with_ca_file(
            TransportConfig {
                bind: self.bind_ip,
                ..TransportConfig::default()
            },
            self.ca_file.as_deref(),
        )?;
        Ok(WorkerConfig {
            cluster: self.place.config(self.cluster.clone()),
            name: self.name.clone().unwrap_or_else(|| {
                let host: String = hostname()
                    .chars()
                    .map(|c| {
                        if c.is_ascii_alphanumeric() || c == '-' {
                            c
                        } else {
                            '_'
                        }
                    })
                    .take(64)
                    .collect();
                host
            }),
            capacity,
            transport,
            core: Config {
                tick: *self.tick,
                pong_timeout: *self.pong_timeout,
                close_timeout: *self.close_timeout,
                ..Config::default()
            },
        })
    }
}

/// `switchboard worker`.
pub fn run_worker(args: &WorkerArgs) -> ExitCode {
    let config = match args.config() {
        Ok(config) => config,
        Err(code) => return code,
    };
    let runtime = match super::tokio_runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    let watch = worker::WorkerWatch::new();
    match args.http.options(false) {
        Ok(None) => {}
        Ok(Some((addr, options))) => {
            match runtime.block_on(crate::http::worker::serve_worker(
                addr,
                options,
                watch.clone(),
            )) {
                Ok(addr) => info!(url = %format!("http://{addr}/"), "HTTP: metrics, health"),
                Err(e) => return usage_error(format!("--http {addr}: {e}")),
            }
        }
        Err(code) => return code,
    }
    let publishing = match args.publish.begin(&runtime) {
        Ok(publishing) => publishing,
        Err(code) => return code,
    };
    if let Some(publishing) = &publishing {
        watch.watch_publisher(publishing.watch());
    }
    let tap = publishing.as_ref().and_then(|p| p.tap());
    let leave = Leave::new();
    runtime.spawn(watch_signals(leave.clone()));
    let mut code = match worker::run(&config, runtime.handle(), &leave, &watch, tap) {
        Ok(WorkerEnd::HandedOver) => ExitCode::SUCCESS,
        Ok(WorkerEnd::Forced) => ExitCode::from(130),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    };
    // Every socket has ended: what the tap still holds is published
    // (within --publish-drain-timeout) before the exit.
    if let Some(publishing) = publishing
        && let Err(failed) = publishing.finish(&runtime)
        && code == ExitCode::SUCCESS
    {
        code = failed;
    }
    runtime.shutdown_background();
    code
}

/// SIGINT/SIGTERM: the first hands the teams over, the second ends at once.
async fn watch_signals(leave: Leave) {
    let mut signals = super::signals::Signals::new();
    loop {
        signals.next().await;
        info!("signal received: handing the teams over (again to end at once)");
        leave.signal();
    }
}

/// `switchboard status`'s flags.
#[derive(Args, Debug, Clone)]
pub struct StatusArgs {
    /// The cluster's NATS server.
    #[arg(long, env = "SWITCHBOARD_CLUSTER", value_parser = nats_url,
          value_name = "NATS_URL", help_heading = HEADING)]
    cluster: String,
    #[command(flatten)]
    place: Where,
}

/// `switchboard status --cluster`: prints the leader, the standbys and the
/// workers with their teams, one line each.
pub fn run_status(args: &StatusArgs) -> ExitCode {
    let config = args.place.config(args.cluster.clone());
    let runtime = match super::tokio_runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    let read = runtime.block_on(async {
        let (_client, js) = cluster::connect(&config, "status").await?;
        tokio::time::timeout(Duration::from_secs(10), cluster::status::read(&js, &config))
            .await
            .map_err(|_| cluster::ClusterError::JetStream("no answer in 10 s".into()))?
    });
    runtime.shutdown_background();
    match read {
        Ok(status) => {
            print!("{}", status.text());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
