//! Which names the HTTP server answers to. A web page can point a name of
//! its own at 127.0.0.1 (DNS rebinding) and then read, as same-origin,
//! whatever a loopback server serves; its requests carry that name in
//! `Host`. So a request is answered only when its `Host` is `localhost`, a
//! loopback address or the address it came in on, with the port it came in
//! on, or a name given with `--http-allow-host`. Anything else gets 421
//! Misdirected Request: the request was sent to a server that does not
//! serve that name, which is exactly the case (403 would suggest that some
//! credential could help).

use std::net::{IpAddr, SocketAddr};

use axum::Json;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// The names allowed besides this machine's own.
#[derive(Clone, Debug, Default)]
pub struct Hosts {
    /// Lowercase; `name` (any port) or `name:port`.
    extra: Vec<String>,
}

impl Hosts {
    /// Allows `extra` names too (`name` for any port, or `name:port`).
    pub fn new(extra: &[String]) -> Hosts {
        Hosts {
            extra: extra.iter().map(|h| h.to_ascii_lowercase()).collect(),
        }
    }

    /// The answer to a request whose `Host` is not allowed, if so. `local`
    /// is the address the request came in on.
    pub fn refusal(&self, headers: &HeaderMap, local: Option<SocketAddr>) -> Option<Response> {
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
        if host.is_some_and(|host| self.allows(host, local)) {
            return None;
        }
        let why = format!(
            "Host {:?} is not a name this server answers to; allow it with --http-allow-host",
            host.unwrap_or("")
        );
        Some((StatusCode::MISDIRECTED_REQUEST, Json(json!({ "why": why }))).into_response())
    }

    fn allows(&self, host: &str, local: Option<SocketAddr>) -> bool {
        let host = host.trim().to_ascii_lowercase();
        let (name, port) = split(&host);
        if self
            .extra
            .iter()
            .any(|allowed| *allowed == host || *allowed == name)
        {
            return true;
        }
        let Some(local) = local else {
            return false;
        };
        if port.unwrap_or(80) != local.port() {
            return false;
        }
        let ip = name
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>();
        name == "localhost"
            || ip.is_ok_and(|ip| ip.is_loopback() || ip == local.ip() || Some(ip) == mapped(local))
    }
}

/// The IPv4 address behind an IPv4-mapped IPv6 local address.
fn mapped(local: SocketAddr) -> Option<IpAddr> {
    match local.ip() {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4),
        IpAddr::V4(_) => None,
    }
}

/// `name[:port]` or `[v6][:port]` into its name and port.
fn split(host: &str) -> (&str, Option<u16>) {
    let colon = match host.rfind(']') {
        Some(end) => host[end..].find(':').map(|i| end + i),
        None => host.rfind(':'),
    };
    match colon {
        Some(i) => match host[i + 1..].parse() {
            Ok(port) => (&host[..i], Some(port)),
            Err(_) => (host, None),
        },
        None => (host, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_names_and_the_local_address_with_its_port_pass_other_names_do_not() {
        let local: SocketAddr = "127.0.0.1:9090".parse().expect("addr");
        let hosts = Hosts::new(&["status.example".to_owned(), "box:8080".to_owned()]);
        for ok in [
            "localhost:9090",
            "127.0.0.1:9090",
            "[::1]:9090",
            "LOCALHOST:9090",
            "status.example",
            "status.example:1",
            "box:8080",
        ] {
            assert!(hosts.allows(ok, Some(local)), "{ok}");
        }
        for refused in [
            "evil.example:9090",
            "localhost:9091",
            "localhost",
            "box:8081",
            "10.0.0.1:9090",
            "",
        ] {
            assert!(!hosts.allows(refused, Some(local)), "{refused}");
        }
        let public: SocketAddr = "10.0.0.5:80".parse().expect("addr");
        assert!(hosts.allows("10.0.0.5", Some(public)));
        assert!(!hosts.allows("rebound.example", Some(public)));
    }
}
