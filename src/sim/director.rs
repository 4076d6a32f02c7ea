//! The director plays the scenario: joins, leaves and rejoins on a seeded
//! plan, periodic healthchecks, faults at their rates; then, with chaos
//! off, the final exact check, `goodbye`, and the verdict.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;

use super::Shared;
use super::ledger::{Fault, SocketCtl, Verdict, Waiter};
use super::server::text;
use crate::protocol::{GlobalServerEvent, TeamId, TeamStats};

/// Something the plan makes happen at a set time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Step {
    Join(TeamId),
    Leave {
        team: TeamId,
        on_global: bool,
        rejoin: bool,
    },
    Rejoin(TeamId),
}

/// How often the director looks at the world.
const TICK: Duration = Duration::from_millis(20);

type Plan = BinaryHeap<Reverse<(Instant, u64, Step)>>;

fn plan(shared: &Shared, t0: Instant) -> Plan {
    let scenario = &shared.scenario;
    let mut rng = fastrand::Rng::with_seed(shared.seed ^ 0x5ce7_a210);
    let mut plan = BinaryHeap::new();
    let stream_for = Duration::from_secs_f64(scenario.messages as f64 / scenario.rate.max(0.001));
    for (seq, id) in (1..=scenario.teams).enumerate() {
        let team = TeamId(id);
        let join_at = t0
            + scenario
                .join_over
                .mul_f64((id - 1) as f64 / scenario.teams as f64);
        plan.push(Reverse((join_at, seq as u64, Step::Join(team))));
        if rng.f64() < scenario.leave_fraction {
            let leave_at = join_at + stream_for.mul_f64(0.2 + 0.6 * rng.f64());
            let step = Step::Leave {
                team,
                on_global: rng.f64() < scenario.leave_on_global,
                rejoin: rng.f64() < scenario.rejoin_fraction,
            };
            plan.push(Reverse((leave_at, seq as u64, step)));
        }
    }
    plan
}

fn global_send(shared: &Shared, frame: Message) -> bool {
    let ledger = shared.lock();
    ledger
        .global
        .as_ref()
        .is_some_and(|g| g.ctl.send(SocketCtl::Send(frame)).is_ok())
}

/// Applies one plan step; returns a step to retry later, if it could not
/// happen now.
fn apply(shared: &Shared, step: Step, now: Instant, plan: &mut Plan, seq: &mut u64) {
    let mut ledger = shared.lock();
    match step {
        Step::Join(team) => {
            // Stamped and queued under one lock: a healthcheck queued later
            // is behind this join on the wire.
            let join = text(&GlobalServerEvent::TeamJoin { team_id: team });
            if let Some(global) = ledger.global.as_ref() {
                let _ = global.ctl.send(SocketCtl::Send(join));
            }
            let truth = ledger.teams.entry(team).or_default();
            truth.quota = shared.scenario.messages;
            truth.joined = true;
            truth.announced_at.get_or_insert_with(Instant::now);
        }
        Step::Leave {
            team,
            on_global,
            rejoin,
        } => {
            let global = ledger.global.as_ref().map(|g| g.ctl.clone());
            let Some(truth) = ledger.teams.get_mut(&team) else {
                return;
            };
            if !truth.joined || truth.paused || !truth.reading(now) {
                // Mid-fault: try again shortly.
                *seq += 1;
                plan.push(Reverse((now + TICK * 10, *seq, step)));
                return;
            }
            let told = match (on_global, global, truth.socket.as_ref()) {
                (true, Some(ctl), _) => ctl
                    .send(SocketCtl::Send(text(&GlobalServerEvent::TeamLeft {
                        team_id: team,
                    })))
                    .is_ok()
                    .then_some("global"),
                (_, _, Some((_, ctl))) if !truth.zombie => {
                    ctl.send(SocketCtl::Leave).is_ok().then_some("socket")
                }
                _ => None,
            };
            let Some(via) = told else {
                *seq += 1;
                plan.push(Reverse((now + TICK * 10, *seq, step)));
                return;
            };
            truth.joined = false;
            truth.left_at = Some(now);
            truth.note(format!("left (on {via})"));
            if rejoin {
                *seq += 1;
                plan.push(Reverse((
                    now + Duration::from_millis(500),
                    *seq,
                    Step::Rejoin(team),
                )));
            } else {
                truth.finished = true;
            }
        }
        Step::Rejoin(team) => {
            if let Some(truth) = ledger.teams.get_mut(&team) {
                truth.joined = true;
                truth.left_at = None;
            }
            drop(ledger);
            global_send(shared, text(&GlobalServerEvent::TeamJoin { team_id: team }));
        }
    }
}

/// Sends a healthcheck on the live Global and waits for its reply.
async fn ask_healthcheck(shared: &Shared) -> Option<Vec<TeamStats>> {
    let reply = {
        let mut ledger = shared.lock();
        let global = ledger.global.as_mut()?;
        let (tx, rx) = oneshot::channel();
        // Queued under the lock, so waiters stay in request order.
        global
            .ctl
            .send(SocketCtl::Send(text(&GlobalServerEvent::Healthcheck)))
            .ok()?;
        global.waiters.push_back(Waiter {
            sent_at: Instant::now(),
            reply: tx,
        });
        rx
    };
    tokio::time::timeout(Duration::from_secs(5), reply)
        .await
        .ok()?
        .ok()
}

/// A random team with a usable socket that no fault is working on.
fn pick_connected(shared: &Shared) -> Option<(TeamId, mpsc::UnboundedSender<SocketCtl>)> {
    pick_streaming(shared, 1)
}

/// A random connected team with at least `remaining` messages still to
/// receive.
fn pick_streaming(
    shared: &Shared,
    remaining: u64,
) -> Option<(TeamId, mpsc::UnboundedSender<SocketCtl>)> {
    let now = Instant::now();
    let mut ledger = shared.lock();
    // A team whose socket the server is not reading is left alone: it could
    // not see a close or a drop complete.
    let candidates: Vec<(TeamId, mpsc::UnboundedSender<SocketCtl>)> = ledger
        .teams
        .iter()
        .filter(|(_, t)| {
            t.joined
                && t.connected()
                && !t.paused
                && t.reading(now)
                && t.written + remaining <= t.quota
        })
        .filter_map(|(&id, t)| t.socket.as_ref().map(|(_, ctl)| (id, ctl.clone())))
        .collect();
    if candidates.is_empty() {
        return None;
    }
    let i = ledger.rng.usize(..candidates.len());
    candidates.into_iter().nth(i)
}

fn garbage(rng: &mut fastrand::Rng, on_global: bool) -> Message {
    match (rng.u8(0..6), on_global) {
        (0, _) => Message::text("{this is not json"),
        (1, _) => Message::text(r#"{"type":"surprise","x":1}"#),
        (2, true) => Message::text(r#"{"type":"team.join"}"#),
        (2, false) => Message::text(r#"{"type":"message"}"#),
        (3, true) => Message::text(r#"{"type":"team.connect","team_id":"seven","ws_url":5}"#),
        (3, false) => Message::text(r#"{"type":"message","text":42}"#),
        (4, _) => Message::binary(vec![0xde, 0xad, 0xbe, 0xef]),
        _ => Message::text("[1,2,3]"),
    }
}

/// Injects one fault of a rate-driven kind, if a target exists.
fn inject(shared: &Arc<Shared>, fault: Fault) {
    match fault {
        Fault::TeamClose | Fault::TeamErrorClose => {
            if let Some((team, ctl)) = pick_connected(shared) {
                let code = if fault == Fault::TeamClose {
                    1000
                } else {
                    1011
                };
                if ctl.send(SocketCtl::Close(code)).is_ok() {
                    shared.lock().injected(fault, Some(team));
                }
            }
        }
        Fault::TeamReset => {
            if let Some((team, ctl)) = pick_connected(shared) {
                if let Some(t) = shared.lock().teams.get_mut(&team) {
                    t.paused = true;
                }
                tokio::spawn(reset_after_quiesce(shared.clone(), team, ctl));
            }
        }
        Fault::GlobalDrop => {
            let mut ledger = shared.lock();
            let reset = ledger.rng.bool();
            if let Some(global) = ledger.global.take() {
                let how = if reset {
                    SocketCtl::Reset
                } else {
                    SocketCtl::Close(1001)
                };
                if global.ctl.send(how).is_ok() {
                    ledger.injected(Fault::GlobalDrop, None);
                    ledger.pending_global_drops += 1;
                }
            }
        }
        Fault::Zombie => {
            if let Some((team, ctl)) = pick_connected(shared)
                && ctl.send(SocketCtl::Zombie).is_ok()
            {
                let mut ledger = shared.lock();
                if let Some(t) = ledger.teams.get_mut(&team) {
                    t.zombie = true;
                }
                ledger.injected(Fault::Zombie, Some(team));
            }
        }
        Fault::Garbage => {
            let on_global = shared.lock().rng.bool();
            let target = if on_global {
                shared.lock().global.as_ref().map(|g| g.ctl.clone())
            } else {
                pick_connected(shared).map(|(_, c)| c)
            };
            if let Some(ctl) = target {
                let mut ledger = shared.lock();
                let junk = garbage(&mut ledger.rng, on_global);
                if ctl.send(SocketCtl::Send(junk)).is_ok() {
                    ledger.injected(Fault::Garbage, None);
                }
            }
        }
        Fault::DuplicateJoin => {
            if let Some((team, _)) = pick_connected(shared)
                && global_send(shared, text(&GlobalServerEvent::TeamJoin { team_id: team }))
            {
                shared.lock().injected(Fault::DuplicateJoin, Some(team));
            }
        }
        Fault::Oversize => {
            if let Some((team, ctl)) = pick_connected(shared)
                && ctl
                    .send(SocketCtl::Oversize(shared.scenario.oversize_bytes))
                    .is_ok()
            {
                shared.lock().injected(Fault::Oversize, Some(team));
            }
        }
        Fault::SlowReader => {
            // A server that reads nothing must keep writing through the
            // pause, or the client rightly declares the link dead (and the
            // server, not reading, could not see it go).
            let secs = shared.scenario.slow_read_for.as_secs_f64();
            let needed = (shared.scenario.rate * secs * 2.0).ceil() as u64 + 1;
            let pause = shared.scenario.slow_read_for;
            if let Some((team, ctl)) = pick_streaming(shared, needed)
                && ctl.send(SocketCtl::SlowRead(pause)).is_ok()
            {
                let mut ledger = shared.lock();
                if let Some(t) = ledger.teams.get_mut(&team) {
                    t.slow_until = Some(Instant::now() + pause);
                }
                ledger.injected(Fault::SlowReader, Some(team));
            }
        }
        // Probabilities, rolled where they apply (per request, per socket).
        Fault::ConnectError | Fault::DelayedHello => {}
    }
}

/// A reset may discard data in flight, so first stop the team's socket
/// writing and wait until the client has counted every message written;
/// only then reset. If the client cannot confirm, close gracefully instead.
async fn reset_after_quiesce(
    shared: Arc<Shared>,
    team: TeamId,
    ctl: mpsc::UnboundedSender<SocketCtl>,
) {
    let (ack, acked) = oneshot::channel();
    let paused = ctl.send(SocketCtl::Pause(ack)).is_ok()
        && tokio::time::timeout(Duration::from_secs(2), acked)
            .await
            .is_ok_and(|r| r.is_ok());
    let mut confirmed = false;
    if paused {
        for _ in 0..40 {
            let written = shared.lock().teams.get(&team).map_or(0, |t| t.written);
            if let Some(stats) = ask_healthcheck(&shared).await
                && stats
                    .iter()
                    .any(|s| s.id == team && s.message_count == written)
            {
                confirmed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
    let (how, fault) = if confirmed {
        (SocketCtl::Reset, Fault::TeamReset)
    } else {
        (SocketCtl::Close(1000), Fault::TeamClose)
    };
    if ctl.send(how).is_ok() {
        shared.lock().injected(fault, Some(team));
    } else if let Some(t) = shared.lock().teams.get_mut(&team) {
        t.paused = false;
    }
}

/// Plays the whole run and returns the verdict.
pub(crate) async fn direct(shared: Arc<Shared>) -> Verdict {
    while shared.started.get().is_none() {
        shared.global_seen.notified().await;
    }
    let t0 = *shared.started.get().unwrap_or(&Instant::now());
    let mut plan = plan(&shared, t0);
    let mut seq = plan.len() as u64;
    let mut mismatches = Vec::new();
    let mut ticker = tokio::time::interval(TICK);
    let mut next_healthcheck = t0 + shared.scenario.healthcheck_every;
    let mut last = Instant::now();
    let rate_faults: Vec<(Fault, f64)> = shared
        .chaos
        .0
        .iter()
        .filter(|(f, r)| !matches!(f, Fault::ConnectError | Fault::DelayedHello) && **r > 0.0)
        .map(|(f, r)| (*f, *r))
        .collect();

    loop {
        ticker.tick().await;
        let now = Instant::now();
        let dt = now.duration_since(last).as_secs_f64();
        last = now;
        while plan.peek().is_some_and(|Reverse((at, _, _))| *at <= now) {
            if let Some(Reverse((_, _, step))) = plan.pop() {
                apply(&shared, step, now, &mut plan, &mut seq);
            }
        }
        if now >= next_healthcheck {
            next_healthcheck = now + shared.scenario.healthcheck_every;
            let shared = shared.clone();
            // Checked on arrival by the Global task.
            tokio::spawn(async move { ask_healthcheck(&shared).await });
        }
        for &(fault, rate) in &rate_faults {
            let fire = shared.lock().rng.f64() < rate * dt;
            if fire {
                inject(&shared, fault);
            }
        }
        let done = plan.is_empty() && {
            let ledger = shared.lock();
            ledger
                .teams
                .values()
                .all(|t| t.finished || (t.joined && t.written >= t.quota))
        };
        if done {
            break;
        }
        if now.duration_since(t0) > shared.scenario.max_duration {
            mismatches.push(format!(
                "run not over after {}s: teams still streaming",
                shared.scenario.max_duration.as_secs()
            ));
            break;
        }
    }

    // Chaos off; let every joined team come back.
    shared.lock().chaos_on = false;
    let settle_until = Instant::now() + Duration::from_secs(20);
    loop {
        let waiting: Vec<TeamId> = {
            let ledger = shared.lock();
            ledger
                .teams
                .iter()
                .filter(|(_, t)| {
                    (t.joined && !t.connected()) || (!t.joined && t.open_sockets > 0) || t.paused
                })
                .map(|(&id, _)| id)
                .collect()
        };
        let global_up = shared.lock().global.is_some();
        if waiting.is_empty() && global_up {
            break;
        }
        if Instant::now() > settle_until {
            let ledger = shared.lock();
            for team in waiting.iter().take(5) {
                let t = &ledger.teams[team];
                mismatches.push(format!(
                    "not settled after chaos: team {team} joined={} sockets={} (last events: {})",
                    t.joined,
                    t.open_sockets,
                    t.history.iter().cloned().collect::<Vec<_>>().join(", ")
                ));
            }
            if !global_up {
                mismatches.push("not settled after chaos: Global down".into());
            }
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The final check: the client must converge on exactly the truth (every
    // reply on the way was already checked never to exceed it).
    let exact_until = Instant::now() + Duration::from_secs(10);
    let mut exact = Err("no healthcheck reply".to_owned());
    while Instant::now() < exact_until {
        if let Some(stats) = ask_healthcheck(&shared).await {
            exact = shared.lock().exact(&stats);
            if exact.is_ok() {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if let Err(diff) = exact {
        mismatches.push(format!("final healthcheck not exact: {diff}"));
    }

    // Goodbye: every socket must be closed by the client with 1000.
    let expected_closes = {
        let mut ledger = shared.lock();
        ledger.goodbye_sent = true;
        1 + ledger
            .teams
            .values()
            .map(|t| u64::from(t.open_sockets))
            .sum::<u64>()
    };
    global_send(&shared, text(&GlobalServerEvent::Goodbye));
    let closed_until = Instant::now() + Duration::from_secs(10);
    loop {
        let (open, global) = {
            let ledger = shared.lock();
            let open: u32 = ledger.teams.values().map(|t| t.open_sockets).sum();
            (open, ledger.global.is_some())
        };
        if open == 0 && !global {
            break;
        }
        if Instant::now() > closed_until {
            mismatches.push(format!(
                "after goodbye, {open} team sockets and global={global} still open"
            ));
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let mut ledger = shared.lock();
    if ledger.closed_after_goodbye < expected_closes {
        let closed = ledger.closed_after_goodbye;
        mismatches.push(format!(
            "after goodbye the client closed {closed} of {expected_closes} sockets with 1000"
        ));
    }
    mismatches.extend(ledger.violations.iter().cloned());
    let verified = mismatches.is_empty();
    // Faults that did not take a connection down are survived when the run
    // verified; so are outages of teams that then left for good.
    let passive = [
        Fault::Garbage,
        Fault::DuplicateJoin,
        Fault::DelayedHello,
        Fault::SlowReader,
    ];
    let left_for_good: Vec<Fault> = ledger
        .teams
        .values_mut()
        .filter(|t| t.finished)
        .flat_map(|t| std::mem::take(&mut t.pending_recovery))
        .collect();
    for fault in left_for_good {
        ledger.survived(fault, 1);
    }
    if verified {
        for fault in passive {
            let injected = ledger.faults.get(&fault).map_or(0, |c| c.injected);
            if injected > 0 {
                ledger.survived(fault, injected);
            }
        }
    }
    Verdict {
        verified,
        teams: ledger.teams.len(),
        messages: ledger.teams.values().map(|t| t.written).sum(),
        props: ledger.teams.values().map(|t| t.props).sum(),
        faults: ledger.faults.clone(),
        healthchecks_checked: ledger.replies_checked,
        global_connects: ledger.global_connects,
        max_sockets_per_team: ledger.max_open,
        mismatches,
        duration: t0.elapsed(),
    }
}
