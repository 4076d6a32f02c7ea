//! `wss://` end to end over loopback: a TLS websocket server with a
//! self-signed certificate for `localhost`, trusted through a CA file the
//! way `--ca-file` does it; and refused when not trusted.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use switchboard::Config;
use switchboard::runtime::{self, RunConfig, RunEnd, StopHandle};
use switchboard::transport::{TransportConfig, tls_with_ca_file};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_tungstenite::tungstenite::Message;

const DEADLINE: Duration = Duration::from_secs(15);

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

/// `give_up_after` ends the run if Global stays unreachable that long.
fn config(port: u16, transport: TransportConfig, give_up_after: Option<Duration>) -> RunConfig {
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
        give_up_after,
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
        // The run ends with the server's goodbye; a give-up here would only
        // fail a slow handshake on a loaded machine. DEADLINE bounds it.
        None,
    );
    let handle = tokio::runtime::Handle::current();
    let run = tokio::task::spawn_blocking(move || {
        runtime::run(&config, handle, &StopHandle::new(), &mut [])
    });
    let outcome = tokio::time::timeout(DEADLINE, run)
        .await
        .expect("run ends within the deadline")
        .expect("no panic")
        .expect("run ok");
    assert_eq!(outcome.report.messages, 10);
    assert_eq!(outcome.report.props, 5);
    assert!(outcome.report.teams[0].connected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_refuses_an_untrusted_certificate() {
    let (port, _) = tls_server().await;
    // Refused at every attempt: it gives up once Global has been out of
    // reach this long, however slow the machine.
    let config = config(
        port,
        TransportConfig::default(),
        Some(Duration::from_millis(500)),
    );
    let handle = tokio::runtime::Handle::current();
    let run = tokio::task::spawn_blocking(move || {
        runtime::run(&config, handle, &StopHandle::new(), &mut [])
    });
    let result = tokio::time::timeout(DEADLINE, run)
        .await
        .expect("gives up within the deadline")
        .expect("no panic");
    match result.map(|outcome| outcome.end) {
        Ok(RunEnd::GaveUp { last_error, .. }) => {
            assert!(
                last_error.to_lowercase().contains("certificate"),
                "{last_error}"
            );
        }
        other => panic!("expected a certificate failure, got {other:?}"),
    }
}
