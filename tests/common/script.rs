//! The server's side of the usual opening over real sockets: Global
//! greeted, a team announced, its `team.connect` answered, its socket
//! greeted.

use serde_json::json;
use switchboard::testkit::server::{Conn, Server};

/// Accepts the client's Global, greets it, and connects team `team_id`;
/// returns (Global, the team's socket).
pub async fn connect_one(server: &mut Server, team_id: u64) -> (Conn, Conn) {
    let mut global = server.accept().await;
    global.send(json!({"type": "hello"}));
    let team = join_team(server, &mut global, team_id).await;
    (global, team)
}

/// Announces `team_id` on `global` and connects it (see [`answer_connect`]).
pub async fn join_team(server: &mut Server, global: &mut Conn, team_id: u64) -> Conn {
    global.send(json!({"type": "team.join", "team_id": team_id}));
    answer_connect(server, global, team_id).await
}

/// Waits for the client's `team.connect` for `team_id`, answers it with a
/// URL on `server`, accepts the team's socket and greets it.
pub async fn answer_connect(server: &mut Server, global: &mut Conn, team_id: u64) -> Conn {
    let request = global.expect("team.connect").await;
    assert_eq!(request["team_id"], team_id);
    let url = server.url(&format!("/team/{team_id}"));
    global.send(json!({"type": "team.connect", "team_id": team_id, "ws_url": url}));
    let team = server.accept().await;
    team.send(json!({"type": "hello"}));
    team
}
