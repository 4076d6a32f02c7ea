//! SIGINT and SIGTERM as one stream, for the commands that count them
//! (`connect` shuts down, `worker` hands its teams over).

use tracing::warn;

/// Both signals, watched from creation on.
pub struct Signals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    /// Starts watching SIGTERM (SIGINT is watched per wait). Must run on a
    /// tokio runtime.
    pub fn new() -> Signals {
        Signals {
            #[cfg(unix)]
            term: match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => Some(term),
                Err(error) => {
                    warn!(%error, "cannot watch SIGTERM");
                    None
                }
            },
        }
    }

    /// Waits for the next SIGINT or SIGTERM.
    pub async fn next(&mut self) {
        #[cfg(unix)]
        let terminated = async {
            match self.term.as_mut() {
                Some(term) => term.recv().await,
                None => std::future::pending().await,
            }
        };
        #[cfg(not(unix))]
        let terminated = std::future::pending::<Option<()>>();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminated => {}
        }
    }
}
