//! The library's runtime on its own thread, as the binary runs it, with
//! test-friendly timings, for end-to-end tests.

use std::thread::JoinHandle;
use std::time::Duration;

use crate::Config;
use crate::runtime::{self, RunConfig, RunError, RunOutcome, StopHandle};
use crate::testkit::server::DEADLINE;
use crate::transport::TransportConfig;

/// The library's runtime on its own thread, as the binary runs it.
pub struct Client {
    /// Stops it.
    pub stop: StopHandle,
    /// The driver thread: its result is the run's.
    pub thread: JoinHandle<Result<RunOutcome, RunError>>,
}

/// Test-friendly timings: short ticks and backoff, pings out of the way.
pub fn config(global_url: String) -> RunConfig {
    RunConfig {
        core: Config {
            global_url,
            tick: Duration::from_millis(5),
            ping_interval: Duration::from_secs(30),
            pong_timeout: Duration::from_secs(30),
            backoff_min: Duration::from_millis(10),
            backoff_max: Duration::from_millis(200),
            ..Config::default()
        },
        transport: TransportConfig::default(),
        seed: 1,
        status_interval: None,
        give_up_after: None,
        tap: None,
    }
}

/// Starts a client with [`config`]; `tweak` adjusts it. Must be called
/// inside a tokio runtime (its sockets run there).
pub fn start(global_url: String, tweak: impl FnOnce(&mut RunConfig)) -> Client {
    let mut config = config(global_url);
    tweak(&mut config);
    let stop = StopHandle::new();
    let handle = tokio::runtime::Handle::current();
    let thread = {
        let stop = stop.clone();
        std::thread::spawn(move || runtime::run(&config, handle, &stop, &mut []))
    };
    Client { stop, thread }
}

impl Client {
    /// Waits for the run to end, at most [`DEADLINE`].
    ///
    /// # Panics
    /// If the driver panicked, the run did not start, or it did not end
    /// within the deadline (asked to stop, then left behind: the test fails
    /// instead of hanging).
    pub async fn finish(self) -> RunOutcome {
        let stop = self.stop.clone();
        join(self.thread, || stop.force())
            .await
            .expect("no panic")
            .expect("run ok")
    }
}

/// Joins a thread from async code, waiting at most [`DEADLINE`]: a thread
/// that does not end fails the test instead of hanging it. On the deadline,
/// `give_up` runs first (to ask the thread to stop), then this panics; the
/// thread is left to the process's exit. Not `spawn_blocking`: a runtime
/// waits for its blocking tasks when it shuts down, so a stuck join would
/// hang the test anyway.
///
/// # Panics
/// If the thread did not end within [`DEADLINE`].
pub async fn join<T: Send + 'static>(
    thread: JoinHandle<T>,
    give_up: impl FnOnce(),
) -> std::thread::Result<T> {
    let (done, joined) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let _ = done.send(thread.join());
    });
    match tokio::time::timeout(DEADLINE, joined).await {
        Ok(Ok(result)) => result,
        Ok(Err(_)) => panic!("the joining thread ended without a result"),
        Err(_) => {
            give_up();
            panic!("thread still running after {DEADLINE:?}");
        }
    }
}
