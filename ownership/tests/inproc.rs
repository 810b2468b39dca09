//! The Coordinator API on the in-process hub: claims, tokens, leases, messages, waits.

mod common;

use common::session_with;
use keyward_ownership::{
    Answer, Claim, Coordinator, Event, Guard, InProcessHub, Mode, NodeId, OwnershipError,
};
use std::time::Duration;

/// One key claimed alone: its guard, or `None` when another node holds it.
async fn grant(c: &Coordinator, key: &str) -> Option<Guard> {
    c.claim(&[key]).await.unwrap().pop().unwrap().granted()
}

async fn node(hub: &InProcessHub, name: &str) -> Coordinator {
    hub.connect(session_with(name, Mode::Persistent, 3_000))
        .await
        .unwrap()
}

#[tokio::test]
async fn claim_grants_and_reports_owner_with_endpoints() {
    let hub = InProcessHub::new();
    let a = node(&hub, "a").await;
    let b = node(&hub, "b").await;
    let g = grant(&a, "cache/db/t/1").await.unwrap();
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
    let owners = b.owner_of(&["cache/db/t/1", "cache/db/t/2"]).await.unwrap();
    assert_eq!(owners[0].as_ref().unwrap().node, NodeId::from("a"));
    assert!(owners[1].is_none());
    let info = b.query_node(&NodeId::from("a")).await.unwrap().unwrap();
    assert_eq!(info.ports, 1);
    assert!(b
        .query_node(&NodeId::from("nobody"))
        .await
        .unwrap()
        .is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tasks_racing_for_one_key_get_one_grant() {
    let hub = InProcessHub::new();
    let a = node(&hub, "a").await;
    let b = node(&hub, "b").await;
    for i in 0..200 {
        let key = format!("cache/db/t/{i}");
        let (ka, kb) = (key.clone(), key.clone());
        let (a2, b2) = (a.clone(), b.clone());
        let ta =
            tokio::spawn(async move { a2.claim(&[ka.as_str()]).await.unwrap().pop().unwrap() });
        let tb =
            tokio::spawn(async move { b2.claim(&[kb.as_str()]).await.unwrap().pop().unwrap() });
        let (ra, rb) = (ta.await.unwrap(), tb.await.unwrap());
        let granted = [&ra, &rb]
            .iter()
            .filter(|c| matches!(c, Claim::Granted(_)))
            .count();
        assert_eq!(
            granted, 1,
            "round {i}: exactly one of two racing claims must win"
        );
    }
    // Within one node too: one guard per key per node.
    let (a1, a2) = (a.clone(), a.clone());
    let t1 = tokio::spawn(async move { a1.claim(&["x/1"]).await.unwrap().pop().unwrap() });
    let t2 = tokio::spawn(async move { a2.claim(&["x/1"]).await.unwrap().pop().unwrap() });
    let (r1, r2) = (t1.await.unwrap(), t2.await.unwrap());
    let granted = [&r1, &r2]
        .iter()
        .filter(|c| matches!(c, Claim::Granted(_)))
        .count();
    assert_eq!(granted, 1);
}

#[tokio::test]
async fn tokens_grow_across_owners_and_release_frees_the_key() {
    let hub = InProcessHub::new();
    let a = node(&hub, "a").await;
    let b = node(&hub, "b").await;
    let mut last = 0;
    for round in 0..20 {
        let who = if round % 2 == 0 { &a } else { &b };
        let g = grant(who, "vfs/v/f").await.unwrap();
        assert!(g.token() > last, "token must grow");
        last = g.token();
        if round % 3 == 0 {
            g.release().await.unwrap();
        } else {
            drop(g); // release in the background, ordered before the next call
        }
    }
}

#[tokio::test]
async fn batch_claims_with_duplicates_and_empty() {
    let hub = InProcessHub::new();
    let a = node(&hub, "a").await;
    let b = node(&hub, "b").await;
    assert!(a.claim(&[]).await.unwrap().is_empty());
    let _held = b.claim(&["k/2"]).await.unwrap();
    let out = a.claim(&["k/1", "k/1", "k/2", "k/3"]).await.unwrap();
    assert_eq!(out.len(), 4);
    assert!(matches!(out[0], Claim::Granted(_)));
    assert!(matches!(&out[1], Claim::OwnedBy(o) if o.node == NodeId::from("a")));
    assert!(matches!(&out[2], Claim::OwnedBy(o) if o.node == NodeId::from("b")));
    assert!(matches!(out[3], Claim::Granted(_)));
}

#[tokio::test]
async fn bad_keys_are_refused() {
    let hub = InProcessHub::new();
    let a = node(&hub, "a").await;
    let long = format!("a/{}", "x".repeat(2000));
    for bad in ["", "nodomain", "/x", long.as_str()] {
        match a.claim(&[bad]).await {
            Err(OwnershipError::InvalidKey { .. }) => {}
            other => panic!("{bad:?}: expected InvalidKey, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_guard_is_lost_when_its_lease_is_not_renewed() {
    let hub = InProcessHub::new();
    let a = hub
        .connect(session_with("a", Mode::Lease, 300))
        .await
        .unwrap();
    let b = node(&hub, "b").await;
    let g = grant(&a, "cache/db/t/9").await.unwrap();
    assert!(g.is_valid());
    // No relet: the client stops believing at lease − margin, the hub frees at lease end.
    tokio::time::timeout(Duration::from_secs(2), g.lost())
        .await
        .expect("lost() must resolve");
    assert!(!g.is_valid());
    let got = b
        .claim_wait("cache/db/t/9", Duration::from_secs(2))
        .await
        .unwrap();
    assert!(got.token() > g.token());
}

#[tokio::test]
async fn relet_keeps_a_lease_mode_session_alive() {
    let hub = InProcessHub::new();
    let a = hub
        .connect(session_with("a", Mode::Lease, 300))
        .await
        .unwrap();
    let b = node(&hub, "b").await;
    let g = grant(&a, "k/relet").await.unwrap();
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        a.relet().await.unwrap();
    }
    assert!(
        g.is_valid(),
        "renewed every 100 ms, a 300 ms lease must hold for 1 s"
    );
    assert!(grant(&b, "k/relet").await.is_none());
}

#[tokio::test]
async fn persistent_heartbeats_keep_ports_past_many_leases() {
    let hub = InProcessHub::new();
    let a = hub
        .connect(session_with("a", Mode::Persistent, 150))
        .await
        .unwrap();
    let g = grant(&a, "k/hb").await.unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(g.is_valid());
}

#[tokio::test]
async fn a_paused_node_loses_its_guards_before_another_node_gets_them() {
    let hub = InProcessHub::new();
    let a = hub
        .connect(session_with("a", Mode::Persistent, 300))
        .await
        .unwrap();
    let b = node(&hub, "b").await;
    let g = grant(&a, "k/pause").await.unwrap();
    hub.set_paused(a.node_id(), true);
    let started = tokio::time::Instant::now();
    let got = b
        .claim_wait("k/pause", Duration::from_secs(3))
        .await
        .unwrap();
    // By the time b holds it, a must no longer believe it owns it.
    assert!(!g.is_valid(), "two nodes believe they own k/pause");
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "freed before the lease ended"
    );
    assert!(got.token() > g.token());
}

#[tokio::test]
async fn notify_on_release_and_wait_for_release() {
    let hub = InProcessHub::new();
    let a = node(&hub, "a").await;
    let b = node(&hub, "b").await;
    let g = grant(&a, "k/w").await.unwrap();
    let mut events = b.messages("k/");
    assert!(b
        .claim_with(&["k/w"], true)
        .await
        .unwrap()
        .pop()
        .unwrap()
        .granted()
        .is_none());
    let waiter = {
        let b = b.clone();
        tokio::spawn(async move { b.wait_for_release("k/w", Duration::from_secs(2)).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    g.release().await.unwrap();
    waiter.await.unwrap().unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(1), events.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ev, Event::Released { key: "k/w".into() });
    // A wait on a held key times out with a typed error.
    let _g2 = grant(&a, "k/held").await.unwrap();
    match b
        .wait_for_release("k/held", Duration::from_millis(100))
        .await
    {
        Err(OwnershipError::Timeout { .. }) => {}
        other => panic!("expected a timeout, got {other:?}"),
    }
    match b.claim_wait("k/held", Duration::from_millis(100)).await {
        Err(OwnershipError::Timeout { .. }) => {}
        other => panic!("expected a timeout, got {other:?}"),
    }
}

#[tokio::test]
async fn messages_reach_the_owner_in_order_and_by_prefix() {
    let hub = InProcessHub::new();
    let a = node(&hub, "a").await;
    let b = node(&hub, "b").await;
    let mut cache_events = a.messages("cache/");
    let mut search_events = a.messages("search/");
    let _g = a.claim(&["cache/db/t/1"]).await.unwrap();
    for i in 0..100u32 {
        b.send("cache/db/t/1", i.to_be_bytes().to_vec())
            .await
            .unwrap();
    }
    for i in 0..100u32 {
        match cache_events.recv().await.unwrap() {
            Event::Message { key, from, payload } => {
                assert_eq!(key, "cache/db/t/1");
                assert_eq!(from, NodeId::from("b"));
                assert_eq!(payload.as_ref(), i.to_be_bytes());
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(
        search_events.try_recv().is_err(),
        "a search/ subscriber got a cache/ message"
    );
    match b.send("cache/db/t/none", vec![1]).await {
        Err(OwnershipError::NoOwner { .. }) => {}
        other => panic!("expected NoOwner, got {other:?}"),
    }
}

#[tokio::test]
async fn port_limit_is_a_clear_error() {
    let hub = InProcessHub::with_port_limit(3);
    let a = node(&hub, "a").await;
    let held = a.claim(&["p/1", "p/2", "p/3"]).await.unwrap();
    assert_eq!(held.len(), 3);
    match a.claim(&["p/4"]).await {
        Err(OwnershipError::PortLimit { held: 3, limit: 3 }) => {}
        other => panic!("expected PortLimit, got {other:?}"),
    }
    drop(held);
    assert!(grant(&a, "p/4").await.is_some());
}

#[tokio::test]
async fn close_frees_ports_at_once_and_loses_guards() {
    let hub = InProcessHub::new();
    let a = node(&hub, "a").await;
    let b = node(&hub, "b").await;
    let g = grant(&a, "k/close").await.unwrap();
    a.close().await.unwrap();
    tokio::time::timeout(Duration::from_millis(500), g.lost())
        .await
        .unwrap();
    assert!(grant(&b, "k/close").await.is_some());
    assert!(matches!(
        a.claim(&["k/x"]).await,
        Err(OwnershipError::SessionClosed { .. })
    ));
}

#[tokio::test]
async fn loss_epoch_moves_whenever_a_guard_stops_being_valid() {
    let hub = InProcessHub::new();
    let a = node(&hub, "a").await;
    let mut gs = a
        .claim(&["k/1", "k/2", "k/3"])
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.granted().unwrap());
    let (g1, g2, g3) = (gs.next().unwrap(), gs.next().unwrap(), gs.next().unwrap());
    let e0 = a.loss_epoch();
    assert!(a.lease_valid());
    // Claims and renewals leave it alone: a reader's cached "still valid" stays usable.
    let _g4 = grant(&a, "k/4").await.unwrap();
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    assert_eq!(a.loss_epoch(), e0);
    g1.release().await.unwrap();
    let e1 = a.loss_epoch();
    assert!(e1 > e0);
    assert!(g2.is_valid());
    drop(g2);
    let e2 = a.loss_epoch();
    assert!(e2 > e1);
    assert!(g3.is_valid());
    a.close().await.unwrap();
    assert!(a.loss_epoch() > e2);
    assert!(!g3.is_valid());
}

#[tokio::test]
async fn a_pipeline_runs_its_calls_in_order_on_the_hub() {
    let hub = InProcessHub::new();
    let a = node(&hub, "a").await;
    let b = node(&hub, "b").await;
    let held = grant(&b, "p/b").await.unwrap();
    let mut p = a.pipeline();
    p.claim("p/1")
        .claim("p/b")
        .send("p/none", b"x".to_vec())
        .owner_of("p/1");
    let mut ans = p.run().await.unwrap().into_iter();
    let g = ans.next().unwrap().unwrap().into_claim().unwrap().granted();
    let g = g.expect("p/1 granted");
    match ans.next().unwrap().unwrap().into_claim().unwrap() {
        Claim::OwnedBy(o) => assert_eq!((o.node.as_str(), o.token), ("b", held.token())),
        Claim::Granted(_) => panic!("two owners for one key"),
    }
    assert!(matches!(
        ans.next().unwrap(),
        Err(OwnershipError::NoOwner { .. })
    ));
    let o = ans.next().unwrap().unwrap().into_owner().unwrap().unwrap();
    assert_eq!((o.node.as_str(), o.token), ("a", g.token()));
    let mut p = a.pipeline();
    p.release(g);
    assert!(matches!(
        p.run().await.unwrap().pop().unwrap(),
        Ok(Answer::Released)
    ));
    assert!(b.owner_of(&["p/1"]).await.unwrap()[0].is_none());
}
