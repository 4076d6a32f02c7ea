//! What the simulator concluded about a run, and how it reads: verified or
//! not, the problems, and every fault kind with what became of it.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::faults::Fault;
use crate::protocol::TeamId;
use crate::report::Report;

/// How often one fault kind was injected, and what became of it.
/// `injected == survived + not_observed + not_recovered` once the run is
/// over.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultCount {
    /// Times injected.
    pub injected: u64,
    /// Times the simulator saw the client recover as the fault calls for.
    pub survived: u64,
    /// Times the recovery could not be observed (the team left, the socket
    /// closed for another reason, the run ended first).
    pub not_observed: u64,
    /// Times the client had still not recovered when the recovery wait ran
    /// out: a failure, and its team is among the problems.
    #[serde(default)]
    pub not_recovered: u64,
}

/// The longest time a team was without a socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disconnect {
    /// The team.
    pub team: TeamId,
    /// How long, not counting time it was left.
    pub length: Duration,
    /// It had no socket yet when the run ended.
    pub unended: bool,
}

/// What the simulator wrote to one team.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TeamCount {
    /// The team.
    pub id: TeamId,
    /// Messages written.
    pub messages: u64,
    /// Of those, with `props`.
    pub props: u64,
}

/// What the simulator concluded.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    /// True when every check passed and the final counts were exact.
    pub verified: bool,
    /// Teams ever joined.
    pub teams: usize,
    /// Messages written (and, if verified, counted).
    pub messages: u64,
    /// Props written.
    pub props: u64,
    /// Faults by kind.
    pub faults: BTreeMap<Fault, FaultCount>,
    /// Why recoveries were not observed, by kind: reason → times.
    pub not_observed_why: BTreeMap<Fault, BTreeMap<String, u64>>,
    /// Healthcheck replies checked.
    pub healthchecks_checked: u64,
    /// Global connections accepted.
    pub global_connects: u64,
    /// Most sockets one team ever had open at once (1 is correct).
    pub max_sockets_per_team: u32,
    /// The longest time any team was without a socket, if any was.
    pub longest_disconnect: Option<Disconnect>,
    /// What was written to each team, by id: the truth a client's own
    /// report is held to ([`Verdict::check_report`]).
    pub truth: Vec<TeamCount>,
    /// What went wrong.
    pub mismatches: Vec<String>,
    /// Wall time from the first Global connection to the verdict.
    pub duration: Duration,
    /// How long connecting and delivering took, as the simulator saw them.
    #[serde(default)]
    pub timing: Timing,
    /// TLS handshakes by kind, when the run served `wss://`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_handshakes: Option<super::tls::Handshakes>,
}

/// Two durations a benchmark reads off a run, measured by the simulator.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Timing {
    /// From the first `team.join` sent to the moment every team had had a
    /// socket open, ms.
    pub connect_all_ms: Option<f64>,
    /// From the first message written to the first healthcheck reply that
    /// showed every team at every message written (the last one written
    /// included), ms: end to end, as a server sees it.
    pub deliver_all_ms: Option<f64>,
}

impl Verdict {
    /// A run that produced no verdict of its own.
    pub fn failed(why: String) -> Verdict {
        Verdict {
            verified: false,
            teams: 0,
            messages: 0,
            props: 0,
            faults: BTreeMap::new(),
            not_observed_why: BTreeMap::new(),
            healthchecks_checked: 0,
            global_connects: 0,
            max_sockets_per_team: 0,
            longest_disconnect: None,
            truth: Vec::new(),
            mismatches: vec![why],
            duration: Duration::ZERO,
            timing: Timing::default(),
            tls_handshakes: None,
        }
    }

    /// Faults injected, all kinds.
    pub fn injected(&self) -> u64 {
        self.faults.values().map(|f| f.injected).sum()
    }

    /// Faults survived, all kinds.
    pub fn survived(&self) -> u64 {
        self.faults.values().map(|f| f.survived).sum()
    }

    /// Faults whose recovery was not observed, all kinds.
    pub fn not_observed(&self) -> u64 {
        self.faults.values().map(|f| f.not_observed).sum()
    }

    /// Faults the client had not recovered from when the wait ran out.
    pub fn not_recovered(&self) -> u64 {
        self.faults.values().map(|f| f.not_recovered).sum()
    }

    /// The count for one kind (zero if it never fired).
    pub fn fault(&self, fault: Fault) -> FaultCount {
        self.faults.get(&fault).copied().unwrap_or_default()
    }

    /// Holds the client's own final report to the truth: every team it
    /// lists must have exactly the messages and props written to it, and it
    /// must list every team. Each difference becomes a mismatch, and the
    /// verdict is then not verified.
    pub fn check_report(&mut self, report: &Report) {
        let truth: BTreeMap<TeamId, &TeamCount> = self.truth.iter().map(|t| (t.id, t)).collect();
        let listed: BTreeMap<TeamId, (u64, u64)> = report
            .teams
            .iter()
            .map(|t| (t.id, (t.messages, t.props)))
            .collect();
        let mut differing = Vec::new();
        for (id, t) in &truth {
            match listed.get(id) {
                Some(&got) if got == (t.messages, t.props) => {}
                Some(&(m, p)) => differing.push(format!(
                    "team {id}: report says {m}/{p}, simulator wrote {}/{}",
                    t.messages, t.props
                )),
                None => differing.push(format!("team {id}: missing from the report")),
            }
        }
        differing.extend(
            listed
                .keys()
                .filter(|id| !truth.contains_key(id))
                .map(|id| format!("team {id}: in the report but never joined")),
        );
        if (report.messages, report.props) != (self.messages, self.props) {
            differing.push(format!(
                "totals: report says {}/{}, simulator wrote {}/{}",
                report.messages, report.props, self.messages, self.props
            ));
        }
        if !differing.is_empty() {
            self.verified = false;
            self.mismatches.push(format!(
                "the client's report differs from the truth for {} line(s): {}",
                differing.len(),
                differing[..differing.len().min(5)].join("; ")
            ));
        }
    }
}

/// `n` with thousands separators.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.verified {
            write!(
                f,
                "verified: {} teams, {} messages, {} props, {} of {} faults survived ({:.1}s)",
                thousands(self.teams as u64),
                thousands(self.messages),
                thousands(self.props),
                thousands(self.survived()),
                thousands(self.injected()),
                self.duration.as_secs_f64()
            )?;
        } else {
            write!(
                f,
                "NOT verified: {} teams, {} messages written; {} problem(s):",
                self.teams,
                self.messages,
                self.mismatches.len()
            )?;
            for m in &self.mismatches {
                write!(f, "\n  - {m}")?;
            }
        }
        // The last column only when the client failed some recovery.
        let failed = self.not_recovered() > 0;
        if !self.faults.is_empty() {
            write!(
                f,
                "\n  {:<17} {:>8} {:>8} {:>12}",
                "fault", "injected", "survived", "not observed"
            )?;
            if failed {
                write!(f, " {:>13}", "not recovered")?;
            }
        }
        for (fault, count) in &self.faults {
            write!(
                f,
                "\n  {:<17} {:>8} {:>8} {:>12}",
                fault.name(),
                count.injected,
                count.survived,
                count.not_observed
            )?;
            if failed {
                write!(f, " {:>13}", count.not_recovered)?;
            }
        }
        for (fault, reasons) in &self.not_observed_why {
            let reasons: Vec<String> = reasons
                .iter()
                .map(|(why, n)| format!("{n} {why}"))
                .collect();
            write!(
                f,
                "\n  {} not observed: {}",
                fault.name(),
                reasons.join(", ")
            )?;
        }
        if let Some(tls) = self.tls_handshakes {
            write!(
                f,
                "\n  TLS handshakes: {} full, {} resumed",
                thousands(tls.full),
                thousands(tls.resumed)
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::LinkState;
    use crate::report::TeamLine;

    fn verdict() -> Verdict {
        Verdict {
            verified: true,
            teams: 2,
            messages: 7,
            props: 1,
            truth: vec![
                TeamCount {
                    id: TeamId(1),
                    messages: 3,
                    props: 1,
                },
                TeamCount {
                    id: TeamId(2),
                    messages: 4,
                    props: 0,
                },
            ],
            ..Verdict::failed(String::new())
        }
    }

    fn line(id: u64, messages: u64, props: u64) -> TeamLine {
        TeamLine {
            id: TeamId(id),
            state: LinkState::Stopped,
            connected: false,
            messages,
            props,
            reconnects: 0,
            rtt_ms: None,
            worker: None,
        }
    }

    fn report(teams: Vec<TeamLine>) -> Report {
        Report {
            messages: teams.iter().map(|t| t.messages).sum(),
            props: teams.iter().map(|t| t.props).sum(),
            teams,
        }
    }

    #[test]
    fn a_report_equal_to_the_truth_keeps_the_verdict() {
        let mut v = Verdict {
            mismatches: Vec::new(),
            ..verdict()
        };
        v.check_report(&report(vec![line(1, 3, 1), line(2, 4, 0)]));
        assert!(v.verified, "{v}");
    }

    #[test]
    fn every_difference_in_the_report_is_a_mismatch() {
        let mut v = Verdict {
            mismatches: Vec::new(),
            ..verdict()
        };
        v.check_report(&report(vec![line(1, 3, 0), line(3, 1, 0)]));
        assert!(!v.verified);
        let m = &v.mismatches[0];
        for needle in [
            "team 1: report says 3/0, simulator wrote 3/1",
            "team 2: missing",
            "team 3: in the report but never joined",
            "totals",
        ] {
            assert!(m.contains(needle), "{needle} not in {m}");
        }
    }

    #[test]
    fn a_verdict_round_trips_through_json() {
        let mut v = verdict();
        v.faults.insert(
            Fault::GlobalDrop,
            FaultCount {
                injected: 2,
                survived: 1,
                not_observed: 1,
                not_recovered: 0,
            },
        );
        v.not_observed_why.insert(
            Fault::GlobalDrop,
            BTreeMap::from([("the run ended first".to_owned(), 1)]),
        );
        v.longest_disconnect = Some(Disconnect {
            team: TeamId(2),
            length: Duration::from_millis(1500),
            unended: false,
        });
        let json = serde_json::to_string(&v).unwrap();
        assert_eq!(serde_json::from_str::<Verdict>(&json).unwrap(), v);
        assert!(
            v.to_string()
                .contains("global-drop not observed: 1 the run ended first")
        );
    }
}
