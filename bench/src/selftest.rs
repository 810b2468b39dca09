//! `keyward-bench selftest`: proves the harness on a trivial pair. Contender A claims and releases
//! ports on Keyward's in-process coordinator; anchor B does the same inserts and removes on a
//! mutex-guarded `HashMap`. Then it starts and stops a real anchor (Redis) and pings it, so the
//! anchor lifecycle is exercised too.

use crate::anchor::Anchor;
use crate::harness::{get, interleave, Contender, Measures, Plan, ResultLine};
use async_trait::async_trait;
use keyward_ownership::{InProcessHub, SessionConfig};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::sync::Mutex;
use std::time::Instant;

const PAIRS: usize = 20_000;

fn key(i: usize) -> String {
    format!("cache/selftest/t/{i:08}")
}

struct Coordinated(keyward_ownership::Coordinator);

#[async_trait]
impl Contender for Coordinated {
    fn name(&self) -> &str {
        "keyward"
    }
    async fn run(&mut self, _round: usize) -> Result<Measures, String> {
        let keys: Vec<String> = (0..PAIRS).map(key).collect();
        let start = Instant::now();
        for k in &keys {
            let claim = self
                .0
                .claim(&[k.as_str()])
                .await
                .map_err(|e| e.to_string())?;
            for c in claim {
                if let Some(g) = c.granted() {
                    g.release().await.map_err(|e| e.to_string())?;
                }
            }
        }
        Ok([(
            "pairs_per_s".to_owned(),
            PAIRS as f64 / start.elapsed().as_secs_f64(),
        )]
        .into())
    }
}

struct Map(Mutex<HashMap<String, i64>>);

#[async_trait]
impl Contender for Map {
    fn name(&self) -> &str {
        "map"
    }
    async fn run(&mut self, _round: usize) -> Result<Measures, String> {
        let keys: Vec<String> = (0..PAIRS).map(key).collect();
        let start = Instant::now();
        for (i, k) in keys.iter().enumerate() {
            let mut m = self.0.lock().map_err(|e| e.to_string())?;
            m.insert(k.clone(), i as i64);
            m.remove(k);
        }
        Ok([(
            "pairs_per_s".to_owned(),
            PAIRS as f64 / start.elapsed().as_secs_f64(),
        )]
        .into())
    }
}

fn redis_ping_ms() -> Result<f64, String> {
    let anchor = Anchor::start(
        "redis",
        "redis-server",
        "redis-server",
        &[
            "--port",
            "{port}",
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
    )
    .map_err(|e| e.to_string())?;
    let start = Instant::now();
    let mut s =
        std::net::TcpStream::connect(("127.0.0.1", anchor.port)).map_err(|e| e.to_string())?;
    s.write_all(b"PING\r\n").map_err(|e| e.to_string())?;
    let mut buf = [0u8; 7];
    s.read_exact(&mut buf).map_err(|e| e.to_string())?;
    if &buf != b"+PONG\r\n" {
        return Err(format!("unexpected reply {buf:?}"));
    }
    Ok(start.elapsed().as_secs_f64() * 1000.0)
}

pub async fn run(plan: Plan) -> Result<ResultLine, crate::harness::BenchError> {
    let hub = InProcessHub::new();
    let coord = hub
        .connect(SessionConfig::default())
        .await
        .map_err(|e| crate::harness::BenchError::Setup(e.to_string()))?;
    let mut a = Coordinated(coord);
    let mut b = Map(Mutex::new(HashMap::new()));
    let medians = interleave(plan, &mut [&mut a, &mut b]).await;
    let ka = get(&medians, "keyward", "pairs_per_s");
    let kb = get(&medians, "map", "pairs_per_s");
    let ping = match tokio::task::spawn_blocking(redis_ping_ms).await {
        Ok(Ok(ms)) => Some(ms),
        Ok(Err(e)) => {
            eprintln!("redis anchor: {e}");
            None
        }
        Err(e) => {
            eprintln!("redis anchor task: {e}");
            None
        }
    };
    let mut r = ResultLine::default();
    r.set("keyward_pairs_per_s", ka)
        .set("map_pairs_per_s", kb)
        .set("ratio_vs_map", ResultLine::ratio(ka, kb))
        .set("redis_ping_ms", ping);
    Ok(r)
}
