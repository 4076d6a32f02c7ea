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
//! CI runs a fixed seed and a few hundred cases; a longer run:
//! `PROPTEST_CASES=5000 cargo test --release --test properties`
//! (and `PROPTEST_RNG_SEED=N` for other histories).

mod properties {
    pub mod history;
    pub mod model;
    pub mod run;
    pub mod wire;
}

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, RngSeed, TestRunner};

use properties::history::{Act, Bad, Ending, History, PongId, Setup, Url, eager_history, history};
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

proptest! {
    #![proptest_config(config(CI_CASES))]

    /// Anything can happen, from a cold start.
    #[test]
    fn every_rule_holds_on_random_histories(h in history(1..300)) {
        play(&h).map_err(TestCaseError::fail)?;
    }

    /// The server answers everything until told otherwise: the fleet is
    /// up, and then things go wrong.
    #[test]
    fn every_rule_holds_when_a_connected_fleet_meets_trouble(h in eager_history(1..300)) {
        play(&h).map_err(TestCaseError::fail)?;
    }
}

proptest! {
    #![proptest_config(config(CI_CASES / 8))]

    /// Long histories: slow drifts (timers, queues, counts) have time to show.
    #[test]
    fn every_rule_holds_on_long_histories(h in history(800..1500)) {
        play(&h).map_err(TestCaseError::fail)?;
    }
}

/// How many of a sample of histories reached each state that matters.
#[derive(Debug, Default)]
struct Reached {
    histories: u64,
    connected: u64,
    messages: u64,
    replies: u64,
    /// Histories whose cap is small enough to reach (at most 3 slots)...
    small_cap: u64,
    /// ...and of those, how many filled every slot.
    filled_to_cap: u64,
    crash_restores: u64,
    goodbyes: u64,
    backoffs: u64,
    pong_timeouts: u64,
}

/// Plays `n` histories of `strategy` (the properties' own seed and
/// generator) and counts the histories that reached each state.
fn reached(strategy: impl Strategy<Value = History>, n: u64) -> Reached {
    let mut runner = TestRunner::new(config(48));
    let mut r = Reached::default();
    let (mut steps, mut timers, mut per_team, mut held) = (0, 0, 0.0f64, 0);
    for _ in 0..n {
        let h = strategy.new_tree(&mut runner).expect("a history").current();
        let seen = play(&h).expect("the history holds");
        r.histories += 1;
        r.connected += u64::from(seen.connected > 0);
        r.messages += u64::from(seen.messages > 0);
        r.replies += u64::from(seen.replies > 0);
        if h.setup.cap <= 3 {
            r.small_cap += 1;
            r.filled_to_cap += u64::from(seen.max_in_flight == h.setup.cap);
        }
        r.crash_restores += u64::from(seen.crash_restores > 0);
        r.goodbyes += u64::from(seen.after_goodbye > 0);
        r.backoffs += u64::from(seen.backing_off > 0);
        r.pong_timeouts += u64::from(seen.pong_timeouts > 0);
        steps += seen.steps;
        timers = timers.max(seen.max_timers);
        per_team = per_team.max(seen.max_timers_per_team);
        held = held.max(seen.held_per_team);
    }
    eprintln!(
        "{n} histories, {steps} steps checked; most timers held {timers} \
         ({per_team:.1} per joined team); most requests for one team held \
         by the server at once {held}; reached: {r:?}"
    );
    r
}

/// The properties above pass vacuously if the histories never reach the
/// states that matter: they must connect teams, count messages, answer
/// healthchecks, fill the request slots where the cap can be reached,
/// restore teams after a crash, act on goodbye, back off, and declare
/// links dead for want of a pong.
#[test]
fn random_histories_reach_the_states_that_matter() {
    for r in [
        reached(eager_history(50..300), 48),
        reached(history(50..300), 48),
    ] {
        // Each floor about half what the fixed seed reaches (in brackets,
        // eager then cold), so a generator change that starves a state
        // fails here.
        let n = r.histories;
        let at_least = |what: &str, got: u64, floor: u64| {
            assert!(got >= floor, "{got}/{n} histories {what}: {r:?}");
        };
        at_least("connected a team", r.connected, n * 5 / 6); // [44, 41]
        at_least("counted messages", r.messages, n / 2); // [34, 27]
        at_least("answered a healthcheck", r.replies, n / 2); // [38, 36]
        at_least("had a cap of at most 3", r.small_cap, n / 8); // [15, 15]
        at_least(
            "filled every request slot of a small cap",
            r.filled_to_cap,
            r.small_cap / 2,
        ); // [11, 11]
        at_least("restored teams after a crash", r.crash_restores, n / 4); // [21, 20]
        at_least("acted on goodbye", r.goodbyes, n / 6); // [17, 13]
        at_least("backed off", r.backoffs, n / 3); // [29, 26]
        at_least("timed out a pong", r.pong_timeouts, n / 8); // [11, 10]
    }
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
