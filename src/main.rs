//! The switchboard binary: parse the command line, set up logging, and call
//! into the library. No protocol logic lives here.

/// jemalloc, not glibc's malloc: under reconnect churn glibc's heap kept
/// freed per-connection buffers resident (the 10-minute soak's RSS rose
/// ~0.6 MiB a minute while the live heap stayed flat); jemalloc returns
/// them and the same soak stays flat (README, soak).
#[cfg(all(feature = "jemalloc", not(target_env = "msvc")))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's settings, read at start (`_RJEM_MALLOC_CONF` overrides them).
/// Pages unused for 100 ms are handed back: with jemalloc's default 10 s
/// decay a burst's freed pages stayed resident and raised the peak RSS
/// (README, Performance). No background thread: the purging happens on the
/// allocating threads as they work, and an idle fleet costs no CPU at all
/// (2026-12-03, yardstick at 10,000 x 10: the thread cost 1-4 ms of the
/// 5 s idle phase; without it 0 in the median, at 3-5% more peak RSS).
/// Handing pages back at once (`dirty_decay_ms:0`) was tried: 1,000 x
/// 1,000 peaked 4 MiB lower, but 10,000 x 10 spent 0.3-0.4 s more system
/// time (twice the `madvise` calls, and the pages faulted back in).
#[cfg(all(feature = "jemalloc", target_os = "linux", not(target_env = "msvc")))]
#[unsafe(export_name = "_rjem_malloc_conf")]
static ALLOCATOR_SETTINGS: Option<&'static u8> =
    Some(&b"background_thread:false,dirty_decay_ms:100\0"[0]);

fn main() -> std::process::ExitCode {
    switchboard::cli::main()
}
