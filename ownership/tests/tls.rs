//! TLS under the frame protocol: a lone server and a group of three, clients that trust the
//! right CA, and the ones that must be refused (plain TCP, a foreign CA, another host name,
//! a wrong secret inside TLS).

mod common;

use common::session;
use keyward_ownership::{
    connect, server_stats, Claim, ClientOptions, ClientTls, Coordinator, GroupSettings, NodeId,
    OwnershipError, Server, ServerConfig, ServerTls,
};
use std::path::PathBuf;
use std::time::{Duration, Instant};

const SECRET: &str = "tls-secret";

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tls")
        .join(name)
}

fn server_tls() -> ServerTls {
    ServerTls {
        cert_file: fixture("server.pem"),
        key_file: fixture("server-key.pem"),
        ca_file: Some(fixture("ca.pem")),
    }
}

fn client(ca: &str, server_name: Option<&str>) -> ClientOptions {
    ClientOptions {
        connect_timeout: Duration::from_secs(2),
        tls: Some(ClientTls {
            ca_file: fixture(ca),
            server_name: server_name.map(str::to_owned),
        }),
        ..ClientOptions::with_secret(SECRET)
    }
}

async fn serve(cfg: ServerConfig) -> (String, tokio::sync::oneshot::Sender<()>) {
    let server = Server::bind(cfg).await.unwrap();
    let addr = server.local_addr().to_string();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.run(async {
        let _ = rx.await;
    }));
    (addr, tx)
}

async fn open(
    addr: &str,
    node: &str,
    options: ClientOptions,
) -> Result<Coordinator, OwnershipError> {
    let addrs = [addr.to_owned()];
    tokio::time::timeout(
        Duration::from_secs(10),
        connect(&addrs, session(node), options),
    )
    .await
    .expect("a refused connection must end, not hang")
}

#[tokio::test]
async fn tls_clients_work_and_the_wrong_ones_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = ServerConfig::new("127.0.0.1:0", SECRET, dir.path().to_path_buf());
    cfg.tls = Some(server_tls());
    cfg.handshake_timeout = Duration::from_secs(1);
    let (addr, stop) = serve(cfg).await;

    let a = open(&addr, "a", client("ca.pem", None)).await.unwrap();
    let b = open(&addr, "b", client("ca.pem", Some("localhost")))
        .await
        .unwrap();
    let g = match a.claim(&["x/1", "x/2"]).await.unwrap().remove(0) {
        Claim::Granted(g) => g,
        other => panic!("not granted: {other:?}"),
    };
    match b.claim(&["x/1"]).await.unwrap().pop().unwrap() {
        Claim::OwnedBy(o) => assert_eq!((o.node, o.token), (NodeId::from("a"), g.token())),
        Claim::Granted(_) => panic!("x/1 granted twice"),
    }
    let mut inbox = a.messages("x/");
    b.send("x/1", &b"over tls"[..]).await.unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(5), inbox.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ev.key(), "x/1");
    g.release().await.unwrap();
    assert!(b.owner_of(&["x/1"]).await.unwrap()[0].is_none());
    let stats = server_stats(std::slice::from_ref(&addr), &client("ca.pem", None))
        .await
        .unwrap();
    assert_eq!(stats.sessions, 2);

    // Plain TCP to a TLS server: refused once the server's handshake time runs out.
    let plain = ClientOptions {
        connect_timeout: Duration::from_secs(2),
        ..ClientOptions::with_secret(SECRET)
    };
    assert!(open(&addr, "p", plain).await.is_err());
    // A CA that did not sign the server's certificate, or a name it does not carry.
    let r = open(&addr, "f", client("other-ca.pem", None)).await;
    assert!(matches!(r, Err(OwnershipError::Tls(_))), "{r:?}");
    let r = open(&addr, "n", client("ca.pem", Some("other.example"))).await;
    assert!(matches!(r, Err(OwnershipError::Tls(_))), "{r:?}");
    // A missing CA file is its own clear error.
    let r = open(&addr, "m", client("no-such-ca.pem", None)).await;
    assert!(
        matches!(&r, Err(OwnershipError::Tls(m)) if m.contains("no-such-ca.pem")),
        "{r:?}"
    );
    // Inside TLS the cluster secret is still checked.
    let wrong = ClientOptions {
        secret: "not-the-secret".into(),
        ..client("ca.pem", None)
    };
    let r = open(&addr, "w", wrong).await;
    assert!(matches!(r, Err(OwnershipError::AuthRefused(_))), "{r:?}");
    let _ = stop.send(());
}

#[tokio::test]
async fn a_server_with_unusable_tls_files_does_not_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = ServerConfig::new("127.0.0.1:0", SECRET, dir.path().to_path_buf());
    cfg.tls = Some(ServerTls {
        key_file: fixture("ca.pem"),
        ..server_tls()
    });
    let e = Server::bind(cfg)
        .await
        .err()
        .expect("a certificate as key must be refused");
    assert!(e.to_string().contains("ca.pem"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_elects_and_fails_over_with_tls_between_members() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let addrs: Vec<String> = (0..3)
        .map(|_| {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().to_string()
        })
        .collect();
    let mut stops = Vec::new();
    for (i, a) in addrs.iter().enumerate() {
        let mut cfg = ServerConfig::new(a.as_str(), SECRET, dirs[i].path().to_path_buf());
        cfg.max_lease = Duration::from_millis(3_000);
        cfg.group = Some(GroupSettings::new(addrs.clone(), i));
        cfg.tls = Some(server_tls());
        stops.push(Some(serve(cfg).await.1));
    }
    let options = client("ca.pem", None);
    let a = connect(&addrs, session("a"), options.clone())
        .await
        .unwrap();
    let g = a.claim_wait("x/1", Duration::from_secs(8)).await.unwrap();
    let t = g.token();
    let master = server_stats(&addrs, &options)
        .await
        .unwrap()
        .master
        .unwrap();
    let idx = addrs.iter().position(|x| *x == master).unwrap();
    let _ = stops[idx].take().unwrap().send(());
    // The survivors elect a new master over TLS and the client re-registers its port there.
    let deadline = Instant::now() + Duration::from_secs(10);
    while g.token() == t && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(g.is_valid());
    assert!(
        g.token() > t,
        "the port was not re-registered at a new master"
    );
    for s in stops.into_iter().flatten() {
        let _ = s.send(());
    }
}
