//! `/metrics`: the last published [`View`] in the Prometheus text format
//! (or OpenMetrics, for a scraper that asks for it), through
//! prometheus-client, plus the process's own resident memory and open
//! descriptors read from /proc at scrape time.

use std::fmt;
use std::sync::Arc;

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};

use super::view::{Shared, View};
use crate::core::{GlobalState, RttHistogram};
use crate::procfs;
use crate::publish::PublishStats;

/// The registry `/metrics` encodes: the view collector and the step
/// histogram.
pub(crate) fn registry(shared: &Arc<Shared>) -> Registry {
    let mut registry = Registry::with_prefix("switchboard");
    registry.register_with_unit(
        "step_duration",
        "Time one step of the core took, handing its commands over included",
        Unit::Seconds,
        shared.step_seconds.clone(),
    );
    registry.register_collector(Box::new(ViewCollector(shared.clone())));
    registry
}

/// A worker's registry (`switchboard worker --http`).
pub(crate) fn worker_registry(watch: &crate::cluster::worker::WorkerWatch) -> Registry {
    let mut registry = Registry::with_prefix("switchboard");
    registry.register_collector(Box::new(WorkerCollector(watch.clone())));
    registry
}

#[derive(Debug)]
struct WorkerCollector(crate::cluster::worker::WorkerWatch);

impl prometheus_client::collector::Collector for WorkerCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), fmt::Error> {
        let w = &self.0;
        let int = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        role(&mut e, "worker")?;
        gauge(&mut e, "worker_sockets", "Team sockets this worker holds", None, int(w.sockets() as u64))?;
        gauge(&mut e, "worker_epoch", "The leader epoch this worker obeys (0: none yet)", None, int(w.epoch()))?;
        gauge(
            &mut e,
            "worker_ended_kept",
            "Ended sockets' readings kept for a leader's call",
            None,
            int(w.ended() as u64),
        )?;
        if let Some(age) = w.lease_age() {
            seconds(&mut e, "worker_lease_age", "Time since this worker's lease was last renewed", age)?;
        }
        if let Some(publisher) = w.publisher() {
            publish(&mut e, &publisher.stats())?;
        }
        process(&mut e)
    }
}

/// Encodes the registry as Prometheus text (0.0.4), or OpenMetrics text
/// with `openmetrics`.
pub(crate) fn render(registry: &Registry, openmetrics: bool) -> Result<String, fmt::Error> {
    let mut out = String::new();
    if openmetrics {
        prometheus_client::encoding::text::encode(&mut out, registry)?;
    } else {
        prometheus_client::encoding::prometheus_text::encode(&mut out, registry)?;
    }
    Ok(out)
}

struct ViewCollector(Arc<Shared>);

impl fmt::Debug for ViewCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ViewCollector")
    }
}

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), fmt::Error> {
    let metric = ConstCounter::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: i64,
) -> Result<(), fmt::Error> {
    let metric = ConstGauge::new(value);
    metric.encode(encoder.encode_descriptor(name, help, unit, metric.metric_type())?)
}

/// A duration gauge, in seconds.
fn seconds(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: std::time::Duration,
) -> Result<(), fmt::Error> {
    let metric = ConstGauge::new(value.as_secs_f64());
    metric.encode(encoder.encode_descriptor(name, help, Some(&Unit::Seconds), metric.metric_type())?)
}

/// One labelled series per key.
fn family<'k>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    label: &str,
    values: impl IntoIterator<Item = (&'k str, u64)>,
) -> Result<(), fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    for (key, value) in values {
        let labels = [(label, key)];
        let mut series = metric.encode_family(&labels)?;
        match kind {
            MetricType::Counter => ConstCounter::new(value).encode(series)?,
            _ => series.encode_gauge(&(value as i64))?,
        }
    }
    Ok(())
}

/// A histogram in seconds: each bucket's upper bound (the last, +Inf,
/// added here) and its own count, not cumulative; and the sum.
fn seconds_histogram(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    bounds: impl Iterator<Item = f64>,
    counts: &[u64],
    sum: f64,
) -> Result<(), fmt::Error> {
    let buckets: Vec<(f64, u64)> = bounds
        .chain([f64::INFINITY])
        .zip(counts.iter().copied())
        .collect();
    let mut metric =
        encoder.encode_descriptor(name, help, Some(&Unit::Seconds), MetricType::Histogram)?;
    metric.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
        sum,
        counts.iter().sum(),
        &buckets,
        None,
    )
}

fn rtt(encoder: &mut DescriptorEncoder, rtt: &RttHistogram) -> Result<(), fmt::Error> {
    seconds_histogram(
        encoder,
        "pong_rtt",
        "Round trip of answered pings, in core time (tick resolution)",
        RttHistogram::BOUNDS_MS.iter().map(|&ms| ms as f64 / 1000.0),
        &rtt.buckets,
        rtt.sum_ms as f64 / 1000.0,
    )
}

impl prometheus_client::collector::Collector for ViewCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), fmt::Error> {
        if let Some(waiting) = self.0.standing_by() {
            // No run yet: no team families, which would read as zeros.
            standby(&mut e, &waiting)?;
            return process(&mut e);
        }
        let v: Arc<View> = self.0.view();
        teams(&mut e, &v)?;
        trouble(&mut e, &v)?;
        work(&mut e, &v)?;
        global_link(&mut e, &v)?;
        if let Some(watch) = self.0.publish.get() {
            publish(&mut e, &watch.stats())?;
        }
        if let Some(watch) = self.0.cluster.get() {
            cluster(&mut e, watch)?;
        }
        process(&mut e)
    }
}

/// The teams: how many in each link state, what they counted, how often
/// their links were lost.
fn teams(e: &mut DescriptorEncoder, v: &View) -> Result<(), fmt::Error> {
    family(
        e,
        "teams",
        "Teams ever joined, by the state of their link",
        MetricType::Gauge,
        "state",
        v.by_state.iter().map(|(k, n)| (*k, *n)),
    )?;
    counter(e, "messages", "Message events counted", v.messages)?;
    counter(e, "props_messages", "Messages counted with props", v.props)?;
    family(
        e,
        "reconnects",
        "Open team links lost and re-requested, by cause",
        MetricType::Counter,
        "cause",
        v.drops.iter().map(|(k, n)| (*k, *n)),
    )?;
    Ok(())
}

/// What was refused or given up on: bad frames, joins over the limit, dead
/// links.
fn trouble(e: &mut DescriptorEncoder, v: &View) -> Result<(), fmt::Error> {
    family(
        e,
        "bad_frames_global",
        "Bad input on the Global link, by class",
        MetricType::Counter,
        "class",
        v.bad_global.iter().map(|(k, n)| (*k, *n)),
    )?;
    family(
        e,
        "bad_frames_team",
        "Bad input on team links, by class",
        MetricType::Counter,
        "class",
        v.bad_team.iter().map(|(k, n)| (*k, *n)),
    )?;
    counter(
        e,
        "refused_joins",
        "team.join refused at --max-teams",
        v.refused_joins,
    )?;
    counter(
        e,
        "dead_links",
        "Team links declared dead (no frame after a ping)",
        v.dead_links,
    )?;
    Ok(())
}

/// The work of the core and its driver: answers, requests and events
/// waiting, round trips, steps.
fn work(e: &mut DescriptorEncoder, v: &View) -> Result<(), fmt::Error> {
    counter(
        e,
        "healthchecks_answered",
        "Healthcheck replies sent",
        v.healthchecks_answered,
    )?;
    gauge(
        e,
        "requests_in_flight",
        "team.connect requests awaiting an answer",
        None,
        v.requests_in_flight as i64,
    )?;
    gauge(
        e,
        "bridge_depth",
        "Events waiting in the driver's inbox beyond the last step's batch",
        None,
        v.bridge_depth as i64,
    )?;
    rtt(e, &v.rtt)?;
    counter(
        e,
        "steps",
        "Steps of the core (it sleeps when nothing is due)",
        v.steps,
    )?;
    counter(
        e,
        "step_overruns",
        "Steps that took longer than a tick",
        v.overruns,
    )?;
    Ok(())
}

/// The Global link: its state and how often it was reopened.
fn global_link(e: &mut DescriptorEncoder, v: &View) -> Result<(), fmt::Error> {
    family(
        e,
        "global_link",
        "The Global link's state (1 for the current one)",
        MetricType::Gauge,
        "state",
        GlobalState::NAMES.map(|s| (s, u64::from(s == v.global_state))),
    )?;
    counter(
        e,
        "global_reconnects",
        "Global links opened after the first",
        v.global_connects.saturating_sub(1),
    )?;
    Ok(())
}

/// This process's resident memory and open descriptors, read at scrape
/// time (absent where /proc cannot be read).
fn process(e: &mut DescriptorEncoder) -> Result<(), fmt::Error> {
    if let Some(rss) = procfs::resident_bytes() {
        gauge(
            e,
            "process_resident_memory",
            "Resident memory",
            Some(&Unit::Bytes),
            i64::try_from(rss).unwrap_or(i64::MAX),
        )?;
    }
    if let Some(fds) = procfs::open_descriptors() {
        gauge(
            e,
            "process_open_fds",
            "Open file descriptors",
            None,
            i64::try_from(fds).unwrap_or(i64::MAX),
        )?;
    }
    Ok(())
}

/// What the leader counts crossing NATS.
fn traffic(e: &mut DescriptorEncoder, t: &crate::cluster::traffic::Traffic) -> Result<(), fmt::Error> {
    use std::sync::atomic::Ordering::Relaxed;
    counter(e, "cluster_event_batches", "Event batches taken from workers", t.event_batches.load(Relaxed))?;
    counter(e, "cluster_event_bytes", "Bytes of event batches taken from workers", t.event_bytes.load(Relaxed))?;
    counter(e, "cluster_command_batches", "Command batches published to workers", t.command_batches.load(Relaxed))?;
    counter(e, "cluster_command_bytes", "Bytes of command batches published to workers", t.command_bytes.load(Relaxed))?;
    let hops = t.hops();
    seconds_histogram(
        e,
        "cluster_hop",
        "From a worker taking an event off its sockets to the leader's inbox (the core counts it at its next step)",
        crate::cluster::traffic::HOP_BOUNDS_US.iter().map(|&us| us as f64 / 1e6),
        &hops.buckets,
        hops.sum_us as f64 / 1e6,
    )
}

/// A process's role in its cluster, as one labelled series of 1.
fn role(e: &mut DescriptorEncoder, role: &str) -> Result<(), fmt::Error> {
    family(
        e,
        "cluster_role",
        "This process's role in its cluster (leader, standby or worker)",
        MetricType::Gauge,
        "role",
        std::iter::once((role, 1)),
    )
}

/// A core standing by for the leader lease.
fn standby(e: &mut DescriptorEncoder, waiting: &crate::cluster::Waiting) -> Result<(), fmt::Error> {
    role(e, "standby")?;
    seconds(e, "cluster_standby", "Time this core has stood by for the leader lease", waiting.since.elapsed())?;
    if let Some((_, epoch)) = &waiting.leader {
        gauge(e, "cluster_leader_epoch", "The epoch of the leader this standby last read", None, i64::try_from(*epoch).unwrap_or(i64::MAX))?;
    }
    Ok(())
}

/// The cluster this process leads (`--cluster`).
fn cluster(e: &mut DescriptorEncoder, watch: &crate::cluster::LeaderWatch) -> Result<(), fmt::Error> {
    role(e, "leader")?;
    gauge(e, "cluster_epoch", "The leader lease's epoch this process leads in", None, i64::try_from(watch.epoch).unwrap_or(i64::MAX))?;
    seconds(e, "cluster_lease_age", "Time since the leader lease was last renewed", watch.lease_age())?;
    let moves = &watch.moves;
    counter(
        e,
        "cluster_moves",
        "Teams moved onto a worker that joined (closed on their worker to reopen on it)",
        moves.asked.load(std::sync::atomic::Ordering::Relaxed),
    )?;
    gauge(
        e,
        "cluster_moves_queued",
        "Moves onto a worker that joined waiting for the move rate",
        None,
        i64::try_from(moves.queued.load(std::sync::atomic::Ordering::Relaxed)).unwrap_or(i64::MAX),
    )?;
    traffic(e, &watch.traffic)?;
    let workers = watch.workers();
    family(
        e,
        "cluster_worker_teams",
        "Team sockets each live worker holds",
        MetricType::Gauge,
        "worker",
        workers.iter().map(|w| (w.name.as_str(), w.teams as u64)),
    )?;
    family(
        e,
        "cluster_worker_quiet",
        "1 while a live worker is unrenewed for half a lease (its teams reported not connected)",
        MetricType::Gauge,
        "worker",
        workers.iter().map(|w| (w.name.as_str(), u64::from(w.quiet))),
    )
}

/// The NATS publisher's numbers (`--publish`).
fn publish(e: &mut DescriptorEncoder, s: &PublishStats) -> Result<(), fmt::Error> {
    family(
        e,
        "publish_taken",
        "Records taken from the tap for NATS, by kind",
        MetricType::Counter,
        "kind",
        [
            ("message", s.messages_taken),
            ("team_event", s.events_taken),
        ],
    )?;
    family(
        e,
        "publish_acknowledged",
        "Records JetStream acknowledged, by how",
        MetricType::Counter,
        "how",
        [
            ("stored", s.stored),
            ("duplicate", s.duplicates),
            ("found_stored", s.found_stored),
        ],
    )?;
    counter(
        e,
        "publish_failed_attempts",
        "Publish attempts that failed and were retried",
        s.failed_attempts,
    )?;
    gauge(
        e,
        "publish_waiting",
        "Records not yet acknowledged by JetStream",
        None,
        s.waiting as i64,
    )?;
    gauge(
        e,
        "publish_buffer_used",
        "Tap budget held by unacknowledged records",
        Some(&Unit::Bytes),
        s.buffer_used as i64,
    )?;
    gauge(
        e,
        "publish_buffer_budget",
        "The tap budget (--publish-buffer)",
        Some(&Unit::Bytes),
        s.buffer_budget as i64,
    )?;
    gauge(
        e,
        "publish_stream_ready",
        "1 while the JetStream stream is known to exist",
        None,
        i64::from(s.stream_ready),
    )
}
