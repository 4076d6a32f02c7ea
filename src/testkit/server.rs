//! A scripted websocket server for end-to-end tests: binds 127.0.0.1:0 and
//! hands each accepted connection to the test as a [`Conn`] it drives by
//! hand (send JSON or raw bytes, close, reset, freeze, stop reading). Every
//! wait has a deadline ([`DEADLINE`]); nothing sleeps to let time pass.
//! Test code: a missed deadline panics, naming what it waited for.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

/// How long any single wait may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(15);

/// A scripted websocket server.
pub struct Server {
    /// Where it listens.
    pub addr: SocketAddr,
    conns: mpsc::UnboundedReceiver<Conn>,
}

enum Cmd {
    Send(Message),
    /// Drop the TCP connection with no close frame (RST via zero linger).
    Reset,
    /// Stop reading and writing, keeping TCP open: a black hole.
    Freeze,
    /// Stop reading, but keep sending what the test asks for: a peer that
    /// does not drain its socket.
    Deaf,
    /// Write raw bytes under the websocket layer (half a frame, say).
    Raw(Vec<u8>),
}

/// One accepted websocket.
pub struct Conn {
    /// The path the client asked for.
    pub path: String,
    cmds: mpsc::UnboundedSender<Cmd>,
    inbox: mpsc::UnboundedReceiver<Message>,
}

impl Server {
    /// Binds an ephemeral loopback port and starts accepting.
    ///
    /// # Panics
    /// If it cannot bind.
    pub async fn bind() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, conns) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let mut path = String::new();
                    // The callback's signature is tungstenite's, not ours.
                    #[allow(clippy::result_large_err)]
                    let callback = |req: &Request, resp: Response| {
                        path = req.uri().path().to_owned();
                        Ok(resp)
                    };
                    let Ok(ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else {
                        return;
                    };
                    let (cmd_tx, mut cmd_rx) = mpsc::unbounded_channel();
                    let (in_tx, inbox) = mpsc::unbounded_channel();
                    let _ = tx.send(Conn {
                        path,
                        cmds: cmd_tx,
                        inbox,
                    });
                    let mut ws = ws;
                    let mut reading = true;
                    loop {
                        tokio::select! {
                            msg = ws.next(), if reading => match msg {
                                Some(Ok(m)) => { let _ = in_tx.send(m); }
                                _ => break,
                            },
                            cmd = cmd_rx.recv() => match cmd {
                                Some(Cmd::Send(m)) => {
                                    if ws.send(m).await.is_err() { break; }
                                }
                                Some(Cmd::Reset) | None => {
                                    let _ = ws.get_ref().set_zero_linger();
                                    break;
                                }
                                Some(Cmd::Freeze) => {
                                    // Hold the socket, answer nothing, until
                                    // the test ends.
                                    let _ = cmd_rx.recv().await;
                                    break;
                                }
                                Some(Cmd::Deaf) => reading = false,
                                Some(Cmd::Raw(bytes)) => {
                                    use tokio::io::AsyncWriteExt;
                                    if ws.get_mut().write_all(&bytes).await.is_err() { break; }
                                }
                            },
                        }
                    }
                });
            }
        });
        Server { addr, conns }
    }

    /// A `ws://` URL for `path` on this server.
    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    /// The next accepted connection.
    ///
    /// # Panics
    /// If none arrives within [`DEADLINE`].
    pub async fn accept(&mut self) -> Conn {
        tokio::time::timeout(DEADLINE, self.conns.recv())
            .await
            .expect("a connection within the deadline")
            .expect("server running")
    }

    /// Whether another connection arrives within `wait` (for asserting
    /// that none does, the wait is bounded: it is not a sleep to let
    /// something happen, it is the window in which it must not).
    pub async fn accept_within(&mut self, wait: Duration) -> Option<Conn> {
        tokio::time::timeout(wait, self.conns.recv())
            .await
            .ok()
            .flatten()
    }
}

impl Conn {
    /// Sends a JSON text frame.
    pub fn send(&self, value: Value) {
        let _ = self.cmds.send(Cmd::Send(Message::text(value.to_string())));
    }

    /// Sends any websocket message.
    pub fn send_raw(&self, message: Message) {
        let _ = self.cmds.send(Cmd::Send(message));
    }

    /// Sends a close frame with `code`.
    pub fn close(&self, code: u16) {
        let frame = CloseFrame {
            code: code.into(),
            reason: "".into(),
        };
        let _ = self.cmds.send(Cmd::Send(Message::Close(Some(frame))));
    }

    /// Drops the TCP connection with a reset, no close frame.
    pub fn reset(&self) {
        let _ = self.cmds.send(Cmd::Reset);
    }

    /// Stops reading and writing, keeping TCP open: a black hole.
    pub fn freeze(&self) {
        let _ = self.cmds.send(Cmd::Freeze);
    }

    /// Stops reading, but keeps sending: a peer that does not drain.
    pub fn deaf(&self) {
        let _ = self.cmds.send(Cmd::Deaf);
    }

    /// Writes raw bytes under the websocket layer (half a frame, say).
    pub fn send_bytes(&self, bytes: Vec<u8>) {
        let _ = self.cmds.send(Cmd::Raw(bytes));
    }

    /// The next message from the client; `None` once the socket ended.
    ///
    /// # Panics
    /// If nothing arrives within [`DEADLINE`].
    pub async fn recv(&mut self) -> Option<Message> {
        tokio::time::timeout(DEADLINE, self.inbox.recv())
            .await
            .expect("a frame within the deadline")
    }

    /// The next JSON frame whose `type` is `kind`, skipping others.
    ///
    /// # Panics
    /// If the socket ends first, or the deadline passes.
    pub async fn expect(&mut self, kind: &str) -> Value {
        loop {
            match self.recv().await {
                Some(Message::Text(text)) => {
                    let value: Value = serde_json::from_str(text.as_str()).expect("client JSON");
                    if value["type"] == kind {
                        return value;
                    }
                }
                Some(Message::Close(_)) | None => panic!("socket ended waiting for {kind}"),
                Some(_) => {}
            }
        }
    }

    /// Waits until the client closes the socket; returns its close code
    /// (`None` if it dropped without a close frame).
    pub async fn closed_by_client(&mut self) -> Option<u16> {
        loop {
            match self.recv().await {
                Some(Message::Close(frame)) => return frame.map(|f| u16::from(f.code)),
                None => return None,
                Some(_) => {}
            }
        }
    }
}
