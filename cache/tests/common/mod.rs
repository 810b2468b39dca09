//! Set-up shared by the cache's integration tests.

use keyward_cache::{Cache, CacheConfig, PeerListener};
use keyward_dbc::Db;
use keyward_ownership::{Coordinator, Endpoints, InProcessHub, SessionConfig};
use std::time::Duration;

/// A cache node on `hub` over `db`: its peer listener on a free loopback port, announced as
/// its `cache` endpoint, in a session with the given lease.
pub async fn start_node(
    hub: &InProcessHub,
    db: &Db,
    cfg: CacheConfig,
    lease: Duration,
) -> (Cache, Coordinator) {
    let l = PeerListener::bind("127.0.0.1:0").await.unwrap();
    let mut endpoints = Endpoints::new();
    endpoints.insert("cache".into(), l.local_addr().unwrap().to_string());
    let coord = hub
        .connect(SessionConfig {
            endpoints,
            lease,
            margin: lease / 5,
            ..Default::default()
        })
        .await
        .unwrap();
    let cache = Cache::start_on(l, cfg, coord.clone(), db.clone())
        .await
        .unwrap();
    (cache, coord)
}
