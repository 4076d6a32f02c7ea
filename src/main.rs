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
/// A background thread hands back pages unused for 100 ms: with jemalloc's
/// default 10 s decay a burst's freed pages stayed resident and raised the
/// peak RSS (README, Performance). The thread sleeps while nothing is left
/// to purge, so an idle fleet still costs next to nothing.
#[cfg(all(feature = "jemalloc", target_os = "linux", not(target_env = "msvc")))]
#[unsafe(export_name = "_rjem_malloc_conf")]
static ALLOCATOR_SETTINGS: Option<&'static u8> =
    Some(&b"background_thread:true,dirty_decay_ms:100\0"[0]);

fn main() -> std::process::ExitCode {
    switchboard::cli::main()
}
