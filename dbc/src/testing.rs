//! Helpers for tests that need a database server (used by every crate's tests).
//!
//! Such tests are `#[ignore = "needs <server>"]`; the test script runs them with
//! `--include-ignored`. Inside, they call [`server_url`]: with the URL variable set they run;
//! without it they return early, unless `KEYWARD_REQUIRE_SERVERS=1`, which makes a missing
//! server a failure instead of a silent pass.

/// The test servers the suite knows, and the variables that name their URLs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TestServer {
    Postgres,
    Mysql,
    Mongodb,
    Scylla,
}

impl TestServer {
    pub fn env_var(self) -> &'static str {
        match self {
            TestServer::Postgres => "KEYWARD_TEST_POSTGRES_URL",
            TestServer::Mysql => "KEYWARD_TEST_MYSQL_URL",
            TestServer::Mongodb => "KEYWARD_TEST_MONGODB_URL",
            TestServer::Scylla => "KEYWARD_TEST_SCYLLA_URL",
        }
    }
}

/// The server's URL, or `None` (the test should return) when it is not configured.
///
/// # Panics
/// When the URL is missing and `KEYWARD_REQUIRE_SERVERS=1` (Scylla excepted: it is opt-in by
/// URL even in CI, since nothing here can run it). Panicking is the point: it fails the test.
pub fn server_url(server: TestServer) -> Option<String> {
    match std::env::var(server.env_var()) {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ => {
            let required = std::env::var("KEYWARD_REQUIRE_SERVERS").is_ok_and(|v| v == "1");
            if required && server != TestServer::Scylla {
                panic!(
                    "{} is not set but KEYWARD_REQUIRE_SERVERS=1: the server is missing",
                    server.env_var()
                );
            }
            eprintln!("skipped: {} is not set", server.env_var());
            None
        }
    }
}

/// True when MongoDB tests run against the wire emulator, where tests that need a real
/// MongoDB are skipped (never bend an adapter to the emulator).
pub fn mongodb_is_emulator() -> bool {
    std::env::var("KEYWARD_TEST_MONGODB_EMULATOR").is_ok_and(|v| v == "1")
}
