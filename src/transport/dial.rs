//! Opening one websocket: resolve the host, connect TCP (each address in
//! turn), wrap it in TLS for `wss://`, put the partial-message guard under
//! the websocket layer, and do the upgrade. The whole attempt is a future the
//! socket task drops when the core gives up on it (its connect deadline):
//! no wait here has a timer of its own.

use std::sync::{Arc, OnceLock};

use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest};

use super::guard::{Guarded, PartialBudget};
use super::wire::Wire;

/// The stream under every websocket.
pub(crate) type Stream = Guarded<Wire<tokio_rustls::client::TlsStream<TcpStream>>>;

/// An open websocket.
pub(crate) type Socket = WebSocketStream<Stream>;

/// What every dial shares: built once per transport.
pub(crate) struct DialConfig {
    pub ws: tungstenite::protocol::WebSocketConfig,
    pub partial: Arc<PartialBudget>,
    /// The operator's TLS settings, if any; else the bundled web roots,
    /// built on first use. One config for every connection, so TLS
    /// sessions are resumed instead of renegotiated.
    pub tls: OnceLock<Arc<rustls::ClientConfig>>,
    /// The local address to connect from, if not the kernel's choice.
    pub bind: Option<std::net::IpAddr>,
}

impl DialConfig {
    fn tls(&self) -> Arc<rustls::ClientConfig> {
        self.tls
            .get_or_init(|| {
                let roots = rustls::RootCertStore::from_iter(
                    webpki_roots::TLS_SERVER_ROOTS.iter().cloned(),
                );
                Arc::new(
                    rustls::ClientConfig::builder()
                        .with_root_certificates(roots)
                        .with_no_client_auth(),
                )
            })
            .clone()
    }
}

/// Opens `url` (already `ws://` or `wss://`). The error is a line for logs.
pub(crate) async fn dial(url: &str, config: &DialConfig) -> Result<Socket, String> {
    let request = url.into_client_request().map_err(|e| describe(&e))?;
    let uri = request.uri();
    let secure = uri.scheme_str() == Some("wss");
    let host = uri
        .host()
        .ok_or_else(|| format!("no host in {url}"))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });
    let tcp = connect_tcp(&host, port, config.bind).await?;
    let stream = if secure {
        let name = ServerName::try_from(host.clone()).map_err(|e| format!("{host}: {e}"))?;
        let tls = tokio_rustls::TlsConnector::from(config.tls())
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        Wire::Tls(Box::new(tls))
    } else {
        Wire::Plain(tcp)
    };
    let guarded = Guarded::new(stream, config.partial.clone());
    let (socket, _response) =
        tokio_tungstenite::client_async_with_config(request, guarded, Some(config.ws))
            .await
            .map_err(|e| describe(&e))?;
    Ok(socket)
}

/// The first address of `host` that accepts a connection.
async fn connect_tcp(
    host: &str,
    port: u16,
    bind: Option<std::net::IpAddr>,
) -> Result<TcpStream, String> {
    let addrs = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| format!("resolving {host}: {e}"))?;
    let mut last = format!("{host} resolved to no address");
    for addr in addrs {
        match connect_from(addr, bind).await {
            Ok(tcp) => {
                // Frames are small and written whole: send them now.
                let _ = tcp.set_nodelay(true);
                return Ok(tcp);
            }
            Err(error) if error.raw_os_error() == Some(24) => {
                return Err(
                    "out of file descriptors (EMFILE): raise the open-files limit (ulimit -n)"
                        .into(),
                );
            }
            Err(error) => last = format!("{addr}: {error}"),
        }
    }
    Err(last)
}

/// Connects to `addr`, from `bind` if given (any port).
async fn connect_from(
    addr: std::net::SocketAddr,
    bind: Option<std::net::IpAddr>,
) -> std::io::Result<TcpStream> {
    let Some(local) = bind else {
        return TcpStream::connect(addr).await;
    };
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.bind(std::net::SocketAddr::new(local, 0))?;
    socket.connect(addr).await
}

fn describe(error: &tungstenite::Error) -> String {
    if let tungstenite::Error::Http(response) = error {
        return format!("handshake refused: HTTP {}", response.status());
    }
    crate::protocol::clip(&error.to_string(), 200)
}
