//! The simulator's listener: accepts websockets on `/global` and on
//! single-use `/team/<id>/<token>`, and hands each to its task.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;

use super::global_socket::serve_global;
use super::shared::Shared;
use super::team_socket::serve_team;
use crate::protocol::TeamId;

/// Where an accepted handshake goes.
enum Route {
    Global,
    Team(TeamId),
}

/// After a failed accept (out of descriptors, a connection aborted before
/// it was taken), wait this long before the next.
const ACCEPT_RETRY: Duration = Duration::from_millis(50);

/// Accepts connections for as long as the simulator runs. A failed accept
/// is transient (descriptors free up as sockets close): it never ends the
/// loop, which would leave every later team unable to connect.
pub(crate) async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                tokio::spawn(handshake(stream, shared.clone()));
            }
            Err(error) => {
                tracing::warn!(%error, "simulator: accept failed; retrying");
                tokio::time::sleep(ACCEPT_RETRY).await;
            }
        }
    }
}

#[allow(clippy::result_large_err)] // tungstenite's callback signature
fn route(shared: &Shared, request: &Request) -> Result<Route, ErrorResponse> {
    let refuse = |status: StatusCode| {
        let mut response = ErrorResponse::new(None);
        *response.status_mut() = status;
        response
    };
    let path = request.uri().path();
    if path == "/global" {
        return Ok(Route::Global);
    }
    let mut parts = path.trim_start_matches('/').split('/');
    let (Some("team"), Some(id), Some(token), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(refuse(StatusCode::NOT_FOUND));
    };
    let (Ok(id), Ok(token)) = (id.parse::<u64>(), token.parse::<u64>()) else {
        return Err(refuse(StatusCode::NOT_FOUND));
    };
    if shared.lock().url_opened(TeamId(id), token) {
        Ok(Route::Team(TeamId(id)))
    } else {
        Err(refuse(StatusCode::FORBIDDEN))
    }
}

async fn handshake(tcp: TcpStream, shared: Arc<Shared>) {
    let stream = match &shared.tls {
        Some(tls) => match tls.accept(tcp).await {
            Ok(stream) => stream,
            Err(_) => return,
        },
        None => crate::transport::wire::Wire::Plain(tcp),
    };
    let mut routed = None;
    #[allow(clippy::result_large_err)] // tungstenite's callback signature
    let callback = |request: &Request, response: Response| {
        routed = Some(route(&shared, request)?);
        Ok(response)
    };
    let Ok(ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else {
        return;
    };
    match routed {
        Some(Route::Global) => serve_global(ws, shared).await,
        Some(Route::Team(team)) => serve_team(ws, team, shared).await,
        None => {}
    }
}
