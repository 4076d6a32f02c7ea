//! A real `nats-server` with JetStream for the tests: on a port it picks
//! itself (`-p -1`, read back from its log), with its store in a temporary
//! directory, killed when dropped. `.ci/test` installs Debian's
//! `nats-server`; a machine without one fails here with that advice.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use async_nats::jetstream;

/// How long a server gets to start.
const START: Duration = Duration::from_secs(20);

/// A running server.
pub struct Nats {
    child: Child,
    /// Its client port.
    pub port: u16,
}

impl Nats {
    /// Starts a server storing under `dir`, on `port` (0: any free port).
    pub fn start(dir: &Path, port: u16) -> Nats {
        Nats::start_with(dir, port, &[])
    }

    /// [`Nats::start`], with more arguments (a cluster's, say).
    pub fn start_with(dir: &Path, port: u16, extra: &[String]) -> Nats {
        let port_arg = if port == 0 {
            "-1".to_string()
        } else {
            port.to_string()
        };
        let mut child = Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", &port_arg, "-sd"])
            .arg(dir)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("nats-server runs (apt-get install nats-server; .ci/test does)");
        let stderr = child.stderr.take().expect("piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut ready = (None, false);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("Listening for client connections on ").nth(1) {
                    ready.0 = rest
                        .rsplit(':')
                        .next()
                        .and_then(|p| p.trim().parse::<u16>().ok());
                }
                ready.1 |= line.contains("Server is ready");
                if let (Some(port), true) = ready {
                    let _ = tx.send(port);
                    ready = (None, false);
                }
            }
        });
        let port = match rx.recv_timeout(START) {
            Ok(port) => port,
            Err(_) => {
                let _ = child.kill();
                panic!("nats-server did not get ready within {START:?}");
            }
        };
        Nats { child, port }
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills it at once (SIGKILL), as a crash would.
    pub fn kill(mut self) -> u16 {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.port
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One record read back from the stream.
#[derive(Debug, Clone)]
pub struct Stored {
    pub subject: String,
    pub msg_id: String,
    pub payload: serde_json::Value,
}

/// Every record in `stream`, in stream order, read by an ordered consumer
/// (one request per record took a minute for 100,000). The tests' streams
/// keep every record (nothing deletes, no limit is reached), so a sequence
/// from the first to the last that is not delivered, in order, fails the
/// test: a record lost in the store must not pass for a gap.
pub async fn read_stream(url: &str, stream: &str) -> Vec<Stored> {
    use futures_util::StreamExt;
    let client = async_nats::connect(url).await.expect("connect to NATS");
    let js = jetstream::new(client);
    let mut stream = js.get_stream(stream).await.expect("the stream exists");
    let info = stream.info().await.expect("stream info");
    let (first, last, count) = (
        info.state.first_sequence,
        info.state.last_sequence,
        info.state.messages,
    );
    let mut out = Vec::new();
    if count == 0 {
        return out;
    }
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig::default())
        .await
        .expect("an ordered consumer");
    let mut messages = consumer.messages().await.expect("the consumer's messages");
    for seq in first..=last {
        let message = tokio::time::timeout(Duration::from_secs(30), messages.next())
            .await
            .unwrap_or_else(|_| panic!("stream sequence {seq} of {first}..={last} never came"))
            .unwrap_or_else(|| panic!("the consumer ended before sequence {seq}"))
            .unwrap_or_else(|e| panic!("reading stream sequence {seq} of {first}..={last}: {e}"));
        let at = message.info().expect("message info").stream_sequence;
        assert_eq!(at, seq, "stream sequences in order, none missing");
        let msg_id = message
            .headers
            .as_ref()
            .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
            .map(|v| v.as_str().to_owned())
            .unwrap_or_default();
        out.push(Stored {
            subject: message.subject.to_string(),
            msg_id,
            payload: serde_json::from_slice(&message.payload).expect("JSON payload"),
        });
    }
    assert_eq!(
        out.len() as u64,
        count,
        "records read against the stream's own count"
    );
    out
}
