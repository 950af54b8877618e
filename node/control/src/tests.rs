//! The control protocol: every reply survives the trip as a line, requests keep the wire form a
//! person types (`{"cmd":"status"}`), and the socket answers bad lines without hanging up.

use std::time::Duration;

use super::*;
use brume_overlay::ids::NodeId;
use brume_overlay::neighbourhood::{Link, NeighbourhoodMap, NodeRecord};
use futures::{SinkExt, StreamExt};
use tokio::net::UnixStream;
use tokio::sync::mpsc;
use tokio_util::codec::{Framed, LinesCodec};

const PEER: &str = "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN";

fn row(task: &str) -> Row {
    Row {
        task: task.into(),
        replica: 0,
        host: "n7".into(),
        peer: PEER.into(),
        engine: "process".into(),
        state: "running".into(),
        address: "127.0.0.1:4000".into(),
        checkpoint_age_ms: Some(800),
    }
}

fn moved() -> Moved {
    Moved {
        service: "svc".into(),
        task: "mid".into(),
        replica: 1,
        host: "n7".into(),
        peer: PEER.into(),
        mode: "criu".into(),
        state_bytes: 1 << 20,
        held_ms: 12,
        elapsed_ms: 900,
        told: 2,
        address: "127.0.0.1:4001".into(),
    }
}

/// One reply of every command.
fn every_reply() -> Vec<Reply> {
    let mut record = NodeRecord::bare(NodeId(7));
    record.peer = Some(PEER.parse().expect("a peer id"));
    vec![
        Reply::Status(StatusView {
            peer_id: PEER.into(),
            name: Some("kitchen".into()),
            node_id: 7,
            listen: vec!["/ip4/127.0.0.1/tcp/7100".into()],
            degree: 3,
            coord: [1.5, -2.0, 0.25],
            coord_error: 0.5,
            uptime_s: 12.0,
            predictor: None,
            probes: Some(ProbesView {
                srtt: 4,
                handshake: 3,
                ping: 1,
                unreached: 2,
            }),
        }),
        Reply::Peers(vec![PeerView {
            peer_id: PEER.into(),
            name: None,
            node_id: 7,
            addr: None,
            srtt_ms: Some(1.25),
            rttvar_ms: None,
            predicted_ms: Some(3.5),
            links: 2,
            cone: true,
        }]),
        Reply::Map(NeighbourhoodMap {
            nodes: vec![record, NodeRecord::bare(NodeId(8))],
            links: vec![Link::new(NodeId(7), NodeId(8), 4.5)],
            proofs: Vec::new(),
        }),
        Reply::Deployed(Deployed {
            service: "svc".into(),
            epoch: 17,
            elapsed_ms: 1200,
            map_nodes: 3,
            instances: vec![row("front"), row("back")],
        }),
        Reply::Ps(vec![PsRow {
            service: "svc".into(),
            instance: row("front"),
        }]),
        Reply::Logs(LogLines {
            task: "back".into(),
            replica: 0,
            lines: vec!["one".into(), "two \"quoted\"".into()],
        }),
        Reply::Stopped(Stopped {
            service: "svc".into(),
            instances: vec!["brume-svc-front-0".into()],
        }),
        Reply::Moved(moved()),
        Reply::Drained(vec![
            DrainLine {
                service: "svc".into(),
                task: "mid".into(),
                replica: 1,
                outcome: Ok(moved()),
                on_time: Some(true),
            },
            DrainLine {
                service: "svc".into(),
                task: "back".into(),
                replica: 0,
                outcome: Err("no room".into()),
                on_time: None,
            },
        ]),
    ]
}

fn every_progress() -> Vec<Progress> {
    let step = |step| {
        Progress::Move(MoveProgress {
            service: "svc".into(),
            task: "mid".into(),
            replica: 0,
            step,
        })
    };
    vec![
        Progress::Deploy(Event {
            task: "front".into(),
            replica: 0,
            peer: PEER.into(),
            step: Step::Fetching { done: 5, total: 9 },
        }),
        Progress::Deploy(Event {
            task: "front".into(),
            replica: 0,
            peer: PEER.into(),
            step: Step::Failed {
                reason: "no room".into(),
            },
        }),
        step(MoveStep::Target {
            peer: PEER.into(),
            host: "n7".into(),
        }),
        step(MoveStep::Round {
            round: 2,
            last: false,
            dumped_bytes: 1 << 24,
            delta_bytes: 1 << 20,
            wire_bytes: 1 << 19,
            round_ms: 40,
            dump_ms: 30,
            rate: 1 << 27,
            predicted_downtime_ms: Some(80),
        }),
        step(MoveStep::Restored {
            downtime_ms: 90,
            restore_ms: 60,
            rounds: 3,
            wire_bytes: 1 << 22,
        }),
        step(MoveStep::Switching),
    ]
}

#[test]
fn every_reply_and_progress_survives_a_line() {
    let lines = every_reply()
        .into_iter()
        .map(Response::Ok)
        .chain(every_progress().into_iter().map(Response::Progress))
        .chain([Response::Error("budget out of range".into())]);
    for response in lines {
        let line = serde_json::to_string(&response).unwrap();
        assert!(!line.contains('\n'), "one response is one line: {line}");
        let back: Response = serde_json::from_str(&line).unwrap();
        assert_eq!(back, response, "{line}");
    }
}

#[test]
fn each_command_gets_its_own_reply_back() {
    // A reply goes back to its command, and only to it.
    let status = every_reply().remove(0);
    let view = StatusRequest::unwrap(status.clone()).unwrap();
    assert_eq!(StatusRequest::wrap(view), status);
    assert!(PeersRequest::unwrap(status.clone()).is_err());
    assert!(<DrainRequest as Command>::unwrap(status).is_err());
    let drained = every_reply().pop().unwrap();
    let lines = DrainRequest::unwrap(drained).unwrap();
    assert_eq!(lines[1].outcome, Err("no room".to_string()));
}

#[test]
fn requests_keep_the_line_a_person_types() {
    let parse = |line: &str| serde_json::from_str::<Request>(line).unwrap();
    assert_eq!(parse(r#"{"cmd":"status"}"#), Request::Status);
    assert_eq!(parse(r#"{"cmd":"peers"}"#), Request::Peers);
    assert_eq!(
        parse(r#"{"cmd":"map","budget_ms":50,"fresh":true}"#),
        Request::Map(MapRequest {
            budget_ms: 50.0,
            fresh: true
        })
    );
    assert_eq!(
        parse(
            r#"{"cmd":"migrate","service":null,"task":"mid","replica":0,"to":null,"budget_ms":80,"cold":false}"#
        ),
        MigrateRequest {
            service: None,
            task: "mid".into(),
            replica: 0,
            to: None,
            budget_ms: 80,
            cold: false,
            deadline_ms: None,
            max_downtime_ms: None,
            force: false,
        }
        .into_request()
    );
    assert_eq!(
        serde_json::to_string(&StatusRequest.into_request()).unwrap(),
        r#"{"cmd":"status"}"#
    );
    assert_eq!(
        serde_json::to_string(&PsRequest { all: true }.into_request()).unwrap(),
        r#"{"cmd":"ps","all":true}"#
    );
    assert_eq!(
        serde_json::to_string(
            &StopRequest {
                service: "s".into()
            }
            .into_request()
        )
        .unwrap(),
        r#"{"cmd":"stop","service":"s"}"#
    );
    for bad in [r#"{"cmd":"reboot"}"#, r#"{"cmd":"map"}"#, "status", ""] {
        assert!(serde_json::from_str::<Request>(bad).is_err(), "{bad}");
    }
}

/// A daemon stand-in: status is answered after one progress line, map with the wrong reply,
/// anything else refused.
fn stand_in(mut rx: mpsc::Receiver<Call>) {
    tokio::spawn(async move {
        while let Some((req, tx)) = rx.recv().await {
            let last = match req {
                Request::Status => {
                    let _ = tx
                        .send(Response::Progress(every_progress().remove(0)))
                        .await;
                    Response::Ok(every_reply().remove(0))
                }
                Request::Map(_) => Response::Ok(Reply::Peers(Vec::new())),
                other => Response::Error(format!("not here: {other:?}")),
            };
            let _ = tx.send(last).await;
        }
    });
}

/// The next response line on a raw connection.
async fn next(lines: &mut Framed<UnixStream, LinesCodec>) -> Response {
    let line = lines.next().await.unwrap().unwrap();
    serde_json::from_str(&line).unwrap()
}

#[tokio::test]
async fn socket_round_trip_bad_lines_and_second_node() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ctl/node.sock");
    let listener = bind(&path).await.unwrap();
    let (tx, rx) = mpsc::channel(4);
    stand_in(rx);
    tokio::spawn(serve(listener, tx));
    let wait = Duration::from_secs(60);

    let mut seen = Vec::new();
    let status = call(&path, StatusRequest, wait, |p| seen.push(p))
        .await
        .unwrap();
    assert_eq!(status.name.as_deref(), Some("kitchen"));
    assert_eq!(seen, vec![every_progress().remove(0)]);
    // A reply of another command is not taken for this one's.
    let map = MapRequest {
        budget_ms: 50.0,
        fresh: false,
    };
    let err = call(&path, map, wait, |_| {}).await.unwrap_err();
    assert!(matches!(err, ControlError::BadAnswer(_)), "{err}");
    let err = call(&path, PsRequest { all: false }, wait, |_| {})
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ControlError::Refused(m) if m.starts_with("not here")),
        "{err}"
    );

    // A malformed line is answered with an error, and the connection keeps working for the
    // line a person types.
    let stream = UnixStream::connect(&path).await.unwrap();
    let mut lines = Framed::new(stream, LinesCodec::new_with_max_length(MAX_LINE));
    lines.send("{not json".to_string()).await.unwrap();
    let answer = next(&mut lines).await;
    assert!(
        matches!(&answer, Response::Error(m) if m.contains("bad request") && m.contains(r#"{"cmd":"status"}"#)),
        "{answer:?}"
    );
    lines.send(r#"{"cmd":"status"}"#.to_string()).await.unwrap();
    assert!(matches!(next(&mut lines).await, Response::Progress(_)));
    assert!(matches!(
        next(&mut lines).await,
        Response::Ok(Reply::Status(_))
    ));

    // A second node on the same socket is refused while the first is alive.
    assert!(matches!(bind(&path).await, Err(ControlError::InUse(_))));
}

#[tokio::test]
async fn no_node_and_stale_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.sock");
    let err = call(&path, StatusRequest, Duration::from_secs(1), |_| {})
        .await
        .unwrap_err();
    assert!(err.to_string().contains("is `brume node` running"), "{err}");
    // A socket file nobody listens on (a node that died) is replaced.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    assert!(bind(&path).await.is_ok());
}
