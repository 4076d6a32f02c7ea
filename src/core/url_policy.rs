//! Which team URLs the client opens: normalised per the protocol, never
//! weaker than the Global link that handed them out (a `wss://` Global may
//! not send team traffic over plaintext unless the operator allows it), and,
//! when the operator lists team hosts, only on those hosts.

use crate::protocol::{UrlError, normalize_ws_url};

/// A `ws_url` the client will not open.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TeamUrlError {
    /// Not a usable websocket URL.
    #[error(transparent)]
    Url(#[from] UrlError),
    /// A plaintext URL from a `wss://` Global.
    #[error("{0:?} is plaintext but Global is wss:// (allow with --allow-insecure-team-urls)")]
    Downgrade(String),
    /// A host outside the operator's list.
    #[error("host {0:?} is not an allowed team host")]
    Host(String),
}

/// An allowed team host: `example.com` (exactly), `*.example.com` (any
/// subdomain), or `*` (any host); with `:PORT` the port must match too.
/// Hosts compare without regard to case.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct HostPattern {
    host: String,
    port: Option<u16>,
}

impl std::str::FromStr for HostPattern {
    type Err = String;

    fn from_str(text: &str) -> Result<HostPattern, String> {
        let (host, port) = split_port(text.trim());
        let port = match port {
            Some(p) => Some(p.parse().map_err(|_| format!("bad port in {text:?}"))?),
            None => None,
        };
        let host = host.to_ascii_lowercase();
        let name = host.strip_prefix("*.").unwrap_or(&host);
        if host.is_empty() || (host != "*" && name.contains(['*', '/', '@', ' '])) {
            return Err(format!(
                "{text:?} is not a host pattern (try example.com, *.example.com or host:8080)"
            ));
        }
        Ok(HostPattern { host, port })
    }
}

impl TryFrom<String> for HostPattern {
    type Error = String;

    fn try_from(text: String) -> Result<HostPattern, String> {
        text.parse()
    }
}

impl From<HostPattern> for String {
    fn from(pattern: HostPattern) -> String {
        match pattern.port {
            Some(port) => format!("{}:{port}", pattern.host),
            None => pattern.host,
        }
    }
}

impl HostPattern {
    fn matches(&self, host: &str, port: Option<u16>) -> bool {
        if self.port.is_some() && self.port != port {
            return false;
        }
        let host = host.to_ascii_lowercase();
        match self.host.strip_prefix("*.") {
            _ if self.host == "*" => true,
            Some(domain) => host
                .strip_suffix(domain)
                .is_some_and(|sub| sub.len() > 1 && sub.ends_with('.')),
            None => host == self.host,
        }
    }
}

/// Splits `host[:port]`, keeping an IPv6 literal's brackets with the host.
fn split_port(authority: &str) -> (&str, Option<&str>) {
    if authority.starts_with('[') {
        return match authority.find("]:") {
            Some(end) => (&authority[..=end], Some(&authority[end + 2..])),
            None => (authority, None),
        };
    }
    match authority.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (authority, None),
    }
}

/// The policy, built once from the configuration.
#[derive(Clone, Debug, Default)]
pub struct TeamUrlPolicy {
    /// The Global link is `wss://`.
    pub global_secure: bool,
    /// Plaintext team URLs are allowed from a `wss://` Global.
    pub allow_insecure: bool,
    /// Allowed hosts; empty allows any.
    pub hosts: Vec<HostPattern>,
}

impl TeamUrlPolicy {
    /// The URL to open for `ws_url`, or why it is refused.
    pub fn admit(&self, ws_url: &str) -> Result<String, TeamUrlError> {
        let url = normalize_ws_url(ws_url)?;
        if self.global_secure && !self.allow_insecure && url.starts_with("ws://") {
            return Err(TeamUrlError::Downgrade(crate::protocol::clip(
                &crate::redact::url(&url),
                128,
            )));
        }
        if !self.hosts.is_empty() {
            let rest = url.split_once("://").map_or("", |(_, rest)| rest);
            let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
            let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
            let (host, port) = split_port(authority);
            let port = port.and_then(|p| p.parse().ok());
            if !self.hosts.iter().any(|p| p.matches(host, port)) {
                return Err(TeamUrlError::Host(crate::protocol::clip(host, 128)));
            }
        }
        Ok(url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(secure: bool, allow: bool, hosts: &[&str]) -> TeamUrlPolicy {
        TeamUrlPolicy {
            global_secure: secure,
            allow_insecure: allow,
            hosts: hosts.iter().map(|h| h.parse().expect("pattern")).collect(),
        }
    }

    #[test]
    fn a_secure_global_never_hands_out_plaintext_unless_allowed() {
        let strict = policy(true, false, &[]);
        assert!(matches!(
            strict.admit("ws://h/t"),
            Err(TeamUrlError::Downgrade(_))
        ));
        assert!(matches!(
            strict.admit("http://h/t"),
            Err(TeamUrlError::Downgrade(_))
        ));
        assert_eq!(strict.admit("https://h/t").as_deref(), Ok("wss://h/t"));
        assert_eq!(
            policy(true, true, &[]).admit("ws://h/t").as_deref(),
            Ok("ws://h/t")
        );
        assert_eq!(
            policy(false, false, &[]).admit("ws://h/t").as_deref(),
            Ok("ws://h/t")
        );
    }

    #[test]
    fn team_hosts_are_matched_exactly_by_subdomain_or_port() {
        let p = policy(
            false,
            false,
            &["teams.example.com", "*.bots.io", "10.0.0.1:9000", "[::1]"],
        );
        for ok in [
            "ws://teams.example.com/x",
            "ws://TEAMS.example.com:8080/x",
            "ws://a.bots.io/x",
            "ws://a.b.bots.io/x",
            "ws://user@10.0.0.1:9000/x",
            "ws://[::1]:5/x",
        ] {
            assert!(p.admit(ok).is_ok(), "{ok}");
        }
        for refused in [
            "ws://evil.com/x",
            "ws://bots.io/x",
            "ws://xbots.io/x",
            "ws://teams.example.com.evil.com/x",
            "ws://10.0.0.1:9001/x",
        ] {
            assert!(
                matches!(p.admit(refused), Err(TeamUrlError::Host(_))),
                "{refused}"
            );
        }
        assert!("a b".parse::<HostPattern>().is_err());
        assert!("h:port".parse::<HostPattern>().is_err());
        assert!("*".parse::<HostPattern>().is_ok());
    }
}
