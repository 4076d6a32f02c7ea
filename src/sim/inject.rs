//! Injecting faults: which teams can take one now, what injecting each kind
//! does, and the recovery it is booked with. Faults come from the rates
//! (a random target) or from the schedule (a set team, at a set count);
//! both go through [`inject`], so they obey the same rules. The
//! per-connection kinds (a refused request, a delayed hello) strike on the
//! sockets' occasions, through [`refuse_connect`] and the `delay_*_hello`
//! functions.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;

use super::ask::ask_healthcheck;
use super::faults::{Fault, WatchId};
use super::ledger::Ledger;
use super::shared::Shared;
use super::socket::{SocketCtl, text};
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
    ledger.team(team).is_some_and(|t| {
        t.joined
            && t.connected()
            && !t.paused
            && t.reading(now)
            && !ledger.fault_pending(team)
            && t.remaining() >= needs(shared, fault)
    })
}

/// A team socket a fault is aimed at.
struct Target {
    team: TeamId,
    /// The socket's id.
    socket: u64,
    /// Its control channel.
    ctl: mpsc::UnboundedSender<SocketCtl>,
}

/// `team`'s socket, if it [fits](fits) `fault` now.
fn target(
    shared: &Shared,
    ledger: &Ledger,
    team: TeamId,
    fault: Fault,
    now: Instant,
) -> Option<Target> {
    if !fits(shared, ledger, team, fault, now) {
        return None;
    }
    let (socket, ctl) = ledger.team(team)?.socket.clone()?;
    Some(Target { team, socket, ctl })
}

/// Whether a per-connection fault (connect-error, delayed-hello) strikes
/// this occasion, for `team` or for Global (`None`): chaos is on, and the
/// team's trigger is due or the dice say so. A delayed hello only strikes a
/// team with messages to follow it.
fn strikes(shared: &Shared, ledger: &mut Ledger, fault: Fault, team: Option<TeamId>) -> bool {
    if !ledger.chaos_on() {
        return false;
    }
    if let Some(team) = team
        && ledger
            .team(team)
            .is_none_or(|t| t.remaining() < needs(shared, fault))
    {
        return false;
    }
    if team.is_some_and(|t| ledger.take_trigger(t, fault)) {
        return true;
    }
    let p = shared.chaos.rate(fault);
    p > 0.0 && ledger.dice().f64() < p
}

/// Whether the `team.connect` for `team` (written `written` so far) is
/// refused this time, as a connect-error; booked if so.
pub(crate) fn refuse_connect(
    shared: &Shared,
    ledger: &mut Ledger,
    team: TeamId,
    written: u64,
) -> bool {
    if !strikes(shared, ledger, Fault::ConnectError, Some(team)) {
        return false;
    }
    let recovery = Recovery::Reconnect {
        team,
        before: written,
        back_at: None,
    };
    ledger.injected(Fault::ConnectError, recovery);
    true
}

/// Whether the hello of `team`'s new socket `socket` is held back this
/// time, as a delayed-hello; booked if so, and named so the socket can
/// report the hello written.
pub(crate) fn delay_team_hello(
    shared: &Shared,
    ledger: &mut Ledger,
    team: TeamId,
    socket: u64,
) -> Option<WatchId> {
    strikes(shared, ledger, Fault::DelayedHello, Some(team)).then(|| {
        let recovery = Recovery::KeptTeamSocket {
            team,
            socket,
            armed: None,
        };
        ledger.injected(Fault::DelayedHello, recovery)
    })
}

/// Whether the hello of the new Global connection `global` is held back
/// this time, as a delayed-hello; booked if so.
pub(crate) fn delay_global_hello(shared: &Shared, ledger: &mut Ledger, global: u64) -> bool {
    let delayed = strikes(shared, ledger, Fault::DelayedHello, None);
    if delayed {
        let since = Instant::now();
        let kept = Recovery::KeptGlobal { global, since };
        ledger.injected(Fault::DelayedHello, kept);
    }
    delayed
}

/// A rate-driven fault: `fault` on a random team that can take it (or on
/// Global, for a Global drop and half the garbage).
pub(super) fn inject_random(shared: &Arc<Shared>, fault: Fault) {
    let now = Instant::now();
    let team = {
        let mut ledger = shared.lock();
        let on_global =
            fault == Fault::GlobalDrop || (fault == Fault::Garbage && ledger.dice().bool());
        if on_global {
            None
        } else {
            let candidates: Vec<TeamId> = ledger
                .teams()
                .keys()
                .copied()
                .filter(|&t| fits(shared, &ledger, t, fault, now))
                .collect();
            if candidates.is_empty() {
                return;
            }
            Some(candidates[ledger.dice().usize(..candidates.len())])
        }
    };
    inject(shared, fault, team);
}

/// Fires the scheduled faults whose team has received enough messages and
/// can take them now; the rest wait for a later tick.
pub(super) fn fire_due_triggers(shared: &Arc<Shared>) {
    let due = shared.lock().due_triggers();
    for trigger in due {
        let on_global = trigger.fault == Fault::GlobalDrop
            || (trigger.fault == Fault::Garbage && trigger.garbage_on_global());
        if inject(shared, trigger.fault, (!on_global).then_some(trigger.team)) {
            shared.lock().trigger_fired(trigger);
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
    if !ledger.chaos_on() {
        return false;
    }
    let Some(team) = team else {
        return inject_on_global(&mut ledger, fault);
    };
    let Some(on) = target(shared, &ledger, team, fault, now) else {
        return false;
    };
    let ledger = &mut ledger;
    match fault {
        Fault::TeamClose => order_reconnect(ledger, fault, &on, SocketCtl::Close(1000)),
        Fault::TeamErrorClose => order_reconnect(ledger, fault, &on, SocketCtl::Close(1011)),
        Fault::Oversize => {
            let huge = SocketCtl::Oversize(shared.scenario.oversize_bytes);
            order_reconnect(ledger, fault, &on, huge)
        }
        Fault::Zombie => zombie(ledger, &on, now),
        Fault::TeamReset => {
            ledger.team_paused(team);
            tokio::spawn(reset_after_quiesce(shared.clone(), team, on.ctl));
            true
        }
        Fault::Garbage => garbage_on_team(ledger, &on),
        Fault::DuplicateJoin => duplicate_join(ledger, &on, now),
        Fault::SlowReader => slow_reader(ledger, &on, shared.scenario.slow_read_for, now),
        // Struck per occasion (request, socket), see `strikes`; Global's
        // faults go through `inject_on_global`.
        Fault::ConnectError | Fault::DelayedHello | Fault::GlobalDrop => false,
    }
}

/// The recovery of a fault that takes the team's socket down: the team
/// back, caught up with what was written before.
fn reconnect(ledger: &Ledger, team: TeamId) -> Recovery {
    Recovery::Reconnect {
        team,
        before: ledger.written(team),
        back_at: None,
    }
}

/// Tells the socket `order` (a close, an oversized frame) and books
/// `fault` as waiting for the team to reconnect.
fn order_reconnect(ledger: &mut Ledger, fault: Fault, on: &Target, order: SocketCtl) -> bool {
    let recovery = reconnect(ledger, on.team);
    if on.ctl.send(order).is_err() {
        return false;
    }
    ledger.injected(fault, recovery);
    true
}

/// The socket stops answering and sending: unusable from now on, so the
/// team's outage starts now.
fn zombie(ledger: &mut Ledger, on: &Target, now: Instant) -> bool {
    let recovery = reconnect(ledger, on.team);
    if on.ctl.send(SocketCtl::Zombie).is_err() {
        return false;
    }
    ledger.team_socket_unusable(on.team, now);
    ledger.injected(Fault::Zombie, recovery);
    true
}

/// A garbage frame on the team's socket, armed once the socket wrote it.
fn garbage_on_team(ledger: &mut Ledger, on: &Target) -> bool {
    let junk = garbage(ledger.dice(), false);
    let watch = ledger.injected(
        Fault::Garbage,
        Recovery::KeptTeamSocket {
            team: on.team,
            socket: on.socket,
            armed: None,
        },
    );
    // The receiver lives until the socket's close is booked, which needs
    // the ledger's lock, held here: the send cannot fail.
    let _ = on.ctl.send(SocketCtl::Inject(junk, watch));
    true
}

/// `team.join` again, on Global, for a team already joined.
fn duplicate_join(ledger: &mut Ledger, on: &Target, now: Instant) -> bool {
    let join = text(&GlobalServerEvent::TeamJoin { team_id: on.team });
    let Some(global) = ledger.to_global(SocketCtl::Send(join)) else {
        return false;
    };
    ledger.injected(
        Fault::DuplicateJoin,
        Recovery::SingleSocket {
            team: on.team,
            socket: on.socket,
            global,
            sent_at: now,
        },
    );
    true
}

/// The server stops reading the team's socket for `pause`.
fn slow_reader(ledger: &mut Ledger, on: &Target, pause: Duration, now: Instant) -> bool {
    if on.ctl.send(SocketCtl::SlowRead(pause)).is_err() {
        return false;
    }
    ledger.reading_paused(on.team, now + pause);
    ledger.injected(
        Fault::SlowReader,
        Recovery::ExactAfterPause {
            team: on.team,
            until: now + pause,
        },
    );
    true
}

/// Injects a Global drop or garbage on Global.
fn inject_on_global(ledger: &mut Ledger, fault: Fault) -> bool {
    match fault {
        Fault::GlobalDrop => {
            let how = if ledger.dice().bool() {
                SocketCtl::Reset
            } else {
                SocketCtl::Close(1001)
            };
            let Some(dropped) = ledger.to_global(how) else {
                return false;
            };
            ledger.global_closed(dropped);
            ledger.injected(fault, Recovery::NewGlobal { dropped });
            true
        }
        Fault::Garbage => {
            let junk = garbage(ledger.dice(), true);
            let Some(global) = ledger.to_global(SocketCtl::Send(junk)) else {
                return false;
            };
            let since = Instant::now();
            ledger.injected(fault, Recovery::KeptGlobal { global, since });
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
    let confirmed = paused && count_confirmed(&shared, team).await;
    let (how, fault) = if confirmed {
        (SocketCtl::Reset, Fault::TeamReset)
    } else {
        (SocketCtl::Close(1000), Fault::TeamClose)
    };
    let mut ledger = shared.lock();
    let recovery = reconnect(&ledger, team);
    if ctl.send(how).is_ok() {
        ledger.injected(fault, recovery);
    } else {
        ledger.team_unpaused(team);
    }
}

/// Asks healthchecks until one shows `team` at every message written to
/// it; false if none does within [`CONFIRM_TRIES`].
async fn count_confirmed(shared: &Shared, team: TeamId) -> bool {
    for _ in 0..CONFIRM_TRIES {
        let written = shared.lock().written(team);
        if let Some(stats) = ask_healthcheck(shared).await
            && stats
                .iter()
                .any(|s| s.id == team && s.message_count == written)
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    false
}
