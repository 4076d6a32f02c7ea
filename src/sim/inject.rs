//! Injecting faults: which teams can take one now, what injecting each kind
//! does, and the recovery it is booked with. Faults come from the rates
//! (a random target) or from the schedule (a set team, at a set count);
//! both go through [`inject`], so they obey the same rules.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;

use super::Shared;
use super::ask::ask_healthcheck;
use super::faults::Fault;
use super::ledger::Ledger;
use super::server::{SocketCtl, text};
use super::survival::Recovery;
use crate::protocol::{GlobalServerEvent, TeamId};

/// Messages that must still follow a fault whose survival is seen by the
/// client counting past it (garbage, a delayed hello): enough that the
/// stream does not end before the fault's frame is out.
const FOLLOWING: u64 = 10;

/// Messages a team must still have to receive to be a fair target.
fn needs(shared: &Shared, fault: Fault) -> u64 {
    match fault {
        // A server that reads nothing must keep writing through the pause,
        // or the client rightly declares the link dead.
        Fault::SlowReader => {
            (shared.scenario.rate * shared.scenario.slow_read_for.as_secs_f64() * 2.0).ceil() as u64
                + 1
        }
        Fault::Garbage | Fault::DelayedHello => FOLLOWING,
        _ => 0,
    }
}

/// Whether `team` can take `fault` now: joined, a usable socket the server
/// is reading, not quiescing, no other fault waiting on it, and enough
/// messages left for the recovery to be seen.
fn fits(shared: &Shared, ledger: &Ledger, team: TeamId, fault: Fault, now: Instant) -> bool {
    ledger.teams.get(&team).is_some_and(|t| {
        t.joined
            && t.connected()
            && !t.paused
            && t.reading(now)
            && !ledger.survival.busy(team)
            && t.remaining() >= needs(shared, fault)
    })
}

/// `team`'s socket, if it [fits](fits) `fault` now.
fn target(
    shared: &Shared,
    ledger: &Ledger,
    team: TeamId,
    fault: Fault,
    now: Instant,
) -> Option<(u64, mpsc::UnboundedSender<SocketCtl>)> {
    fits(shared, ledger, team, fault, now)
        .then(|| ledger.teams.get(&team)?.socket.clone())
        .flatten()
}

/// Whether a per-connection fault (connect-error, delayed-hello) strikes
/// this occasion, for `team` or for Global (`None`): chaos is on, and the
/// team's trigger is due or the dice say so. A delayed hello only strikes a
/// team with messages to follow it.
pub(crate) fn strikes(
    shared: &Shared,
    ledger: &mut Ledger,
    fault: Fault,
    team: Option<TeamId>,
) -> bool {
    if !ledger.chaos_on {
        return false;
    }
    if let Some(team) = team
        && ledger
            .teams
            .get(&team)
            .is_none_or(|t| t.remaining() < needs(shared, fault))
    {
        return false;
    }
    if team.is_some_and(|t| ledger.take_trigger(t, fault)) {
        return true;
    }
    let p = shared.chaos.rate(fault);
    p > 0.0 && ledger.rng.f64() < p
}

/// A rate-driven fault: `fault` on a random team that can take it (or on
/// Global, for a Global drop and half the garbage).
pub(super) fn inject_random(shared: &Arc<Shared>, fault: Fault) {
    let now = Instant::now();
    let team = {
        let mut ledger = shared.lock();
        let on_global =
            fault == Fault::GlobalDrop || (fault == Fault::Garbage && ledger.rng.bool());
        if on_global {
            None
        } else {
            let candidates: Vec<TeamId> = ledger
                .teams
                .keys()
                .copied()
                .filter(|&t| fits(shared, &ledger, t, fault, now))
                .collect();
            if candidates.is_empty() {
                return;
            }
            Some(candidates[ledger.rng.usize(..candidates.len())])
        }
    };
    inject(shared, fault, team);
}

/// Fires the scheduled faults whose team has received enough messages and
/// can take them now; the rest wait for a later tick.
pub(super) fn fire_due_triggers(shared: &Arc<Shared>) {
    let due: Vec<_> = {
        let ledger = shared.lock();
        ledger
            .triggers
            .iter()
            .filter(|t| !t.fault.is_probability())
            .filter(|t| {
                ledger
                    .teams
                    .get(&t.team)
                    .is_some_and(|x| x.written >= t.after)
            })
            .copied()
            .collect()
    };
    for trigger in due {
        let on_global = trigger.fault == Fault::GlobalDrop
            || (trigger.fault == Fault::Garbage && trigger.garbage_on_global());
        if inject(shared, trigger.fault, (!on_global).then_some(trigger.team)) {
            shared.lock().triggers.retain(|t| *t != trigger);
        }
    }
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

/// Injects `fault` on `team`'s socket, or on Global for `None`, and books
/// it with its recovery. Returns false, injecting nothing, when the target
/// cannot take it now. A fault settled by the next reply on its Global
/// (a duplicate join, garbage on Global) gets that reply asked for at once:
/// the longer the wait, the likelier a Global drop makes it unobservable.
fn inject(shared: &Arc<Shared>, fault: Fault, team: Option<TeamId>) -> bool {
    let injected = inject_now(shared, fault, team);
    if injected && (fault == Fault::DuplicateJoin || (fault == Fault::Garbage && team.is_none())) {
        let shared = shared.clone();
        tokio::spawn(async move { ask_healthcheck(&shared).await });
    }
    injected
}

fn inject_now(shared: &Arc<Shared>, fault: Fault, team: Option<TeamId>) -> bool {
    let now = Instant::now();
    let mut ledger = shared.lock();
    if !ledger.chaos_on {
        return false;
    }
    let Some(team) = team else {
        return inject_on_global(&mut ledger, fault);
    };
    let Some((socket, ctl)) = target(shared, &ledger, team, fault, now) else {
        return false;
    };
    let before = ledger.teams.get(&team).map_or(0, |t| t.written);
    let reconnect = Recovery::Reconnect {
        team,
        before,
        back_at: None,
    };
    match fault {
        Fault::TeamClose | Fault::TeamErrorClose => {
            let code = if fault == Fault::TeamClose {
                1000
            } else {
                1011
            };
            if ctl.send(SocketCtl::Close(code)).is_err() {
                return false;
            }
            ledger.injected(fault, reconnect);
        }
        Fault::TeamReset => {
            if let Some(t) = ledger.teams.get_mut(&team) {
                t.paused = true;
            }
            tokio::spawn(reset_after_quiesce(shared.clone(), team, ctl));
        }
        Fault::Zombie => {
            if ctl.send(SocketCtl::Zombie).is_err() {
                return false;
            }
            ledger.team_socket_unusable(team, now);
            ledger.injected(fault, reconnect);
        }
        Fault::Garbage => {
            let junk = garbage(&mut ledger.rng, false);
            let watch = ledger.injected(
                fault,
                Recovery::KeptTeamSocket {
                    team,
                    socket,
                    armed: None,
                },
            );
            // The receiver lives until the socket's close is booked, which
            // needs this lock: the send cannot fail while it is held.
            let _ = ctl.send(SocketCtl::Inject(junk, watch));
        }
        Fault::DuplicateJoin => {
            let join = text(&GlobalServerEvent::TeamJoin { team_id: team });
            let Some(global) = ledger.global.as_ref() else {
                return false;
            };
            let global_id = global.id;
            if global.ctl.send(SocketCtl::Send(join)).is_err() {
                return false;
            }
            ledger.injected(
                fault,
                Recovery::SingleSocket {
                    team,
                    socket,
                    global: global_id,
                    sent_at: now,
                },
            );
        }
        Fault::Oversize => {
            if ctl
                .send(SocketCtl::Oversize(shared.scenario.oversize_bytes))
                .is_err()
            {
                return false;
            }
            ledger.injected(fault, reconnect);
        }
        Fault::SlowReader => {
            let pause = shared.scenario.slow_read_for;
            if ctl.send(SocketCtl::SlowRead(pause)).is_err() {
                return false;
            }
            if let Some(t) = ledger.teams.get_mut(&team) {
                t.slow_until = Some(now + pause);
            }
            ledger.injected(
                fault,
                Recovery::ExactAfterPause {
                    team,
                    until: now + pause,
                },
            );
        }
        // Struck per occasion (request, socket), see `strikes`; Global's
        // faults go through `inject_on_global`.
        Fault::ConnectError | Fault::DelayedHello | Fault::GlobalDrop => return false,
    }
    true
}

/// Injects a Global drop or garbage on Global.
fn inject_on_global(ledger: &mut Ledger, fault: Fault) -> bool {
    match fault {
        Fault::GlobalDrop => {
            let reset = ledger.rng.bool();
            let Some(global) = ledger.global.take() else {
                return false;
            };
            let how = if reset {
                SocketCtl::Reset
            } else {
                SocketCtl::Close(1001)
            };
            if global.ctl.send(how).is_err() {
                return false;
            }
            ledger.global_closed(global.id);
            ledger.injected(fault, Recovery::NewGlobal { dropped: global.id });
            true
        }
        Fault::Garbage => {
            let junk = garbage(&mut ledger.rng, true);
            let Some((id, ctl)) = ledger.global.as_ref().map(|g| (g.id, g.ctl.clone())) else {
                return false;
            };
            if ctl.send(SocketCtl::Send(junk)).is_err() {
                return false;
            }
            let since = Instant::now();
            ledger.injected(fault, Recovery::KeptGlobal { global: id, since });
            true
        }
        _ => false,
    }
}

/// How long a quiescing socket may take to acknowledge its pause.
const PAUSE_ACK_WAIT: Duration = Duration::from_secs(2);
/// How many healthchecks may be asked to confirm the count before a reset.
const CONFIRM_TRIES: u32 = 40;

/// A reset may discard data in flight, so first stop the team's socket
/// writing and wait until the client has counted every message written;
/// only then reset (booked as team-reset). If the client cannot confirm,
/// close gracefully instead (booked as team-close).
async fn reset_after_quiesce(
    shared: Arc<Shared>,
    team: TeamId,
    ctl: mpsc::UnboundedSender<SocketCtl>,
) {
    let (ack, acked) = oneshot::channel();
    let paused = ctl.send(SocketCtl::Pause(ack)).is_ok()
        && tokio::time::timeout(PAUSE_ACK_WAIT, acked)
            .await
            .is_ok_and(|r| r.is_ok());
    let mut confirmed = false;
    if paused {
        for _ in 0..CONFIRM_TRIES {
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
    let mut ledger = shared.lock();
    let before = ledger.teams.get(&team).map_or(0, |t| t.written);
    if ctl.send(how).is_ok() {
        ledger.injected(
            fault,
            Recovery::Reconnect {
                team,
                before,
                back_at: None,
            },
        );
    } else if let Some(t) = ledger.teams.get_mut(&team) {
        t.paused = false;
    }
}
