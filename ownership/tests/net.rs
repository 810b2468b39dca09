//! The network implementation: a real server on 127.0.0.1 and clients in both modes.

mod common;

use common::session_with;
use keyward_ownership::frame::{kind, FrameWriter, Reader};
use keyward_ownership::{
    connect, server_stats, Answer, Claim, ClientOptions, Coordinator, Endpoints, Event, Mode,
    NodeId, OwnershipError, Server, ServerConfig,
};
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

const SECRET: &str = "test-cluster-secret";

struct TestServer {
    addr: String,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl TestServer {
    async fn start(dir: &Path, limit: usize) -> TestServer {
        Self::start_at("127.0.0.1:0", dir, limit).await
    }

    async fn start_at(listen: &str, dir: &Path, limit: usize) -> TestServer {
        let mut cfg = ServerConfig::new(listen, SECRET, dir.to_path_buf());
        cfg.max_ports_per_node = limit;
        let server = Server::bind(cfg).await.unwrap();
        let addr = server.local_addr().to_string();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            server
                .run(async {
                    let _ = rx.await;
                })
                .await
                .unwrap();
        });
        TestServer {
            addr,
            stop: Some(tx),
            task,
        }
    }

    async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        tokio::time::timeout(Duration::from_secs(5), &mut self.task)
            .await
            .unwrap()
            .unwrap();
    }

    fn addrs(&self) -> Vec<String> {
        vec![self.addr.clone()]
    }
}

async fn node(s: &TestServer, name: &str, mode: Mode, lease_ms: u64) -> Coordinator {
    connect(
        &s.addrs(),
        session_with(name, mode, lease_ms),
        ClientOptions::with_secret(SECRET),
    )
    .await
    .unwrap()
}

fn granted(c: Claim) -> keyward_ownership::Guard {
    match c {
        Claim::Granted(g) => g,
        Claim::OwnedBy(o) => panic!("expected a grant, key owned by {}", o.node),
    }
}

async fn every_call(mode: Mode) {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path(), 1_000_000).await;
    let a = node(&s, "a", mode, 3_000).await;
    // The receiver of messages keeps a push channel, so it is persistent in both runs.
    let b = node(&s, "b", Mode::Persistent, 3_000).await;
    assert!(a.lease_valid());

    // RegPort
    let g = granted(a.claim(&["cache/db/t/1"]).await.unwrap().pop().unwrap());
    assert!(g.is_valid());
    assert!(g.token() > 0);
    match b.claim(&["cache/db/t/1"]).await.unwrap().pop().unwrap() {
        Claim::OwnedBy(o) => {
            assert_eq!(o.node, NodeId::from("a"));
            assert_eq!(o.token, g.token());
            assert_eq!(o.endpoint("cache"), Some("a.example:7401"));
        }
        Claim::Granted(_) => panic!("two owners for one key"),
    }
    // QueryPort
    let owners = b.owner_of(&["cache/db/t/1", "cache/db/t/2"]).await.unwrap();
    assert_eq!(owners[0].as_ref().unwrap().node, NodeId::from("a"));
    assert_eq!(owners[0].as_ref().unwrap().token, g.token());
    assert!(owners[1].is_none());
    // QueryNode
    let info = b.query_node(&NodeId::from("a")).await.unwrap().unwrap();
    assert_eq!(info.ports, 1);
    assert_eq!(info.endpoints.get("cache").unwrap(), "a.example:7401");
    assert!(b
        .query_node(&NodeId::from("nobody"))
        .await
        .unwrap()
        .is_none());
    // SendMsg and WaitMsg, in order per sender.
    let gb = granted(b.claim(&["cache/db/t/b"]).await.unwrap().pop().unwrap());
    let mut inbox = b.messages("cache/");
    for i in 0..100u32 {
        a.send("cache/db/t/b", i.to_le_bytes().to_vec())
            .await
            .unwrap();
    }
    for i in 0..100u32 {
        let ev = tokio::time::timeout(Duration::from_secs(5), inbox.recv())
            .await
            .unwrap()
            .unwrap();
        match ev {
            Event::Message { key, from, payload } => {
                assert_eq!(key, "cache/db/t/b");
                assert_eq!(from, NodeId::from("a"));
                assert_eq!(payload.as_ref(), i.to_le_bytes());
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    match a.send("cache/db/t/none", &b"x"[..]).await {
        Err(OwnershipError::NoOwner { key }) => assert_eq!(key, "cache/db/t/none"),
        other => panic!("expected NoOwner, got {other:?}"),
    }
    // Relet works in both modes.
    a.relet().await.unwrap();
    // UnRegPort
    let t1 = g.token();
    g.release().await.unwrap();
    assert!(b.owner_of(&["cache/db/t/1"]).await.unwrap()[0].is_none());
    let g2 = granted(b.claim(&["cache/db/t/1"]).await.unwrap().pop().unwrap());
    assert!(g2.token() > t1, "tokens grow across owners");
    // Close frees the node's ports at once.
    let g3 = granted(a.claim(&["cache/db/t/3"]).await.unwrap().pop().unwrap());
    let lost = g3.lost();
    a.close().await.unwrap();
    tokio::time::timeout(Duration::from_secs(1), lost)
        .await
        .unwrap();
    assert!(a.claim(&["cache/db/t/4"]).await.is_err());
    granted(b.claim(&["cache/db/t/3"]).await.unwrap().pop().unwrap());
    drop(gb);
    s.stop().await;
}

#[tokio::test]
async fn every_call_in_persistent_mode() {
    every_call(Mode::Persistent).await;
}

#[tokio::test]
async fn every_call_in_lease_mode() {
    every_call(Mode::Lease).await;
}

async fn batches(mode: Mode) {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path(), 1_000_000).await;
    let a = node(&s, "a", mode, 5_000).await;
    let b = node(&s, "b", mode, 5_000).await;
    assert!(a.claim(&[]).await.unwrap().is_empty());
    assert!(a.owner_of(&[]).await.unwrap().is_empty());
    // Duplicates in one batch: one guard, the other occurrence reports this node.
    let mut dup = a.claim(&["x/1", "x/1"]).await.unwrap();
    let second = dup.pop().unwrap();
    let first = granted(dup.pop().unwrap());
    match second {
        Claim::OwnedBy(o) => assert_eq!(o.node, NodeId::from("a")),
        Claim::Granted(_) => panic!("two guards for one key in one node"),
    }
    drop(first);
    // 10,000 ports in one request.
    let keys: Vec<String> = (0..10_000).map(|i| format!("cache/db/t/{i:08}")).collect();
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    let guards: Vec<_> = a
        .claim(&refs)
        .await
        .unwrap()
        .into_iter()
        .map(granted)
        .collect();
    assert_eq!(guards.len(), 10_000);
    let mut tokens: Vec<i64> = guards.iter().map(|g| g.token()).collect();
    tokens.sort_unstable();
    tokens.dedup();
    assert_eq!(tokens.len(), 10_000, "every grant has its own token");
    let refused = b.claim(&refs).await.unwrap();
    assert!(refused
        .iter()
        .all(|c| matches!(c, Claim::OwnedBy(o) if o.node == NodeId::from("a"))));
    let owners = b.owner_of(&refs).await.unwrap();
    assert!(owners
        .iter()
        .all(|o| o.as_ref().unwrap().node == NodeId::from("a")));
    assert_eq!(
        b.query_node(&NodeId::from("a"))
            .await
            .unwrap()
            .unwrap()
            .ports,
        10_000
    );
    // Dropping guards releases in the background, before a's next call.
    drop(guards);
    assert_eq!(
        a.query_node(&NodeId::from("a"))
            .await
            .unwrap()
            .unwrap()
            .ports,
        0
    );
    let again = b.claim(&refs).await.unwrap();
    assert!(again.iter().all(|c| matches!(c, Claim::Granted(_))));
    s.stop().await;
}

#[tokio::test]
async fn batches_in_persistent_mode() {
    batches(Mode::Persistent).await;
}

#[tokio::test]
async fn batches_in_lease_mode() {
    batches(Mode::Lease).await;
}

#[tokio::test]
async fn lease_mode_port_is_released_at_lease_expiry_and_not_before() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path(), 1_000_000).await;
    let b = node(&s, "b", Mode::Persistent, 3_000).await;
    let start = Instant::now();
    let a = node(&s, "a", Mode::Lease, 500).await;
    let g = granted(a.claim(&["vfs/v/f"]).await.unwrap().pop().unwrap());
    // Relet at ~150 ms moves the lease end to at least 650 ms after `start`.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let relet_at = Instant::now();
    a.relet().await.unwrap();
    tokio::time::sleep_until((start + Duration::from_millis(450)).into()).await;
    assert!(
        matches!(
            b.claim(&["vfs/v/f"]).await.unwrap().pop().unwrap(),
            Claim::OwnedBy(_)
        ),
        "released before the lease ended"
    );
    let gb = b
        .claim_wait("vfs/v/f", Duration::from_secs(3))
        .await
        .unwrap();
    assert!(
        relet_at.elapsed() >= Duration::from_millis(500),
        "granted {:?} after the last relet, lease is 500 ms",
        relet_at.elapsed()
    );
    assert!(gb.token() > g.token());
    // The client gave up its belief by then (lease end minus margin on its own clock).
    assert!(!g.is_valid());
    tokio::time::timeout(Duration::from_millis(100), g.lost())
        .await
        .unwrap();
    s.stop().await;
}

#[tokio::test]
async fn persistent_heartbeats_keep_ports_past_the_lease() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path(), 1_000_000).await;
    let a = node(&s, "a", Mode::Persistent, 300).await;
    let b = node(&s, "b", Mode::Persistent, 3_000).await;
    let g = granted(a.claim(&["search/i/0"]).await.unwrap().pop().unwrap());
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert!(g.is_valid());
    assert!(matches!(
        b.claim(&["search/i/0"]).await.unwrap().pop().unwrap(),
        Claim::OwnedBy(_)
    ));
    s.stop().await;
}

#[tokio::test]
async fn notify_on_release_reaches_the_refused_node() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path(), 1_000_000).await;
    let a = node(&s, "a", Mode::Persistent, 3_000).await;
    let b = node(&s, "b", Mode::Persistent, 3_000).await;
    let g = granted(a.claim(&["migrate/db1"]).await.unwrap().pop().unwrap());
    let mut events = b.messages("migrate/");
    assert!(matches!(
        b.claim_with(&["migrate/db1"], true)
            .await
            .unwrap()
            .pop()
            .unwrap(),
        Claim::OwnedBy(_)
    ));
    let waiter = {
        let b = b.clone();
        tokio::spawn(async move { b.claim_wait("migrate/db1", Duration::from_secs(3)).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    g.release().await.unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(2), events.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        ev,
        Event::Released {
            key: "migrate/db1".into()
        }
    );
    let gb = tokio::time::timeout(Duration::from_secs(2), waiter)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(gb.key(), "migrate/db1");
    // wait_for_release returns at once for a free key and after release otherwise.
    drop(gb);
    b.wait_for_release("migrate/db1", Duration::from_secs(1))
        .await
        .unwrap();
    s.stop().await;
}

#[tokio::test]
async fn tokens_grow_across_a_restart_of_a_lone_server() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path(), 1_000_000).await;
    let a = node(&s, "a", Mode::Persistent, 500).await;
    let mut last = 0;
    for _ in 0..3 {
        let g = granted(a.claim(&["vfs/v/f"]).await.unwrap().pop().unwrap());
        assert!(g.token() > last);
        last = g.token();
        g.release().await.unwrap();
    }
    let before = server_stats(&s.addrs(), &ClientOptions::with_secret(SECRET))
        .await
        .unwrap()
        .epoch;
    drop(a);
    s.stop().await;
    let s = TestServer::start(dir.path(), 1_000_000).await;
    let stats = server_stats(&s.addrs(), &ClientOptions::with_secret(SECRET))
        .await
        .unwrap();
    assert!(stats.epoch > before);
    assert_eq!(stats.ports, 0, "port state is not persisted");
    let a = node(&s, "a2", Mode::Persistent, 3_000).await;
    let g = granted(a.claim(&["vfs/v/f"]).await.unwrap().pop().unwrap());
    assert!(g.token() > last, "token {} not above {last}", g.token());
    s.stop().await;
}

#[tokio::test]
async fn wrong_secret_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path(), 1_000_000).await;
    for mode in [Mode::Persistent, Mode::Lease] {
        let r = connect(
            &s.addrs(),
            session_with("x", mode, 1_000),
            ClientOptions::with_secret("not-the-secret"),
        )
        .await;
        assert!(matches!(r, Err(OwnershipError::AuthRefused(_))), "{r:?}");
    }
    let r = server_stats(&s.addrs(), &ClientOptions::with_secret("nope")).await;
    assert!(matches!(r, Err(OwnershipError::AuthRefused(_))), "{r:?}");
    // Nothing reachable at all is reported as unavailable.
    let r = connect(
        &["127.0.0.1:1".to_string()],
        session_with("x", Mode::Persistent, 1_000),
        ClientOptions::with_secret(SECRET),
    )
    .await;
    assert!(matches!(r, Err(OwnershipError::Unavailable(_))), "{r:?}");
    s.stop().await;
}

#[tokio::test]
async fn port_limit_is_enforced_without_partial_grants() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path(), 5).await;
    let a = node(&s, "a", Mode::Persistent, 3_000).await;
    let keys = ["k/1", "k/2", "k/3", "k/4", "k/5", "k/6"];
    match a.claim(&keys).await {
        Err(OwnershipError::PortLimit { held, limit }) => assert_eq!((held, limit), (0, 5)),
        other => panic!("expected PortLimit, got {other:?}"),
    }
    assert!(a.owner_of(&keys).await.unwrap().iter().all(Option::is_none));
    let gs: Vec<_> = a
        .claim(&keys[..5])
        .await
        .unwrap()
        .into_iter()
        .map(granted)
        .collect();
    assert!(matches!(
        a.claim(&["k/6"]).await,
        Err(OwnershipError::PortLimit { held: 5, limit: 5 })
    ));
    drop(gs);
    granted(a.claim(&["k/6"]).await.unwrap().pop().unwrap());
    s.stop().await;
}

#[tokio::test]
async fn stats_show_sessions_and_ports_per_node() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path(), 1_000_000).await;
    let a = node(&s, "a", Mode::Persistent, 3_000).await;
    let b = node(&s, "b", Mode::Lease, 3_000).await;
    let _ga = a.claim(&["x/1", "x/2"]).await.unwrap();
    let _gb = b.claim(&["x/3"]).await.unwrap();
    let st = server_stats(&s.addrs(), &ClientOptions::with_secret(SECRET))
        .await
        .unwrap();
    assert_eq!(st.sessions, 2);
    assert_eq!(st.ports, 3);
    assert_eq!(st.members, s.addrs());
    assert_eq!(st.master.as_deref(), Some(s.addr.as_str()));
    let per: Vec<(String, usize, Mode)> = st
        .nodes
        .iter()
        .map(|n| (n.node.clone(), n.ports, n.mode))
        .collect();
    assert_eq!(
        per,
        vec![
            ("a".into(), 2, Mode::Persistent),
            ("b".into(), 1, Mode::Lease)
        ]
    );
    s.stop().await;
}

// ---- raw sockets: the wire protocol by hand ----

/// Authenticates a raw connection the way the client does.
async fn raw_auth(addr: &str, secret: &str) -> TcpStream {
    use hmac::{Hmac, KeyInit, Mac};
    let mut s = TcpStream::connect(addr).await.unwrap();
    let (k, _, challenge) = read_frame(&mut s).await.unwrap();
    assert_eq!(k, kind::CHALLENGE);
    let server_nonce = &challenge[..16];
    let client_nonce = [7u8; 16];
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(b"keyward-ownership-v1 client");
    mac.update(server_nonce);
    mac.update(&client_nonce);
    let tag = mac.finalize().into_bytes();
    let mut out = bytes::BytesMut::new();
    let mut w = FrameWriter::begin(&mut out, kind::AUTH, 0);
    w.raw(&client_nonce).raw(&tag);
    w.finish();
    s.write_all(&out).await.unwrap();
    let (k, _, _) = read_frame(&mut s).await.unwrap();
    assert_eq!(k, kind::AUTH_OK);
    s
}

async fn read_frame(s: &mut TcpStream) -> Option<(u8, u32, Vec<u8>)> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).await.ok()?;
    let mut body = vec![0u8; u32::from_le_bytes(len) as usize];
    s.read_exact(&mut body).await.ok()?;
    Some((
        body[1],
        u32::from_le_bytes([body[2], body[3], body[4], body[5]]),
        body[6..].to_vec(),
    ))
}

/// True when the server closes the connection (after possibly sending something).
async fn closed_by_server(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        match tokio::time::timeout_at(deadline.into(), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

#[tokio::test]
async fn malformed_frames_end_only_their_connection() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path(), 1_000_000).await;
    let a = node(&s, "a", Mode::Persistent, 3_000).await;
    let g = granted(a.claim(&["cache/db/t/1"]).await.unwrap().pop().unwrap());

    // Garbage before authentication.
    let mut raw = TcpStream::connect(&s.addr).await.unwrap();
    raw.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(closed_by_server(&mut raw).await);

    let hello = |id| {
        let mut b = bytes::BytesMut::new();
        let mut w = FrameWriter::begin(&mut b, kind::HELLO, id);
        w.str("raw").u64(1).u8(0).u32(3_000).u16(0);
        w.finish();
        b
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("oversize length", (u32::MAX - 1).to_le_bytes().to_vec()),
        ("length shorter than header", 3u32.to_le_bytes().to_vec()),
        ("bad version", {
            let mut b = hello(1).to_vec();
            b[4] = 99;
            b
        }),
        ("unknown kind", {
            let mut b = hello(1).to_vec();
            b[5] = 0x77;
            b
        }),
        ("server-only kind from a client", {
            let mut b = bytes::BytesMut::new();
            FrameWriter::begin(&mut b, kind::CLAIMS, 1).finish();
            b.to_vec()
        }),
        ("truncated payload", {
            let mut b = bytes::BytesMut::new();
            let mut w = FrameWriter::begin(&mut b, kind::REG_PORT, 1);
            w.u8(0).u32(1_000_000).str("a/b");
            w.finish();
            b.to_vec()
        }),
        ("trailing bytes", {
            let mut b = bytes::BytesMut::new();
            let mut w = FrameWriter::begin(&mut b, kind::RELET, 1);
            w.u64(5);
            w.finish();
            b.to_vec()
        }),
        ("bad utf-8 key", {
            let mut b = bytes::BytesMut::new();
            let mut w = FrameWriter::begin(&mut b, kind::QUERY_PORT, 1);
            w.u32(1).u16(2).raw(&[0xff, 0xfe]);
            w.finish();
            b.to_vec()
        }),
    ];
    for (what, bytes) in cases {
        let mut raw = raw_auth(&s.addr, SECRET).await;
        raw.write_all(&hello(1)).await.unwrap();
        let (k, _, _) = read_frame(&mut raw).await.unwrap();
        assert_eq!(k, kind::WELCOME, "{what}");
        raw.write_all(&bytes).await.unwrap();
        assert!(
            closed_by_server(&mut raw).await,
            "{what}: connection stays open"
        );
    }
    // A request without a session is answered with an error, not a hang-up.
    let mut raw = raw_auth(&s.addr, SECRET).await;
    let mut b = bytes::BytesMut::new();
    let mut w = FrameWriter::begin(&mut b, kind::REG_PORT, 9);
    w.u8(0).u32(1).str("a/b");
    w.finish();
    raw.write_all(&b).await.unwrap();
    let (k, id, payload) = read_frame(&mut raw).await.unwrap();
    assert_eq!((k, id), (kind::ERR, 9));
    assert_eq!(Reader::new(&payload).u16("code").unwrap(), 1);

    // The valid client and its port are untouched; new clients work.
    assert!(g.is_valid());
    let b = node(&s, "b", Mode::Persistent, 3_000).await;
    let owner = b
        .owner_of(&["cache/db/t/1"])
        .await
        .unwrap()
        .pop()
        .unwrap()
        .unwrap();
    assert_eq!(owner.node, NodeId::from("a"));
    granted(a.claim(&["cache/db/t/2"]).await.unwrap().pop().unwrap());
    s.stop().await;
}

#[tokio::test]
async fn a_dropped_connection_does_not_shorten_the_lease() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path(), 1_000_000).await;
    let b = node(&s, "b", Mode::Persistent, 3_000).await;
    let mut raw = raw_auth(&s.addr, SECRET).await;
    let start = Instant::now();
    let mut out = bytes::BytesMut::new();
    let mut w = FrameWriter::begin(&mut out, kind::HELLO, 1);
    w.str("raw").u64(1).u8(0).u32(400).u16(0);
    w.finish();
    let mut w = FrameWriter::begin(&mut out, kind::REG_PORT, 2);
    w.u8(0).u32(1).str("vfs/v/raw");
    w.finish();
    raw.write_all(&out).await.unwrap();
    assert_eq!(read_frame(&mut raw).await.unwrap().0, kind::WELCOME);
    assert_eq!(read_frame(&mut raw).await.unwrap().0, kind::CLAIMS);
    drop(raw);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(matches!(
        b.claim(&["vfs/v/raw"]).await.unwrap().pop().unwrap(),
        Claim::OwnedBy(o) if o.node == NodeId::from("raw")
    ));
    let g = b
        .claim_wait("vfs/v/raw", Duration::from_secs(3))
        .await
        .unwrap();
    assert!(start.elapsed() >= Duration::from_millis(400));
    assert!(g.is_valid());
    s.stop().await;
}

#[tokio::test]
async fn a_node_reconnecting_with_a_new_session_replaces_the_old_one() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path(), 1_000_000).await;
    let a1 = node(&s, "a", Mode::Persistent, 3_000).await;
    let g = granted(a1.claim(&["x/1"]).await.unwrap().pop().unwrap());
    // A restarted process with the same node id: the old session and its ports end.
    let a2 = node(&s, "a", Mode::Persistent, 3_000).await;
    tokio::time::timeout(Duration::from_secs(2), g.lost())
        .await
        .unwrap();
    granted(a2.claim(&["x/1"]).await.unwrap().pop().unwrap());
    s.stop().await;
}

#[tokio::test]
async fn after_a_restart_nodes_reregister_their_ports_with_larger_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path(), 1_000_000).await;
    let addr = s.addr.clone();
    let a = node(&s, "a", Mode::Persistent, 1_000).await;
    let ga: Vec<_> = a
        .claim(&["x/1", "x/2"])
        .await
        .unwrap()
        .into_iter()
        .map(granted)
        .collect();
    let before: Vec<i64> = ga.iter().map(|g| g.token()).collect();
    s.stop().await;
    let restarted = Instant::now();
    let s = TestServer::start_at(&addr, dir.path(), 1_000_000).await;
    // A node of the new life cannot take a port of the old one, nor any free port, before the
    // old leases are surely over; the old owner re-registers meanwhile.
    let c = node(&s, "c", Mode::Persistent, 1_000).await;
    let g_new = granted(c.claim(&["x/3"]).await.unwrap().pop().unwrap());
    assert!(
        restarted.elapsed() >= Duration::from_millis(1_000),
        "a new claim was granted {:?} after the restart, inside the window",
        restarted.elapsed()
    );
    match c.claim(&["x/1"]).await.unwrap().pop().unwrap() {
        Claim::OwnedBy(o) => assert_eq!(o.node, NodeId::from("a")),
        Claim::Granted(_) => panic!("port of the previous life handed to another node"),
    }
    for (g, t) in ga.iter().zip(&before) {
        assert!(g.is_valid(), "{} lost across the restart", g.key());
        assert!(g.token() > *t, "token of {} did not grow", g.key());
    }
    let owners = c.owner_of(&["x/1", "x/2"]).await.unwrap();
    for (o, g) in owners.iter().zip(&ga) {
        assert_eq!(o.as_ref().unwrap().token, g.token());
    }
    assert!(g_new.token() > before[1]);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_racing_claims_grant_each_key_once() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path(), 1_000_000).await;
    let a = node(&s, "a", Mode::Persistent, 5_000).await;
    let b = node(&s, "b", Mode::Persistent, 5_000).await;
    // 32 tasks per node, each claiming the same 100 keys one request at a time: many requests
    // in flight on each connection, and every key must go to exactly one node.
    let mut tasks = Vec::new();
    for t in 0..64 {
        let who = if t % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            let mut won = Vec::new();
            for i in 0..100 {
                let key = format!("cache/db/t/{:08}", (i + t * 7) % 100);
                if let Claim::Granted(g) = who.claim(&[key.as_str()]).await.unwrap().pop().unwrap()
                {
                    won.push(g);
                }
            }
            won
        }));
    }
    let mut winners: Vec<(String, String)> = Vec::new();
    let mut guards = Vec::new();
    for (t, task) in tasks.into_iter().enumerate() {
        for g in task.await.unwrap() {
            winners.push((
                g.key().to_owned(),
                if t % 2 == 0 { "a" } else { "b" }.to_owned(),
            ));
            guards.push(g);
        }
    }
    winners.sort();
    let keys: Vec<&String> = winners.iter().map(|(k, _)| k).collect();
    let mut unique = keys.clone();
    unique.dedup();
    assert_eq!(keys.len(), unique.len(), "a key was granted twice");
    assert_eq!(unique.len(), 100);
    let refs: Vec<&str> = unique.iter().map(|k| k.as_str()).collect();
    let owners = a.owner_of(&refs).await.unwrap();
    for ((_, who), o) in winners.iter().zip(owners) {
        assert_eq!(o.unwrap().node.as_str(), who);
    }
    s.stop().await;
}

#[tokio::test]
async fn a_lease_mode_node_whose_lease_ran_out_starts_over() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path(), 1_000_000).await;
    let a = node(&s, "a", Mode::Lease, 300).await;
    let g = granted(a.claim(&["x/1"]).await.unwrap().pop().unwrap());
    tokio::time::timeout(Duration::from_secs(2), g.lost())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    // The server dropped the session at lease end; the next call opens a new one.
    let g2 = granted(a.claim(&["x/2"]).await.unwrap().pop().unwrap());
    assert!(g2.is_valid());
    assert!(!g.is_valid());
    assert!(a.owner_of(&["x/1"]).await.unwrap()[0].is_none());
    s.stop().await;
}

#[tokio::test]
async fn config_section_parses_and_connects() {
    use keyward_ownership::{InProcessHub, OwnershipConfig};
    let toml_text = r#"
        mode = "lease"
        lease_ms = 2000
        margin_ms = 200
        secret = "test-cluster-secret"
        max_ports_per_node = 100
    "#;
    let mut c: OwnershipConfig = toml::from_str(toml_text).unwrap();
    c.validate().unwrap();
    assert_eq!(c.listen, "127.0.0.1:7400");
    assert!(toml::from_str::<OwnershipConfig>("lease = 5").is_err());
    // No servers: the in-process hub.
    let hub = InProcessHub::new();
    let n = c
        .connect(
            c.session_config(Some(NodeId::from("n")), Endpoints::new()),
            &hub,
        )
        .await
        .unwrap();
    granted(n.claim(&["x/1"]).await.unwrap().pop().unwrap());
    // With a server: the network client, with the server settings from the same section.
    let dir = tempfile::tempdir().unwrap();
    let mut sc = c.server_config(dir.path());
    sc.listen = "127.0.0.1:0".into();
    assert_eq!(sc.max_ports_per_node, 100);
    let server = Server::bind(sc).await.unwrap();
    c.servers = vec![server.local_addr().to_string()];
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async {
        let _ = rx.await;
    }));
    let n = c
        .connect(
            c.session_config(Some(NodeId::from("n")), Endpoints::new()),
            &hub,
        )
        .await
        .unwrap();
    assert_eq!(n.mode(), Mode::Lease);
    granted(n.claim(&["x/1"]).await.unwrap().pop().unwrap());
    let _ = tx.send(());
    task.await.unwrap().unwrap();
}

/// A TCP relay whose live connections the test can cut, as a network fault would.
struct Relay {
    addr: String,
    cut: tokio::sync::watch::Sender<u64>,
}

async fn relay(to: String) -> Relay {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (cut, cut_rx) = tokio::sync::watch::channel(0u64);
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let to = to.clone();
            let mut cut_rx = cut_rx.clone();
            cut_rx.mark_unchanged();
            tokio::spawn(async move {
                let Ok(mut outbound) = TcpStream::connect(&to).await else {
                    return;
                };
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                    _ = cut_rx.changed() => {}
                }
            });
        }
    });
    Relay { addr, cut }
}

#[tokio::test]
async fn a_persistent_client_reconnects_and_resumes_its_session() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path(), 1_000_000).await;
    let r = relay(s.addr.clone()).await;
    let a = connect(
        std::slice::from_ref(&r.addr),
        session_with("a", Mode::Persistent, 1_000),
        ClientOptions::with_secret(SECRET),
    )
    .await
    .unwrap();
    let b = node(&s, "b", Mode::Persistent, 3_000).await;
    let g = granted(a.claim(&["x/1"]).await.unwrap().pop().unwrap());
    let g_rel = granted(a.claim(&["x/2"]).await.unwrap().pop().unwrap());
    let token = g.token();
    for _ in 0..3 {
        r.cut.send_modify(|n| *n += 1);
        tokio::time::sleep(Duration::from_millis(50)).await;
        // Calls made while the connection is down wait for the reconnection.
        let owners = a.owner_of(&["x/1"]).await.unwrap();
        assert_eq!(owners[0].as_ref().unwrap().node, NodeId::from("a"));
    }
    // Held across the cuts and past the lease: the session was resumed, not replaced.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    assert!(g.is_valid());
    assert_eq!(g.token(), token);
    match b.claim(&["x/1"]).await.unwrap().pop().unwrap() {
        Claim::OwnedBy(o) => assert_eq!(o.token, token),
        Claim::Granted(_) => panic!("port taken while its owner reconnected"),
    }
    // A background release cut off in flight still reaches the server.
    r.cut.send_modify(|n| *n += 1);
    drop(g_rel);
    let g2 = b.claim_wait("x/2", Duration::from_secs(3)).await.unwrap();
    assert!(g2.is_valid());
    s.stop().await;
}

/// A relay that passes the client's bytes on but, while `mute` is set, swallows the server's:
/// a server that stopped answering without closing its connections.
/// Node "a" (persistent, 400 ms request timeout) through a relay that drops the server's
/// replies while the flag is set.
async fn muted_node(
    s: &TestServer,
) -> (Coordinator, std::sync::Arc<std::sync::atomic::AtomicBool>) {
    let (addr, mute) = muting_relay(s.addr.clone()).await;
    let options = ClientOptions {
        request_timeout: Duration::from_millis(400),
        ..ClientOptions::with_secret(SECRET)
    };
    let a = connect(
        &[addr],
        session_with("a", Mode::Persistent, 10_000),
        options,
    )
    .await
    .unwrap();
    (a, mute)
}

async fn muting_relay(to: String) -> (String, std::sync::Arc<std::sync::atomic::AtomicBool>) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let mute = std::sync::Arc::new(AtomicBool::new(false));
    let m = mute.clone();
    tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            let Ok(outbound) = TcpStream::connect(&to).await else {
                return;
            };
            let (mut ci, mut co) = inbound.into_split();
            let (mut si, mut so) = outbound.into_split();
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut ci, &mut so).await;
            });
            let m = m.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match si.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) if !m.load(Ordering::SeqCst) => {
                            if co.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                        Ok(_) => {}
                    }
                }
            });
        }
    });
    (addr, mute)
}

#[tokio::test]
async fn a_server_that_stops_answering_fails_calls_after_the_request_timeout() {
    use std::sync::atomic::Ordering;
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path(), 1_000_000).await;
    let (a, mute) = muted_node(&s).await;
    let g = granted(a.claim(&["x/1"]).await.unwrap().pop().unwrap());
    mute.store(true, Ordering::SeqCst);
    let started = Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(5), a.owner_of(&["x/1"]))
        .await
        .expect("a call to a silent server must fail, not hang");
    assert!(
        matches!(r, Err(OwnershipError::Timeout { .. })),
        "expected a timeout, got {r:?}"
    );
    assert!(started.elapsed() >= Duration::from_millis(400));
    // The silent connection was given up; the next one resumes the session.
    mute.store(false, Ordering::SeqCst);
    let owners = tokio::time::timeout(Duration::from_secs(5), a.owner_of(&["x/1"]))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(owners[0].as_ref().unwrap().node, NodeId::from("a"));
    assert!(g.is_valid());
    s.stop().await;
}

fn answer(a: Option<Result<Answer, OwnershipError>>) -> Answer {
    a.expect("an answer per call").expect("call succeeded")
}

/// Every kind of call in one pipeline, answered in call order, each on its own.
async fn pipelines(mode: Mode) {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path(), 1_000_000).await;
    let a = node(&s, "a", mode, 5_000).await;
    let b = node(&s, "b", Mode::Persistent, 5_000).await;
    let held = granted(b.claim(&["p/b"]).await.unwrap().pop().unwrap());
    let mut inbox = b.messages("p/");
    assert!(a.pipeline().run().await.unwrap().is_empty());

    let mut p = a.pipeline();
    p.claim("p/1")
        .claim("p/1")
        .claim("no-domain")
        .claim("p/b")
        .owner_of("p/b")
        .send("p/b", b"hi".to_vec())
        .send("p/none", b"x".to_vec())
        .owner_of("p/1");
    assert_eq!(p.len(), 8);
    let mut ans = p.run().await.unwrap().into_iter();
    let g1 = granted(answer(ans.next()).into_claim().unwrap());
    assert!(g1.is_valid() && g1.token() > 0);
    match answer(ans.next()).into_claim().unwrap() {
        Claim::OwnedBy(o) => assert_eq!(o.node, NodeId::from("a")),
        Claim::Granted(_) => panic!("two guards for one key in one node"),
    }
    assert!(matches!(
        ans.next().unwrap(),
        Err(OwnershipError::InvalidKey { .. })
    ));
    match answer(ans.next()).into_claim().unwrap() {
        Claim::OwnedBy(o) => {
            assert_eq!(o.node, NodeId::from("b"));
            assert_eq!(o.token, held.token());
        }
        Claim::Granted(_) => panic!("two owners for one key"),
    }
    let o = answer(ans.next()).into_owner().unwrap().unwrap();
    assert_eq!((o.node.as_str(), o.token), ("b", held.token()));
    assert!(matches!(answer(ans.next()), Answer::Sent));
    match ans.next().unwrap() {
        Err(OwnershipError::NoOwner { key }) => assert_eq!(key, "p/none"),
        other => panic!("expected NoOwner, got {other:?}"),
    }
    let o = answer(ans.next()).into_owner().unwrap().unwrap();
    assert_eq!((o.node.as_str(), o.token), ("a", g1.token()));
    assert!(ans.next().is_none());
    match tokio::time::timeout(Duration::from_secs(5), inbox.recv())
        .await
        .unwrap()
        .unwrap()
    {
        Event::Message { key, from, payload } => {
            assert_eq!((key.as_str(), from.as_str()), ("p/b", "a"));
            assert_eq!(payload.as_ref(), b"hi");
        }
        other => panic!("unexpected {other:?}"),
    }

    // A release, then a claim of the same key: the claim is asked again, as one by one.
    let t1 = g1.token();
    let mut p = a.pipeline();
    p.release(g1).claim("p/1");
    let mut ans = p.run().await.unwrap().into_iter();
    assert!(matches!(answer(ans.next()), Answer::Released));
    let g2 = granted(answer(ans.next()).into_claim().unwrap());
    assert!(g2.token() > t1, "a new grant has a larger token");

    // 1,000 claims, then their 1,000 releases, one port per request.
    let keys: Vec<String> = (0..1000).map(|i| format!("p/k/{i:08}")).collect();
    let mut p = a.pipeline();
    for k in &keys {
        p.claim(k.as_str());
    }
    let guards: Vec<_> = p
        .run()
        .await
        .unwrap()
        .into_iter()
        .map(|r| granted(r.unwrap().into_claim().unwrap()))
        .collect();
    assert_eq!(
        b.query_node(&NodeId::from("a"))
            .await
            .unwrap()
            .unwrap()
            .ports,
        1001
    );
    let mut p = a.pipeline();
    for g in guards {
        p.release(g);
    }
    let released = p.run().await.unwrap();
    assert_eq!(released.len(), 1000);
    assert!(released.iter().all(|r| matches!(r, Ok(Answer::Released))));
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    assert!(b.owner_of(&refs).await.unwrap().iter().all(Option::is_none));
    drop(g2);
    drop(held);
    s.stop().await;
}

#[tokio::test]
async fn pipelines_in_persistent_mode() {
    pipelines(Mode::Persistent).await;
}

#[tokio::test]
async fn pipelines_in_lease_mode() {
    pipelines(Mode::Lease).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_pipelines_and_single_claims_grant_each_key_once() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path(), 1_000_000).await;
    let a = node(&s, "a", Mode::Persistent, 5_000).await;
    let b = node(&s, "b", Mode::Persistent, 5_000).await;
    // On each node, pipelines and one-at-a-time claims of the same 200 keys share the
    // connection: replies of both must reach the right callers.
    let mut tasks = Vec::new();
    for t in 0..32usize {
        let who = if t % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            let keys: Vec<String> = (0..200)
                .map(|i| format!("cache/db/t/{:08}", (i + t * 13) % 200))
                .collect();
            let mut won = Vec::new();
            if t % 4 < 2 {
                for chunk in keys.chunks(50) {
                    let mut p = who.pipeline();
                    for k in chunk {
                        p.claim(k.as_str());
                    }
                    for r in p.run().await.unwrap() {
                        if let Claim::Granted(g) = r.unwrap().into_claim().unwrap() {
                            won.push(g);
                        }
                    }
                }
            } else {
                for k in &keys {
                    if let Claim::Granted(g) =
                        who.claim(&[k.as_str()]).await.unwrap().pop().unwrap()
                    {
                        won.push(g);
                    }
                }
            }
            won
        }));
    }
    let mut winners: Vec<(String, &str)> = Vec::new();
    let mut guards = Vec::new();
    for (t, task) in tasks.into_iter().enumerate() {
        for g in task.await.unwrap() {
            winners.push((g.key().to_owned(), if t % 2 == 0 { "a" } else { "b" }));
            guards.push(g);
        }
    }
    winners.sort();
    let mut unique: Vec<&str> = winners.iter().map(|(k, _)| k.as_str()).collect();
    unique.dedup();
    assert_eq!(winners.len(), unique.len(), "a key was granted twice");
    assert_eq!(unique.len(), 200);
    let owners = a.owner_of(&unique).await.unwrap();
    for ((_, who), o) in winners.iter().zip(owners) {
        assert_eq!(o.unwrap().node.as_str(), *who);
    }
    s.stop().await;
}

#[tokio::test]
async fn a_pipeline_to_a_silent_server_fails_whole_and_holds_no_claim() {
    use std::sync::atomic::Ordering;
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path(), 1_000_000).await;
    let (a, mute) = muted_node(&s).await;
    let g = granted(a.claim(&["x/0"]).await.unwrap().pop().unwrap());
    mute.store(true, Ordering::SeqCst);
    let mut p = a.pipeline();
    p.claim("x/1").claim("x/2").release(g);
    let r = tokio::time::timeout(Duration::from_secs(5), p.run())
        .await
        .expect("a pipeline to a silent server must fail, not hang");
    assert!(
        matches!(r, Err(OwnershipError::Timeout { .. })),
        "expected a timeout, got {r:?}"
    );
    // Once the server answers again, what the failed pipeline may have done is undone: the
    // claims are given back and the release is sent again.
    mute.store(false, Ordering::SeqCst);
    let b = node(&s, "b", Mode::Persistent, 5_000).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let owners = b.owner_of(&["x/0", "x/1", "x/2"]).await.unwrap();
        if owners.iter().all(Option::is_none) {
            break;
        }
        assert!(Instant::now() < deadline, "still owned: {owners:?}");
        // The client's next call carries what it queued for the new connection.
        let _ = a.owner_of(&["x/0"]).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // And the keys can be claimed again by a.
    let mut p = a.pipeline();
    p.claim("x/1").claim("x/2");
    for r in p.run().await.unwrap() {
        granted(r.unwrap().into_claim().unwrap());
    }
    s.stop().await;
}
