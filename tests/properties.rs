//! The core holds on histories nobody thought of: long random sequences of
//! joins, leaves, answers (right, stale, refused, unusable), socket opens,
//! failures and ends of every kind, runs of messages, pongs, errors,
//! healthchecks, bad frames, Global drops and refusals, goodbyes, restarts
//! from saved state and crashes, interleaved with ticks of every length —
//! all through the path a socket takes (a scripted transport over the
//! socket's own `Reader`). After every step a reference model checks every
//! rule of `PROTOCOL.md` it can see (see `properties/model.rs`); at the end
//! the server starts answering and the fleet must be back within a bound.
//!
//! A failure shrinks to a short history, printed one act per line; each one
//! found is kept below as a named regression test.
//!
//! A property passes vacuously if its cases never reach the states its
//! rules are about, so each also counts, over the cases it ran, those that
//! connected a team, counted messages, answered a healthcheck, filled a
//! small request cap, restored teams after a crash, acted on goodbye,
//! waited out a backoff and timed out a pong, and fails below a floor.
//!
//! CI runs a fixed seed and a few hundred cases; a longer run:
//! `PROPTEST_CASES=5000 cargo test --release --test properties`
//! (and `PROPTEST_RNG_SEED=N` for other histories).

mod properties {
    pub mod history;
    pub mod model;
    pub mod run;
    pub mod wire;
}

use std::cell::RefCell;

use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed, TestRunner};

use properties::history::{Act, Bad, Ending, History, PongId, Setup, Url, eager_history, history};
use properties::model::Seen;
use properties::run::play;

/// Cases per property in CI, unless `PROPTEST_CASES` says otherwise.
const CI_CASES: u32 = 96;

/// The seed CI uses, unless `PROPTEST_RNG_SEED` says otherwise: the same
/// histories on every run, so a red CI is a change in the code, not luck.
const CI_SEED: u64 = 0x5eed_0009;

fn config(cases: u32) -> Config {
    let mut config = Config::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = cases;
    }
    if std::env::var_os("PROPTEST_RNG_SEED").is_none() {
        config.rng_seed = RngSeed::Fixed(CI_SEED);
    }
    if std::env::var_os("PROPTEST_MAX_SHRINK_ITERS").is_none() {
        config.max_shrink_iters = 20_000;
    }
    if std::env::var_os("PROPTEST_MAX_SHRINK_TIME").is_none() {
        config.max_shrink_time = 120_000;
    }
    // Failures become named tests below, not files beside the sources.
    config.failure_persistence = None;
    config
}

/// How many of a property's cases reached each state that matters: a rule
/// about a state no case reached was checked on nothing.
#[derive(Debug, Default)]
struct Reached {
    cases: u64,
    connected: u64,
    messages: u64,
    replies: u64,
    /// Cases whose cap is small enough to reach (at most 3 slots; six
    /// teams never fill 512)...
    small_cap: u64,
    /// ...and of those, how many had every slot in flight at once.
    filled_to_cap: u64,
    /// Crashes after which the new core restored teams from the store.
    crash_restores: u64,
    goodbyes: u64,
    /// A team waited out its backoff and retried.
    backoff_waits: u64,
    pong_timeouts: u64,
}

impl Reached {
    fn add(&mut self, h: &History, seen: &Seen) {
        self.cases += 1;
        self.connected += u64::from(seen.connected > 0);
        self.messages += u64::from(seen.messages > 0);
        self.replies += u64::from(seen.replies > 0);
        if h.setup.cap <= 3 {
            self.small_cap += 1;
            self.filled_to_cap += u64::from(seen.max_in_flight == h.setup.cap);
        }
        self.crash_restores += u64::from(seen.crash_restores > 0);
        self.goodbyes += u64::from(seen.after_goodbye > 0);
        self.backoff_waits += u64::from(seen.backoff_waits > 0);
        self.pong_timeouts += u64::from(seen.pong_timeouts > 0);
    }
}

/// The least share of a property's cases, in percent, that must reach each
/// state (`filled_to_cap`: of the cases with a small cap).
struct Floors {
    connected: u64,
    messages: u64,
    replies: u64,
    small_cap: u64,
    filled_to_cap: u64,
    crash_restores: u64,
    goodbyes: u64,
    backoff_waits: u64,
    pong_timeouts: u64,
}

impl Floors {
    /// Fails, naming the state, if the cases reached one too rarely.
    fn hold(&self, r: &Reached) {
        let n = r.cases;
        let check = |what: &str, got: u64, of: u64, percent: u64| {
            assert!(
                got * 100 >= of * percent,
                "only {got} of {of} cases {what} (want {percent}%): the property \
                 checked too little; reached: {r:?}"
            );
        };
        check("connected a team", r.connected, n, self.connected);
        check("counted messages", r.messages, n, self.messages);
        check("answered a healthcheck", r.replies, n, self.replies);
        check("had a cap of at most 3", r.small_cap, n, self.small_cap);
        let (filled, small) = (r.filled_to_cap, r.small_cap);
        check(
            "with a small cap filled it",
            filled,
            small,
            self.filled_to_cap,
        );
        check(
            "restored teams after a crash",
            r.crash_restores,
            n,
            self.crash_restores,
        );
        check("acted on goodbye", r.goodbyes, n, self.goodbyes);
        check(
            "waited out a backoff",
            r.backoff_waits,
            n,
            self.backoff_waits,
        );
        check("timed out a pong", r.pong_timeouts, n, self.pong_timeouts);
    }
}

/// Plays `cases` histories of `strategy` (CI's seed unless overridden),
/// checking every rule after every step; a failure shrinks to a short
/// history and panics with it. Then fails if the cases that passed reached
/// a state that matters less often than `floors` ask.
fn check(strategy: impl Strategy<Value = History>, cases: u32, floors: &Floors) {
    let mut runner = TestRunner::new(config(cases));
    let reached = RefCell::new(Reached::default());
    let (steps, timers, per_team, held) = (
        RefCell::new(0u64),
        RefCell::new(0usize),
        RefCell::new(0.0f64),
        RefCell::new(0usize),
    );
    let result = runner.run(&strategy, |h| {
        let seen = play(&h).map_err(TestCaseError::fail)?;
        reached.borrow_mut().add(&h, &seen);
        *steps.borrow_mut() += seen.steps;
        let mut timers = timers.borrow_mut();
        *timers = (*timers).max(seen.max_timers);
        let mut per_team = per_team.borrow_mut();
        *per_team = per_team.max(seen.max_timers_per_team);
        let mut held = held.borrow_mut();
        *held = (*held).max(seen.held_per_team);
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    let r = reached.into_inner();
    eprintln!(
        "{} cases, {} steps checked; most timers held {} ({:.1} per joined \
         team); most requests for one team held by the server at once {}; \
         reached: {r:?}",
        r.cases,
        steps.into_inner(),
        timers.into_inner(),
        per_team.into_inner(),
        held.into_inner(),
    );
    floors.hold(&r);
}

// Each property's floors are about half what CI's seed reaches (in
// brackets, of the cases run), so a change to the generator or the harness
// that starves a state fails the property that relied on it.

/// Anything can happen, from a cold start.
#[test]
fn every_rule_holds_on_random_histories() {
    let floors = Floors {
        connected: 40,      // [79]
        messages: 25,       // [50]
        replies: 30,        // [58]
        small_cap: 12,      // [24]
        filled_to_cap: 33,  // [16 of 24]
        crash_restores: 12, // [24]
        goodbyes: 13,       // [25]
        backoff_waits: 23,  // [45]
        pong_timeouts: 8,   // [15]
    };
    check(history(1..300), CI_CASES, &floors);
}

/// The server answers everything until told otherwise: the fleet is up,
/// and then things go wrong.
#[test]
fn every_rule_holds_when_a_connected_fleet_meets_trouble() {
    let floors = Floors {
        connected: 47,      // [90]
        messages: 34,       // [65]
        replies: 34,        // [66]
        small_cap: 12,      // [24]
        filled_to_cap: 31,  // [15 of 24]
        crash_restores: 15, // [30]
        goodbyes: 13,       // [26]
        backoff_waits: 28,  // [54]
        pong_timeouts: 9,   // [17]
    };
    check(eager_history(1..300), CI_CASES, &floors);
}

/// Long histories: slow drifts (timers, queues, counts) have time to show.
#[test]
fn every_rule_holds_on_long_histories() {
    let floors = Floors {
        connected: 50,      // [12]
        messages: 50,       // [12]
        replies: 46,        // [11]
        small_cap: 20,      // [5]
        filled_to_cap: 50,  // [5 of 5]
        crash_restores: 50, // [12]
        goodbyes: 37,       // [9]
        backoff_waits: 50,  // [12]
        pong_timeouts: 41,  // [10]
    };
    check(history(800..1500), CI_CASES / 8, &floors);
}

fn setup() -> Setup {
    Setup {
        cap: 512,
        events_per_tick: 65_536,
        max_teams: 100_000,
        secure: false,
        hosts: false,
        seed: 1,
    }
}

fn holds(acts: Vec<Act>) {
    let h = History {
        setup: setup(),
        acts,
    };
    if let Err(e) = play(&h) {
        panic!("{e}\n{h:?}");
    }
}

/// A sanity history written by hand: every act kind once, in a sensible
/// order, so a break in the harness shows here first.
#[test]
fn a_hand_written_history_holds() {
    use Act::*;
    holds(vec![
        Open {
            which: 0,
            hello: true,
        },
        Join(1),
        Join(2),
        Step,
        Answer {
            which: 0,
            url: Url::Good,
        },
        Refuse {
            which: 0,
            as_text: true,
        },
        Step,
        Open {
            which: 0,
            hello: true,
        },
        Messages {
            which: 0,
            n: 1030,
            props: 7,
            escaped: true,
        },
        Pong {
            which: 0,
            id: PongId::Unknown,
        },
        BadTeam {
            which: 0,
            bad: Bad::IllTyped,
        },
        BadGlobal(Bad::NotObject),
        Healthcheck,
        Settle,
        Ticks(120),
        Pong {
            which: 0,
            id: PongId::Newest,
        },
        Commit,
        Restart,
        Eager(true),
        Jump,
        Step,
        End {
            which: 1,
            end: Ending::Reset,
        },
        LeaveOnGlobal(2),
        Step,
        Goodbye,
        Step,
    ]);
}

// ---- Regressions: each history the properties found, shrunk by hand ----

/// Found by every property: a team socket that says `hello` and drops
/// (a server that accepts and hangs up) had its failures forgiven by the
/// `hello`, so its backoff never grew past `backoff_min` — a retry storm.
/// PROTOCOL.md: "Backoff is forgiven only by stability … A server that
/// says hello and drops at once, again and again, sees the backoff grow to
/// its cap".
#[test]
fn regression_hello_alone_forgives_no_failure() {
    use Act::*;
    holds(vec![
        Eager(true),
        Join(1),
        Step,
        Step,
        Step,
        // The team's socket (Global is c1, the team's c2) drops: one failure.
        End {
            which: 1,
            end: Ending::Remote(1000),
        },
        Step,
        // Backoff (at most 100ms), request, answer, open with hello.
        Ticks(11),
        Step,
        Step,
        Step,
    ]);
}

/// Found by reasoning about the timer property, then confirmed here (the
/// random search had not hit it in CI's cases): timers are never
/// cancelled, and a stale one leaves the heap only when it comes due. A
/// Global that flaps a team (`team.left`, `team.join`) every tick makes the
/// core send a request every tick, each setting a `request_timeout`
/// deadline: one more timer per tick for as long as that timeout, a
/// thousand per team at the default 10 s.
#[test]
fn regression_timers_stay_bounded_when_a_team_flaps() {
    use Act::*;
    let mut acts = vec![
        Open {
            which: 0,
            hello: true,
        },
        Join(1),
        Step,
    ];
    for _ in 0..250 {
        acts.push(Rejoin(1));
        acts.push(Step);
    }
    holds(acts);
}
