//! The core's contract with the network, as NATS messages: one batch of
//! commands per step per worker, one batch of events per flush per worker.
//!
//! Both are JSON objects. A command batch names the leader's epoch (the
//! fencing token), the worker incarnation it is for, and its sequence
//! number in that (epoch, incarnation) pair, counting from 1; commands are
//! arrays: `["o",conn,team,url]`, `["s",conn,text]`, `["p",conn]`,
//! `["c",conn,code]`, `["a",conn]`. An event batch names the epoch it
//! serves, the worker and its incarnation, and its sequence number in that
//! (epoch, incarnation), counting from 1; its events are the flight recorder's
//! encoding ([`crate::record::codec`]), so one event has one encoding
//! everywhere.

use serde_json::{Value, json};

use crate::bridge::{ConnId, ConnKind, NetCommand, NetEvent};
use crate::core::AdoptedSocket;
use crate::protocol::TeamId;
use crate::record::codec;

/// A message that is not a batch this build reads.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad batch: {0}")]
pub struct BadBatch(pub String);

fn bad(what: impl Into<String>) -> BadBatch {
    BadBatch(what.into())
}

/// A team command for a worker (Global's never leave the leader).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Open the team's socket.
    Open {
        /// The leader's id for it.
        conn: ConnId,
        /// The team.
        team: TeamId,
        /// Where.
        url: String,
    },
    /// Send one text frame.
    Send {
        /// On which socket.
        conn: ConnId,
        /// The frame.
        text: String,
    },
    /// A websocket ping.
    Probe {
        /// Which socket.
        conn: ConnId,
    },
    /// A close handshake with this code.
    Close {
        /// Which socket.
        conn: ConnId,
        /// The code.
        code: u16,
    },
    /// Drop at once.
    Abort {
        /// Which socket.
        conn: ConnId,
    },
}

impl Command {
    /// The worker's form of a team command; `None` for Global's.
    pub fn from_net(command: NetCommand) -> Option<Command> {
        Some(match command {
            NetCommand::Open {
                conn,
                kind: ConnKind::Team(team),
                url,
            } => Command::Open { conn, team, url },
            NetCommand::Open {
                kind: ConnKind::Global,
                ..
            } => return None,
            NetCommand::Send { conn, text } => Command::Send {
                conn,
                text: text.as_str().to_owned(),
            },
            NetCommand::Probe { conn } => Command::Probe { conn },
            NetCommand::Close { conn, code } => Command::Close { conn, code },
            NetCommand::Abort { conn } => Command::Abort { conn },
        })
    }

    /// The transport's form.
    pub fn into_net(self) -> NetCommand {
        match self {
            Command::Open { conn, team, url } => NetCommand::Open {
                conn,
                kind: ConnKind::Team(team),
                url,
            },
            Command::Send { conn, text } => NetCommand::Send {
                conn,
                text: text.into(),
            },
            Command::Probe { conn } => NetCommand::Probe { conn },
            Command::Close { conn, code } => NetCommand::Close { conn, code },
            Command::Abort { conn } => NetCommand::Abort { conn },
        }
    }

    /// The socket it concerns.
    pub fn conn(&self) -> ConnId {
        match self {
            Command::Open { conn, .. }
            | Command::Send { conn, .. }
            | Command::Probe { conn }
            | Command::Close { conn, .. }
            | Command::Abort { conn } => *conn,
        }
    }

    fn to_json(&self) -> Value {
        match self {
            Command::Open { conn, team, url } => json!(["o", conn.0, team.0, url]),
            Command::Send { conn, text } => json!(["s", conn.0, text]),
            Command::Probe { conn } => json!(["p", conn.0]),
            Command::Close { conn, code } => json!(["c", conn.0, code]),
            Command::Abort { conn } => json!(["a", conn.0]),
        }
    }

    fn from_json(value: &Value) -> Result<Command, BadBatch> {
        let items = value
            .as_array()
            .ok_or_else(|| bad("a command is not an array"))?;
        let tag = items.first().and_then(Value::as_str).unwrap_or("");
        let num = |i: usize| {
            items
                .get(i)
                .and_then(Value::as_u64)
                .ok_or_else(|| bad(format!("command {tag:?}: item {i} is not a number")))
        };
        let text = |i: usize| {
            items
                .get(i)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| bad(format!("command {tag:?}: item {i} is not a string")))
        };
        let conn = ConnId(num(1)?);
        Ok(match tag {
            "o" => Command::Open {
                conn,
                team: TeamId(num(2)?),
                url: text(3)?,
            },
            "s" => Command::Send {
                conn,
                text: text(2)?,
            },
            "p" => Command::Probe { conn },
            "c" => Command::Close {
                conn,
                code: u16::try_from(num(2)?).map_err(|_| bad("a close code above 65535"))?,
            },
            "a" => Command::Abort { conn },
            other => return Err(bad(format!("unknown command {other:?}"))),
        })
    }
}

/// One step's commands for one worker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandBatch {
    /// The leader's epoch: a worker obeys only the newest it has seen.
    pub epoch: u64,
    /// The worker incarnation it is for: another ignores it.
    pub incarnation: String,
    /// 1, 2, … within (epoch, incarnation): a gap means a batch was lost.
    pub seq: u64,
    /// In order.
    pub commands: Vec<Command>,
}

impl CommandBatch {
    /// The message body.
    pub fn encode(&self) -> Vec<u8> {
        let commands: Vec<Value> = self.commands.iter().map(Command::to_json).collect();
        let body = json!({
            "epoch": self.epoch,
            "inc": self.incarnation,
            "seq": self.seq,
            "cmds": commands,
        });
        body.to_string().into_bytes()
    }

    /// Reads a message body.
    pub fn decode(bytes: &[u8]) -> Result<CommandBatch, BadBatch> {
        let value: Value = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
        let commands = value
            .get("cmds")
            .and_then(Value::as_array)
            .ok_or_else(|| bad("no cmds"))?
            .iter()
            .map(Command::from_json)
            .collect::<Result<_, _>>()?;
        Ok(CommandBatch {
            epoch: field_u64(&value, "epoch")?,
            incarnation: field_str(&value, "inc")?,
            seq: field_u64(&value, "seq")?,
            commands,
        })
    }
}

/// A worker's events since its last flush.
#[derive(Clone, Debug, PartialEq)]
pub struct EventBatch {
    /// The epoch whose commands opened these sockets.
    pub epoch: u64,
    /// The worker.
    pub worker: String,
    /// Its incarnation.
    pub incarnation: String,
    /// 1, 2, … within (epoch, incarnation): a gap means a batch was lost.
    pub seq: u64,
    /// In the order the worker's sockets produced them.
    pub events: Vec<NetEvent>,
    /// The worker's last batch: it holds no socket any more and is
    /// leaving. Sent in order after every event, so the leader treats the
    /// worker as gone only once it has taken them all.
    pub bye: bool,
    /// Readings of sockets that ended without their events reaching this
    /// leader (a fence, an older leader's sockets ended for this one): in
    /// the first batch of a stream no adoption call began.
    pub ended: Vec<AdoptedSocket>,
    /// The worker's wall clock (µs since the Unix epoch) when it took the
    /// batch's oldest event off its sockets; 0: not known. The leader's
    /// NATS-hop histogram is its own clock less this (one machine's clock,
    /// or clocks kept in step).
    pub read_at_us: u64,
}

impl EventBatch {
    /// The message body.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + 24 * self.events.len());
        let mut head = json!({
            "epoch": self.epoch,
            "worker": self.worker,
            "inc": self.incarnation,
            "seq": self.seq,
            "bye": self.bye,
            "at": self.read_at_us,
        });
        if !self.ended.is_empty() {
            head["ended"] = sockets_json(&self.ended);
        }
        let head = head.to_string();
        // `{…}` without its closing brace, then the events.
        out.extend_from_slice(&head.as_bytes()[..head.len() - 1]);
        out.extend_from_slice(b",\"events\":[");
        for (i, event) in self.events.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            codec::encode(&mut out, event);
        }
        out.extend_from_slice(b"]}");
        out
    }

    /// Reads a message body.
    pub fn decode(bytes: &[u8]) -> Result<EventBatch, BadBatch> {
        let value: Value = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
        let events = value
            .get("events")
            .and_then(Value::as_array)
            .ok_or_else(|| bad("no events"))?
            .iter()
            .map(|e| codec::decode(e).map_err(|e| bad(e.0)))
            .collect::<Result<_, _>>()?;
        Ok(EventBatch {
            epoch: field_u64(&value, "epoch")?,
            worker: field_str(&value, "worker")?,
            incarnation: field_str(&value, "inc")?,
            seq: field_u64(&value, "seq")?,
            events,
            bye: value.get("bye").and_then(Value::as_bool).unwrap_or(false),
            read_at_us: value.get("at").and_then(Value::as_u64).unwrap_or(0),
            ended: match value.get("ended") {
                Some(ended) => sockets_from_json(ended)?,
                None => Vec::new(),
            },
        })
    }
}

/// What a worker reads on its command subject: a batch, or a new
/// leader's call to report its sockets (adoption).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ToWorker {
    /// Commands.
    Batch(CommandBatch),
    /// "Report your sockets to `reply` and obey `epoch` from now on."
    Adopt {
        /// The new leader's epoch.
        epoch: u64,
        /// The incarnation it calls: another ignores it.
        incarnation: String,
    },
    /// "Report what your ended sockets read to `reply`": the leader's call
    /// to a worker that joined after it took over.
    Report {
        /// The leader's epoch.
        epoch: u64,
        /// The incarnation it calls.
        incarnation: String,
    },
}

impl ToWorker {
    /// The body of an adoption call.
    pub fn adopt(epoch: u64, incarnation: &str) -> Vec<u8> {
        json!({"epoch": epoch, "inc": incarnation, "adopt": true})
            .to_string()
            .into_bytes()
    }

    /// The body of a report call.
    pub fn report(epoch: u64, incarnation: &str) -> Vec<u8> {
        json!({"epoch": epoch, "inc": incarnation, "report": true})
            .to_string()
            .into_bytes()
    }

    /// Reads a message body.
    pub fn decode(bytes: &[u8]) -> Result<ToWorker, BadBatch> {
        let value: Value = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
        if value.get("adopt").and_then(Value::as_bool) == Some(true) {
            return Ok(ToWorker::Adopt {
                epoch: field_u64(&value, "epoch")?,
                incarnation: field_str(&value, "inc")?,
            });
        }
        if value.get("report").and_then(Value::as_bool) == Some(true) {
            return Ok(ToWorker::Report {
                epoch: field_u64(&value, "epoch")?,
                incarnation: field_str(&value, "inc")?,
            });
        }
        CommandBatch::decode(bytes).map(ToWorker::Batch)
    }
}

/// Sockets listed per inventory message, at most: 4,096 entries of about
/// 40 bytes stay well inside NATS's default 1 MiB payload.
pub const SOCKETS_PER_PART: usize = 4096;

/// One part of a worker's answer to an adoption call: the sockets it holds
/// open and those that ended lately, each with what it read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inventory {
    /// The epoch that called.
    pub epoch: u64,
    /// The worker.
    pub worker: String,
    /// Its incarnation.
    pub incarnation: String,
    /// This part, from 1.
    pub part: u64,
    /// Parts in all (at least 1).
    pub parts: u64,
    /// The sockets.
    pub sockets: Vec<AdoptedSocket>,
}

impl Inventory {
    /// The message body: sockets as `[conn, team, messages, props, open]`.
    pub fn encode(&self) -> Vec<u8> {
        let sockets = sockets_json(&self.sockets);
        json!({
            "epoch": self.epoch,
            "worker": self.worker,
            "inc": self.incarnation,
            "part": self.part,
            "parts": self.parts,
            "sockets": sockets,
        })
        .to_string()
        .into_bytes()
    }

    /// Reads a message body.
    pub fn decode(bytes: &[u8]) -> Result<Inventory, BadBatch> {
        let value: Value = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
        let sockets = sockets_from_json(value.get("sockets").ok_or_else(|| bad("no sockets"))?)?;
        let parts = field_u64(&value, "parts")?;
        let part = field_u64(&value, "part")?;
        if parts == 0 || part == 0 || part > parts {
            return Err(bad(format!("part {part} of {parts}")));
        }
        Ok(Inventory {
            epoch: field_u64(&value, "epoch")?,
            worker: field_str(&value, "worker")?,
            incarnation: field_str(&value, "inc")?,
            part,
            parts,
            sockets,
        })
    }
}

/// Sockets as `[conn, team, messages, props, open]` arrays.
fn sockets_json(sockets: &[AdoptedSocket]) -> Value {
    sockets
        .iter()
        .map(|s| json!([s.conn.0, s.team.0, s.messages, s.props, s.open]))
        .collect()
}

fn sockets_from_json(value: &Value) -> Result<Vec<AdoptedSocket>, BadBatch> {
    value
        .as_array()
        .ok_or_else(|| bad("sockets are not an array"))?
        .iter()
        .map(|s| {
            let items = s
                .as_array()
                .ok_or_else(|| bad("a socket is not an array"))?;
            let num = |i: usize| {
                items
                    .get(i)
                    .and_then(Value::as_u64)
                    .ok_or_else(|| bad(format!("socket item {i} is not a number")))
            };
            Ok(AdoptedSocket {
                conn: ConnId(num(0)?),
                team: TeamId(num(1)?),
                messages: num(2)?,
                props: num(3)?,
                open: items
                    .get(4)
                    .and_then(Value::as_bool)
                    .ok_or_else(|| bad("socket item 4 is not a boolean"))?,
            })
        })
        .collect()
}

fn field_u64(value: &Value, name: &str) -> Result<u64, BadBatch> {
    value
        .get(name)
        .and_then(Value::as_u64)
        .ok_or_else(|| bad(format!("{name} is not a number")))
}

fn field_str(value: &Value, name: &str) -> Result<String, BadBatch> {
    value
        .get(name)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| bad(format!("{name} is not a string")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bridge::CloseReason;

    #[test]
    fn adoption_calls_and_inventories_read_back_as_written() {
        let call = ToWorker::decode(&ToWorker::adopt(9, "i1")).expect("reads");
        assert_eq!(
            call,
            ToWorker::Adopt {
                epoch: 9,
                incarnation: "i1".into()
            }
        );
        assert_eq!(
            ToWorker::decode(&ToWorker::report(9, "i1")).expect("reads"),
            ToWorker::Report {
                epoch: 9,
                incarnation: "i1".into()
            }
        );
        let inventory = Inventory {
            epoch: 9,
            worker: "a".into(),
            incarnation: "i1".into(),
            part: 2,
            parts: 2,
            sockets: vec![AdoptedSocket {
                team: TeamId(4),
                conn: ConnId(17),
                messages: 1 << 40,
                props: 3,
                open: false,
            }],
        };
        assert_eq!(
            Inventory::decode(&inventory.encode()),
            Ok(inventory.clone())
        );
        let mut bad_part = inventory;
        bad_part.part = 3;
        assert!(Inventory::decode(&bad_part.encode()).is_err());
    }

    #[test]
    fn batches_read_back_as_written() {
        let commands = CommandBatch {
            epoch: 7,
            incarnation: "a1".into(),
            seq: 3,
            commands: vec![
                Command::Open {
                    conn: ConnId(1),
                    team: TeamId(9),
                    url: "ws://h/t?x=\"y\"".into(),
                },
                Command::Send {
                    conn: ConnId(1),
                    text: "{\"type\":\"ping\"}".into(),
                },
                Command::Probe { conn: ConnId(1) },
                Command::Close {
                    conn: ConnId(1),
                    code: 1000,
                },
                Command::Abort { conn: ConnId(2) },
            ],
        };
        assert_eq!(CommandBatch::decode(&commands.encode()), Ok(commands));
        let events = EventBatch {
            epoch: 7,
            worker: "w1".into(),
            incarnation: "a1".into(),
            seq: 1,
            events: vec![
                NetEvent::Opened { conn: ConnId(1) },
                NetEvent::Messages {
                    conn: ConnId(1),
                    first: 0,
                    count: 5,
                    props: 2,
                },
                NetEvent::Closed {
                    conn: ConnId(1),
                    reason: CloseReason::WorkerLost,
                },
            ],
            bye: true,
            ended: vec![AdoptedSocket {
                team: TeamId(3),
                conn: ConnId(0),
                messages: 9,
                props: 1,
                open: false,
            }],
            read_at_us: 1_796_300_000_000_000,
        };
        assert_eq!(EventBatch::decode(&events.encode()), Ok(events));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for body in [
            &b""[..],
            b"[]",
            b"{}",
            b"{\"cmds\":[[\"z\",1]]}",
            b"{\"cmds\":[[\"c\",1,70000]]}",
        ] {
            assert!(CommandBatch::decode(body).is_err());
            assert!(EventBatch::decode(body).is_err());
        }
    }
}
