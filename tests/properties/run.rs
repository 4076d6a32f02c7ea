//! Plays a history through a core, the wire and the model, checking every
//! rule after every step, then checks that the fleet recovers once the
//! server behaves.

use std::collections::VecDeque;
use std::time::Duration;

use switchboard::NetEvent;
use switchboard::protocol::{GlobalServerEvent, TeamId};
use switchboard::{Config, Core};

use super::history::{Act, History};
use super::model::{Model, Seen, ensure};
use super::wire::Wire;

/// Most steps one `Settle` may take.
const SETTLE_STEPS: u64 = 1_000;

/// The core, the network around it, and the model beside it.
struct Run {
    config: Config,
    seed: u64,
    core: Core,
    /// The driver's inbox: what the wire produced, handed to the core at
    /// most `max_events_per_step` per step, as the runtime does.
    inbox: VecDeque<NetEvent>,
    wire: Wire,
    model: Model,
}

impl Run {
    fn new(config: Config, seed: u64) -> Run {
        let core = Core::new(&config, seed).expect("valid config");
        let model = Model::new(&config);
        Run {
            config,
            seed,
            core,
            inbox: VecDeque::new(),
            wire: Wire::default(),
            model,
        }
    }

    /// Puts what the wire produced in the inbox (and tells the model).
    fn hand_over(&mut self) -> Result<(), String> {
        for (event, counted) in std::mem::take(&mut self.wire.out) {
            self.inbox.push_back(event.clone());
            self.model.pushed(event, counted);
        }
        Ok(())
    }

    /// Hands the core one batch from the inbox, as the runtime does before
    /// each step.
    fn feed(&mut self) {
        let batch = self.inbox.len().min(self.config.max_events_per_step);
        self.core.handle_all(self.inbox.drain(..batch));
    }

    /// Events not yet applied: in the inbox or handed over.
    fn waiting(&self) -> usize {
        self.inbox.len() + self.core.pending_events()
    }

    /// One step of the core, then the checks, then the network's reaction.
    fn step(&mut self, how: impl FnOnce(&mut Core)) -> Result<(), String> {
        self.wire.flush_runs()?;
        self.hand_over()?;
        self.feed();
        how(&mut self.core);
        self.after()
    }

    fn after(&mut self) -> Result<(), String> {
        let commands = self.core.drain_commands();
        self.core.drain_team_events();
        self.model
            .after_step(&self.core, self.waiting(), &commands)?;
        self.wire.apply(&commands);
        if self.wire.eager {
            self.wire.react()?;
            self.hand_over()?;
        }
        Ok(())
    }

    /// Every consequence at this instant: `Core::settle` itself when every
    /// waiting event fits in one tick (the model sees the settle as one
    /// step), else zero-length steps checked one by one.
    fn settle(&mut self) -> Result<(), String> {
        self.wire.flush_runs()?;
        self.hand_over()?;
        if self.inbox.len() <= self.config.max_events_per_step {
            self.feed();
            self.core
                .settle(SETTLE_STEPS)
                .map_err(|e| format!("settle: {e}"))?;
            return self.after();
        }
        for _ in 0..SETTLE_STEPS {
            if self.inbox.is_empty() && !self.core.has_pending_work() {
                return Ok(());
            }
            self.step(|core| core.step_by(Duration::ZERO))?;
        }
        Err("the core never settled".into())
    }

    fn jump(&mut self) -> Result<(), String> {
        match self.core.next_deadline() {
            Some(at) => {
                let now = self.core.now();
                ensure!(
                    at + self.core.tick() >= now,
                    "a deadline {at:?} long past at {now:?}"
                );
                self.step(|core| core.step_by(at.saturating_sub(now)))
            }
            None => self.step(Core::step),
        }
    }

    /// A new process resumes from the store; `clean` saves it first.
    fn restart(&mut self, clean: bool) -> Result<(), String> {
        if clean {
            self.commit();
        }
        let saved: Vec<_> = self.model.store.values().cloned().collect();
        self.core = Core::new(&self.config, self.seed).expect("valid config");
        // The old process's inbox died with it.
        self.inbox.clear();
        self.core
            .restore(&saved)
            .map_err(|e| format!("restore: {e}"))?;
        // The old process's sockets died with it; the server stays as it was.
        self.wire = Wire {
            eager: self.wire.eager,
            ignore_closes: self.wire.ignore_closes,
            refuse_global: self.wire.refuse_global,
            ..Wire::default()
        };
        self.model.restarted(&self.core, clean)
    }

    fn commit(&mut self) {
        for saved in self.core.changed_teams() {
            self.model.store.insert(saved.id, saved);
        }
    }

    fn pick<T: Copy>(list: &[T], which: u8) -> Option<T> {
        (!list.is_empty()).then(|| list[usize::from(which) % list.len()])
    }

    fn act(&mut self, act: &Act) -> Result<(), String> {
        let w = &mut self.wire;
        let team = |t: u8| TeamId(u64::from(t));
        match *act {
            Act::Join(t) => w.global_says(&GlobalServerEvent::TeamJoin { team_id: team(t) })?,
            Act::LeaveOnGlobal(t) => {
                w.global_says(&GlobalServerEvent::TeamLeft { team_id: team(t) })?;
            }
            Act::Answer { which, url } => w.answer(which, url)?,
            Act::Rejoin(t) => {
                w.global_says(&GlobalServerEvent::TeamLeft { team_id: team(t) })?;
                w.global_says(&GlobalServerEvent::TeamJoin { team_id: team(t) })?;
            }
            Act::IgnoreCloses(on) => w.ignore_closes = on,
            Act::AnswerTeam { team: t, url } => w.global_says(&GlobalServerEvent::TeamConnect {
                team_id: team(t),
                ws_url: url.text(u64::from(t)),
            })?,
            Act::Refuse { which, as_text } => w.refuse(which, as_text)?,
            Act::RefuseTeam { team: t } => w.global_says(&GlobalServerEvent::Error {
                message: "no such team".into(),
                received_message: Some(serde_json::json!({"type": "team.connect", "team_id": t})),
                team_id: None,
            })?,
            Act::OtherError { received } => w.global_says(&GlobalServerEvent::Error {
                message: "whatever".into(),
                received_message: received.then(|| serde_json::json!({"type": "healthcheck"})),
                team_id: Some(TeamId(1)),
            })?,
            Act::Healthcheck => w.global_says(&GlobalServerEvent::Healthcheck)?,
            Act::BadGlobal(bad) => {
                if let Some(g) = w.global() {
                    w.bad(g, bad)?;
                }
            }
            Act::Goodbye => w.global_says(&GlobalServerEvent::Goodbye)?,
            Act::RefuseGlobalOpens(n) => w.refuse_global = n,
            Act::DropGlobal(end) => {
                if let Some(g) = w.global() {
                    w.end_one(g, end)?;
                }
            }
            Act::Open { which, hello } => {
                if let Some(conn) = Self::pick(&w.opening(), which) {
                    w.open_one(conn, hello)?;
                }
            }
            Act::OpenFail { which } => {
                if let Some(conn) = Self::pick(&w.opening(), which) {
                    w.fail_one(conn)?;
                }
            }
            Act::End { which, end } => {
                if let Some(conn) = Self::pick(&w.open(), which) {
                    w.end_one(conn, end)?;
                }
            }
            Act::Messages {
                which,
                n,
                props,
                escaped,
            } => {
                if let Some(conn) = Self::pick(&w.open_teams(), which) {
                    w.messages(conn, n, props, escaped)?;
                }
            }
            Act::Hello { which } => {
                if let Some(conn) = Self::pick(&w.open_teams(), which) {
                    w.hello(conn)?;
                }
            }
            Act::Pong { which, id } => {
                if let Some(conn) = Self::pick(&w.open_teams(), which) {
                    w.pong(conn, id)?;
                }
            }
            Act::LeaveOnSocket { which, other } => {
                if let Some(conn) = Self::pick(&w.open_teams(), which) {
                    w.leave_on_socket(conn, other)?;
                }
            }
            Act::BadTeam { which, bad } => {
                if let Some(conn) = Self::pick(&w.open_teams(), which) {
                    w.bad(conn, bad)?;
                }
            }
            Act::Control { which } => {
                if let Some(conn) = Self::pick(&w.open(), which) {
                    w.control(conn)?;
                }
            }
            Act::Eager(on) => {
                w.eager = on;
                if on {
                    w.react()?;
                }
            }
            Act::Commit => self.commit(),
            Act::Restart => self.restart(true)?,
            Act::Crash => self.restart(false)?,
            Act::Step => self.step(Core::step)?,
            Act::Ticks(n) => self.step(|core| core.step_ticks(u64::from(n)))?,
            Act::StepBy(ms) => self.step(|core| core.step_by(Duration::from_millis(ms.into())))?,
            Act::Settle => self.settle()?,
            Act::Jump => self.jump()?,
        }
        self.hand_over()
    }

    /// Whether every team the model says is joined is connected, and
    /// Global is ready.
    fn recovered(&self) -> bool {
        self.core.global().ready_conn().is_some()
            && self
                .model
                .joined()
                .into_iter()
                .all(|id| self.core.team(id).is_some_and(|t| t.connected))
    }

    /// Once the server answers everything, the fleet is back within a
    /// bound (or, after goodbye, the run finishes within one): as fast as
    /// the ticks, the request waves and the longest backoff allow.
    fn recover(&mut self) -> Result<(), String> {
        self.wire.eager = true;
        self.wire.ignore_closes = false;
        self.wire.refuse_global = 0;
        self.wire.react()?;
        self.hand_over()?;
        let ms = |d: Duration| d.as_millis() as u64;
        let waves =
            u64::from(super::history::TEAMS) / self.config.max_requests_in_flight as u64 + 1;
        let bound = 2 * ms(self.config.backoff_max)
            + ms(self.config.close_timeout)
            + (waves + 4) * 3 * ms(self.config.tick);
        let start = self.core.now();
        let deadline = start + Duration::from_millis(bound);
        loop {
            // A goodbye still on its way may arrive meanwhile.
            let ending = self.model.ended();
            let done = if ending {
                self.core.is_finished()
            } else {
                self.recovered()
            };
            if done {
                return Ok(());
            }
            ensure!(
                self.core.now() <= deadline,
                "not {} {}ms after the server started answering: {:?}",
                if ending { "finished" } else { "recovered" },
                bound,
                self.core.snapshot()
            );
            let idle = self.waiting() == 0 && !self.core.has_pending_work();
            let next = self.core.next_deadline();
            match next {
                Some(at) if idle && at > self.core.now() => {
                    let now = self.core.now();
                    self.step(|core| core.step_by(at - now))?;
                }
                _ => self.step(Core::step)?,
            }
        }
    }
}

/// Plays `history`, checking every rule after every step, then checks
/// recovery. Returns what it saw.
pub fn play(history: &History) -> Result<Seen, String> {
    let config = history.setup.config();
    let mut run = Run::new(config, history.setup.seed);
    run.step(Core::step)?;
    for (i, act) in history.acts.iter().enumerate() {
        run.act(act)
            .map_err(|e| format!("after act {i} ({act:?}): {e}"))?;
    }
    run.recover().map_err(|e| format!("recovery: {e}"))?;
    let mut seen = run.model.seen;
    seen.held_per_team = run.wire.max_held_per_team;
    Ok(seen)
}
