//! `wss://` end to end over loopback: a TLS websocket server with a
//! self-signed certificate for `localhost`, trusted through a CA file the
//! way `--ca-file` does it; and refused when not trusted.

mod common;

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use switchboard::runtime::{self, RunConfig, RunEnd, StopHandle};
use switchboard::testkit::client::join;
use switchboard::transport::{TransportConfig, tls_with_ca_file};
use switchboard::{Config, Core};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_tungstenite::tungstenite::Message;

/// A TLS websocket server for `localhost` on an ephemeral port; returns its
/// port and the PEM of its self-signed certificate. It plays the brief's
/// flow: hello, one team (whose URL is wss:// on the same server), ten
/// messages, then answers healthchecks and leaves on goodbye.
async fn tls_server() -> (u16, String) {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
        .expect("self-signed certificate");
    let cert_pem = certified.cert.pem();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        certified.signing_key.serialize_der(),
    ));
    let config = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![certified.cert.der().clone()], key)
        .expect("server config");
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut path = String::new();
                #[allow(clippy::result_large_err)]
                let callback =
                    |req: &tokio_tungstenite::tungstenite::handshake::server::Request, resp| {
                        path = req.uri().path().to_owned();
                        Ok(resp)
                    };
                let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(tls, callback).await else {
                    return;
                };
                let send = |v: Value| Message::text(v.to_string());
                let _ = ws.send(send(json!({"type": "hello"}))).await;
                if path == "/global" {
                    let _ = ws
                        .send(send(json!({"type": "team.join", "team_id": 1})))
                        .await;
                    while let Some(Ok(Message::Text(text))) = ws.next().await {
                        let v: Value = serde_json::from_str(&text).unwrap_or_default();
                        // Ask until all ten are counted (each reply that
                        // falls short asks again; the test's deadline bounds it).
                        let next = if v["type"] == "team.connect" {
                            let url = format!("wss://localhost:{port}/team/1");
                            let answer =
                                json!({"type": "team.connect", "team_id": 1, "ws_url": url});
                            let _ = ws.send(send(answer)).await;
                            json!({"type": "healthcheck"})
                        } else if v["stats"][0]["message_count"] == 10 {
                            json!({"type": "goodbye"})
                        } else {
                            json!({"type": "healthcheck"})
                        };
                        let _ = ws.send(send(next)).await;
                    }
                } else {
                    for i in 0..10 {
                        let text = if i % 2 == 0 { "props" } else { "plain" };
                        let _ = ws
                            .send(send(json!({"type": "message", "text": text})))
                            .await;
                    }
                    while let Some(Ok(_)) = ws.next().await {}
                }
            });
        }
    });
    (port, cert_pem)
}

/// No give-up: each run ends by the server's goodbye or the test's stop
/// (the test's deadline bounds both).
fn config(port: u16, transport: TransportConfig) -> RunConfig {
    RunConfig {
        core: Config {
            global_url: format!("wss://localhost:{port}/global"),
            tick: Duration::from_millis(5),
            backoff_min: Duration::from_millis(10),
            backoff_max: Duration::from_millis(100),
            ..Config::default()
        },
        transport,
        seed: 1,
        status_interval: None,
        give_up_after: None,
        tap: None,
    }
}

fn ca_file(pem: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!(
        "switchboard-test-ca-{}-{}.pem",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::write(&path, pem).expect("write CA file");
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_works_with_a_trusted_certificate() {
    let (port, pem) = tls_server().await;
    let path = ca_file(&pem);
    let tls = tls_with_ca_file(&path).expect("CA file loads");
    let _ = std::fs::remove_file(&path);
    let config = config(
        port,
        TransportConfig {
            tls: Some(tls),
            ..TransportConfig::default()
        },
    );
    let stop = StopHandle::new();
    let handle = tokio::runtime::Handle::current();
    let thread = {
        let stop = stop.clone();
        std::thread::spawn(move || runtime::run(&config, handle, &stop, &mut []))
    };
    let outcome = join(thread, || stop.force())
        .await
        .expect("no panic")
        .expect("run ok");
    assert_eq!(outcome.report.messages, 10);
    assert_eq!(outcome.report.props, 5);
    assert!(outcome.report.teams[0].connected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_refuses_an_untrusted_certificate() {
    let (port, _) = tls_server().await;
    // No give-up timer (one short enough for a quick test could fire before
    // a loaded machine's first handshake failed): the run is stopped once
    // Global's first connection has failed, and says why.
    let config = config(port, TransportConfig::default());
    let stop = StopHandle::new();
    let (failed, why) = std::sync::mpsc::channel();
    let handle = tokio::runtime::Handle::current();
    let thread = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut first_failure = {
                let stop = stop.clone();
                move |core: &Core| {
                    if let Some(error) = core.global().last_error()
                        && !stop.is_stopped()
                    {
                        let _ = failed.send(error.to_owned());
                        stop.stop();
                    }
                }
            };
            runtime::run(&config, handle, &stop, &mut [&mut first_failure])
        })
    };
    let outcome = join(thread, || stop.force())
        .await
        .expect("no panic")
        .expect("run ok");
    let error = why.try_recv().expect("Global's connection failed");
    assert!(error.to_lowercase().contains("certificate"), "{error}");
    assert!(
        matches!(outcome.end, RunEnd::Finished(_)),
        "{:?}",
        outcome.end
    );
    assert!(outcome.report.teams.is_empty(), "no team without Global");
}

/// The simulator over TLS (`sim --tls`, `bench --tls`): a run with six
/// team sockets closed by the server is verified, and the client's
/// reconnects resume their TLS sessions (it keeps one TLS config, with its
/// session tickets, for every connection) instead of negotiating again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_simulator_over_tls_verifies_and_reconnects_resume_their_sessions() {
    use common::sim_run::{client_config, scenario};
    use switchboard::sim::{Chaos, Fault, Schedule, SimConfig, SimServer};

    let closes = 6;
    let client = client_config(String::new(), Duration::from_secs(2));
    let scenario = switchboard::sim::Scenario {
        leave_fraction: 0.0,
        ..scenario(20, &client)
    };
    let schedule = Schedule::seeded(7, &[Fault::TeamClose], closes, scenario.teams, 10..30);
    let server = SimServer::start(SimConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        scenario,
        chaos: Chaos::none(),
        schedule,
        seed: 7,
        tls: true,
    })
    .await
    .expect("simulator starts over TLS");
    assert!(server.global_url().starts_with("wss://"));
    let path = ca_file(server.certificate_pem().expect("a certificate"));
    let tls = tls_with_ca_file(&path).expect("CA file loads");
    let _ = std::fs::remove_file(&path);
    let client = switchboard::testkit::client::start(server.global_url(), |c| {
        *c = RunConfig {
            transport: TransportConfig {
                tls: Some(tls),
                ..client.transport.clone()
            },
            ..client_config(c.core.global_url.clone(), Duration::from_secs(2))
        };
    });
    let mut verdict = server.verdict().await;
    let outcome = client.finish().await;
    verdict.check_report(&outcome.report);
    eprintln!("{verdict}");
    assert!(verdict.verified, "{verdict}");
    assert_eq!(verdict.fault(Fault::TeamClose).survived, closes as u64);
    let handshakes = verdict.tls_handshakes.expect("handshakes counted");
    assert!(
        handshakes.full >= 1,
        "the first connection negotiates: {handshakes:?}"
    );
    assert!(
        handshakes.resumed >= closes as u64,
        "every reconnect resumes: {handshakes:?}"
    );
}
