//! Only a service's owner is obeyed about it. Three real `brume node` daemons on loopback (the
//! process engine) and two in-process overlay members: the owner, which deploys a relay on
//! node 1 with a spec it signed, and a stranger, a member like any other that owns nothing.
//!
//! The stranger cannot deploy over the service (its own signed spec of the same name, even at
//! epoch u64::MAX; a spec that claims the owner but carries the stranger's signature), stop it,
//! remove it, fence it, move it to itself (which would carry its state), reroute its callers
//! with `Moved`, read its logs or list it: each a refusal that says why, and the relay still
//! answers. The owner then reads its logs, lists it, and moves it to node 2 (node 1, the
//! move's source, forwards the owner's signature to node 2, which checks it); the stranger's
//! `Moved` is refused at the new host too, and the owner stops the service there.

use std::path::Path;
use std::time::Duration;

mod common;

use brume::deploy::wire::{self as deploy, InstanceSpec, Payload, DEPLOY_PROTOCOL};
use brume::migrate::wire::{self as moves, MOVE_PROTOCOL};
use brume_control::StatusView;
use brume_overlay::frames::{read_frame, write_frame};
use brume_overlay::{Multiaddr, OverlayHandle, PeerId, StreamProtocol};
use brume_tunnel::InstanceId;
use serde::de::DeserializeOwned;
use serde::Serialize;

const BRUME: &str = env!("CARGO_BIN_EXE_brume");

/// Sends `req` on a new stream of `protocol` and returns the first frame `last` accepts.
async fn ask<Q: Serialize, R: DeserializeOwned + std::fmt::Debug>(
    node: &OverlayHandle,
    to: PeerId,
    protocol: StreamProtocol,
    req: &Q,
    last: impl Fn(&R) -> bool,
) -> R {
    let mut s = node.open_stream(to, protocol).await.expect("a stream");
    write_frame(&mut s, req).await.expect("the request goes");
    loop {
        let r: R = read_frame(&mut s, 4 << 20).await.expect("an answer");
        if last(&r) {
            return r;
        }
    }
}

async fn host_says(node: &OverlayHandle, to: PeerId, req: deploy::Request) -> deploy::Reply {
    ask(node, to, DEPLOY_PROTOCOL, &req, |r| {
        !matches!(r, deploy::Reply::Phase(_))
    })
    .await
}

async fn mover_says(node: &OverlayHandle, to: PeerId, req: moves::Request) -> moves::Reply {
    ask(node, to, MOVE_PROTOCOL, &req, |r| {
        !matches!(r, moves::Reply::Phase(_))
    })
    .await
}

fn refused_deploy(reply: &deploy::Reply, why: &str) {
    assert!(
        matches!(reply, deploy::Reply::Refused { reason } if reason.contains(why)),
        "expected a refusal saying {why:?}, got {reply:?}"
    );
}

fn refused_move(reply: &moves::Reply, why: &str) {
    assert!(
        matches!(reply, moves::Reply::Refused { reason } if reason.contains(why)),
        "expected a refusal saying {why:?}, got {reply:?}"
    );
}

async fn member(through: &Multiaddr) -> OverlayHandle {
    let cfg = brume_overlay::OverlayConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
        bootstrap: vec![through.clone()],
        min_degree: 1,
        max_degree: 4,
        ..Default::default()
    };
    brume_overlay::Overlay::spawn(cfg)
        .await
        .expect("a member")
        .0
}

#[test]
fn a_member_that_does_not_own_a_service_is_refused_and_its_owner_is_obeyed() {
    let service = format!("owned-{:08x}", rand::random::<u32>());
    let net = common::ServiceNet::start(Path::new(BRUME), 3, "process", 150, &service);
    let listen = |i: usize| -> Multiaddr {
        let out = net.brume(i, &["status", "--json"]);
        let status: StatusView = serde_json::from_slice(&out.stdout).unwrap();
        status.listen[0].parse().unwrap()
    };
    let peer =
        |a: &Multiaddr| -> PeerId { a.to_string().rsplit('/').next().unwrap().parse().unwrap() };
    let (at1, at2) = (listen(1), listen(2));
    let (host, other) = (peer(&at1), peer(&at2));
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let owner = member(&at1).await;
        let stranger = member(&at1).await;
        for node in [&owner, &stranger] {
            node.connect(host, vec![at1.clone()], Duration::from_secs(60))
                .await
                .unwrap();
            node.connect(other, vec![at2.clone()], Duration::from_secs(60))
                .await
                .unwrap();
        }

        // The owner deploys a relay on node 1; its chunks come from the owner.
        let store_dir = common::tempdir();
        let store = brume_artifact::ChunkStore::open(store_dir.path()).unwrap();
        let ctx = common::relay_context(&service);
        let artifact = brume_artifact::pack_context(ctx.path()).unwrap();
        let manifest = store.put_artifact(&artifact).unwrap();
        let incoming = owner
            .accept_streams(brume_artifact::TRANSFER_PROTOCOL)
            .unwrap();
        let server = tokio::spawn(brume_artifact::serve_incoming(store, incoming, 2));
        let id = InstanceId::new(&service, "relay", 0);
        let spec = |epoch: u64| {
            InstanceSpec::new(
                id.clone(),
                epoch,
                Payload::Artifact(manifest.clone()),
                100,
                64,
            )
        };
        let started = host_says(
            &owner,
            host,
            deploy::Request::Deploy(spec(1).signed(owner.keypair())),
        )
        .await;
        let deploy::Reply::Started { instance, .. } = started else {
            panic!("the owner's relay did not start: {started:?}");
        };
        let relay_answers = || assert_eq!(common::ask(instance.port, "x").unwrap(), "relay");
        relay_answers();

        // The stranger: its own spec of the same name, even at the highest epoch.
        let squat = spec(u64::MAX).signed(stranger.keypair());
        let r = host_says(&stranger, host, deploy::Request::Deploy(squat.clone())).await;
        refused_deploy(&r, "belongs to");
        let r = host_says(&stranger, host, deploy::Request::Prepare(squat)).await;
        refused_deploy(&r, "belongs to");
        // A spec that claims the owner, signed by the stranger; one not signed at all.
        let mut forged = spec(2).signed(stranger.keypair());
        forged.initiator = Some(owner.peer_id());
        let r = host_says(&stranger, host, deploy::Request::Deploy(forged)).await;
        refused_deploy(&r, "not signed by its owner");
        let mut unsigned = spec(2);
        unsigned.initiator = Some(owner.peer_id());
        let r = host_says(&stranger, host, deploy::Request::Deploy(unsigned)).await;
        refused_deploy(&r, "not signed by its owner");
        // Stop, remove, logs.
        let stop = deploy::Request::Stop {
            service: service.clone(),
            epoch: None,
        };
        refused_deploy(
            &host_says(&stranger, host, stop.clone()).await,
            "may not stop",
        );
        let remove = deploy::Request::Remove {
            instance: id.clone(),
            epoch: 1,
            back_to: Some(stranger.peer_id()),
            delegation: None,
        };
        refused_deploy(&host_says(&stranger, host, remove).await, "may not remove");
        let logs = deploy::Request::Logs {
            instance: id.clone(),
            tail: 10,
        };
        refused_deploy(
            &host_says(&stranger, host, logs.clone()).await,
            "may not read the logs",
        );
        let list = deploy::Request::List {
            service: Some(service.clone()),
        };
        assert_eq!(
            host_says(&stranger, host, list.clone()).await,
            deploy::Reply::Instances(Vec::new()),
            "a stranger lists nothing of the owner's"
        );
        // Move it to itself (its state would follow), fence it, reroute its callers.
        let steal = moves::Request::Migrate {
            instance: id.clone(),
            to: Some(stranger.peer_id()),
            budget_ms: 2000,
            allow_cold: true,
            deadline_ms: None,
            max_downtime_ms: None,
            force: false,
        };
        refused_move(&mover_says(&stranger, host, steal).await, "may not move");
        let fence = moves::Request::Fence {
            instance: id.clone(),
            generation: Default::default(),
        };
        refused_move(&mover_says(&stranger, host, fence).await, "may not fence");
        let reroute = moves::Request::Moved {
            instance: id.clone(),
            peer: stranger.peer_id(),
            host: "evil".into(),
            addrs: Vec::new(),
            delegation: None,
        };
        refused_move(
            &mover_says(&stranger, host, reroute.clone()).await,
            "may not reroute",
        );
        // A delegation the stranger signed itself, naming itself: not the owner's.
        let self_made = brume::heal::delegation::Delegation::sign(
            stranger.keypair(),
            &service,
            2,
            u64::MAX,
            vec![stranger.peer_id()],
        );
        let reroute_delegated = moves::Request::Moved {
            instance: id.clone(),
            peer: stranger.peer_id(),
            host: "evil".into(),
            addrs: Vec::new(),
            delegation: Some(Box::new(self_made)),
        };
        refused_move(
            &mover_says(&stranger, host, reroute_delegated).await,
            "not by the service's owner",
        );
        // Nor does it let the stranger retire the instance as a holder would.
        let remove_delegated = deploy::Request::Remove {
            instance: id.clone(),
            epoch: 1,
            back_to: None,
            delegation: Some(Box::new(brume::heal::delegation::Delegation::sign(
                stranger.keypair(),
                &service,
                2,
                u64::MAX,
                vec![stranger.peer_id()],
            ))),
        };
        refused_deploy(
            &host_says(&stranger, host, remove_delegated).await,
            "not by the service's owner",
        );
        relay_answers();

        // The owner is obeyed: logs, list, a move to node 2.
        let r = host_says(&owner, host, logs).await;
        assert!(matches!(r, deploy::Reply::Logs(_)), "{r:?}");
        let r = host_says(&owner, host, list).await;
        assert!(
            matches!(&r, deploy::Reply::Instances(l) if l.len() == 1),
            "{r:?}"
        );
        let go = moves::Request::Migrate {
            instance: id.clone(),
            to: Some(other),
            budget_ms: 2000,
            allow_cold: true,
            deadline_ms: None,
            max_downtime_ms: None,
            force: false,
        };
        let moved = mover_says(&owner, host, go).await;
        let moves::Reply::Migrated { to, instance, .. } = moved else {
            panic!("the owner's move was not made: {moved:?}");
        };
        assert_eq!(to, other);
        assert_eq!(common::ask(instance.port, "x").unwrap(), "relay");
        // Its new host takes no reroute from the stranger either, and the owner stops it.
        refused_move(
            &mover_says(&stranger, other, reroute).await,
            "may not reroute",
        );
        refused_deploy(
            &host_says(&stranger, other, stop.clone()).await,
            "may not stop",
        );
        let r = host_says(&owner, other, stop).await;
        assert!(
            matches!(&r, deploy::Reply::Stopped { instances } if instances.len() == 1),
            "{r:?}"
        );
        server.abort();
        owner.shutdown().await.unwrap();
        stranger.shutdown().await.unwrap();
    });
}
