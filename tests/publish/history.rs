//! A scripted run's history, as the server side of the script made it:
//! for each team, the lifecycle it caused (joins, opened sockets, sockets
//! closed or reset, leaves, the goodbye) and the messages it wrote on each
//! socket, in order. [`History::assert_stored`] holds a stream to it.

use std::collections::BTreeMap;

use super::nats::Stored;

/// One team's history.
#[derive(Debug, Default)]
struct Team {
    /// Lifecycle events, in order, as the subjects name them.
    events: Vec<&'static str>,
    /// The texts written on each socket, sockets in the order they opened.
    sockets: Vec<Vec<String>>,
}

/// Every team's history.
#[derive(Debug, Default)]
pub struct History(BTreeMap<u64, Team>);

impl History {
    /// `team` caused lifecycle `event` (`joined`, `connected`, …); a
    /// `connected` opens a socket for [`History::wrote`].
    pub fn event(&mut self, team: u64, event: &'static str) {
        let t = self.0.entry(team).or_default();
        t.events.push(event);
        if event == "connected" {
            t.sockets.push(Vec::new());
        }
    }

    /// `text` was written as a message on `team`'s latest socket.
    pub fn wrote(&mut self, team: u64, text: &str) {
        let socket = self.0.entry(team).or_default().sockets.last_mut();
        socket
            .expect("a message on an open socket")
            .push(text.to_owned());
    }

    /// The run ended: every team still joined is stopped.
    pub fn goodbye(&mut self) {
        for t in self.0.values_mut() {
            if t.events.last() != Some(&"left") {
                t.events.push("stopped");
            }
        }
    }

    /// Messages written to `team` so far.
    pub fn written(&self, team: u64) -> u64 {
        self.0
            .get(&team)
            .map_or(0, |t| t.sockets.iter().map(Vec::len).sum::<usize>() as u64)
    }

    /// The teams.
    pub fn teams(&self) -> impl Iterator<Item = u64> + '_ {
        self.0.keys().copied()
    }

    /// The stream holds, for every team and no other, exactly the history:
    /// its lifecycle events, each once and in order; each socket's
    /// messages, each once and in order, under one socket id per socket
    /// (the message id's middle part), numbered 1, 2, 3, … across sockets;
    /// and every message of a socket stored before the event that ended
    /// that socket (`dropped`, `left` or `stopped`): a socket hands over
    /// what it read before it reports its end.
    pub fn assert_stored(&self, stored: &[Stored]) {
        let mut ids: Vec<&str> = stored.iter().map(|s| s.msg_id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), stored.len(), "a message id stored twice");
        let teams: Vec<u64> = stored
            .iter()
            .map(|s| s.payload["team_id"].as_u64().expect("team_id"))
            .collect();
        for (team, s) in teams.iter().zip(stored) {
            assert!(self.0.contains_key(team), "a record for team {team}: {s:?}");
        }
        for (&id, want) in &self.0 {
            let prefix = format!("switchboard.teams.{id}.");
            let records: Vec<(&str, &Stored)> = stored
                .iter()
                .filter_map(|s| Some((s.subject.strip_prefix(&prefix)?, s)))
                .collect();
            let events: Vec<&str> = records
                .iter()
                .map(|(kind, _)| *kind)
                .filter(|kind| *kind != "message")
                .collect();
            assert_eq!(
                events, want.events,
                "team {id}: lifecycle against the history"
            );
            // Messages by socket, sockets in order of their first message.
            let mut sockets: Vec<(&str, Vec<&str>)> = Vec::new();
            let mut seqs = Vec::new();
            for (_, s) in records.iter().filter(|(kind, _)| *kind == "message") {
                let socket = s.msg_id.split(':').nth(1).expect("<run>:<socket>:<index>");
                let text = s.payload["text"].as_str().expect("text");
                match sockets.last_mut() {
                    Some((last, texts)) if *last == socket => texts.push(text),
                    _ => {
                        assert!(
                            sockets.iter().all(|(seen, _)| *seen != socket),
                            "team {id}: socket {socket}'s messages interleaved with another's"
                        );
                        sockets.push((socket, vec![text]));
                    }
                }
                seqs.push(s.payload["seq"].as_u64().expect("seq"));
            }
            let got: Vec<Vec<String>> = sockets
                .iter()
                .map(|(_, texts)| texts.iter().map(|t| t.to_string()).collect())
                .collect();
            let written: Vec<Vec<String>> = want
                .sockets
                .iter()
                .filter(|texts| !texts.is_empty())
                .cloned()
                .collect();
            assert_eq!(
                got, written,
                "team {id}: messages by socket against the history"
            );
            let numbered: Vec<u64> = (1..=seqs.len() as u64).collect();
            assert_eq!(seqs, numbered, "team {id}: seq");
            // The n-th socket ends with the n-th dropped/left/stopped.
            let ends: Vec<usize> = records
                .iter()
                .enumerate()
                .filter(|(_, (kind, _))| matches!(*kind, "dropped" | "left" | "stopped"))
                .map(|(at, _)| at)
                .collect();
            let mut socket = 0;
            for (n, texts) in want.sockets.iter().enumerate() {
                if texts.is_empty() {
                    continue;
                }
                let (name, _) = sockets[socket];
                socket += 1;
                let last = records
                    .iter()
                    .rposition(|(kind, s)| {
                        *kind == "message" && s.msg_id.split(':').nth(1) == Some(name)
                    })
                    .expect("its messages");
                assert!(
                    last < ends[n],
                    "team {id}: socket {n}'s last message stored after its end: {:?}",
                    records.iter().map(|(kind, _)| kind).collect::<Vec<_>>()
                );
            }
        }
    }
}
