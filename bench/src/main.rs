//! `keyward-bench`: one subcommand per part; each runs Keyward and its anchor on the same work,
//! interleaved, at least 3 rounds, and ends with a `RESULT mode=… name=value …` line.

mod anchor;
mod cache;
mod dbc;
mod harness;
mod migrate;
mod ownership;
mod pg;
mod search;
mod selftest;
mod vfs;

use clap::{Parser, Subcommand};
use harness::{BenchError, Plan, ResultLine};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "keyward-bench",
    about = "Keyward against its anchors, interleaved, medians"
)]
struct Cli {
    /// Fewer rounds and shorter runs (never smaller sizes); prints mode=quick.
    #[arg(long, global = true)]
    quick: bool,
    #[command(subcommand)]
    part: Part,
}

#[derive(Subcommand)]
enum Part {
    /// Proves the harness on a trivial pair and an anchor's start and stop.
    Selftest,
    /// DBC against raw sqlx (SQLite, PostgreSQL).
    Dbc,
    /// The port switch service against etcd 3.4.
    Ownership,
    /// The encrypted VFS against plain std::fs and the cipher's own limit.
    Vfs,
    /// The write-back cache against Redis 7.
    Cache,
    /// Search over HTTP against Sphinx 2.2.
    Search,
    /// `migrate copy` against pgloader.
    Migrate,
}

async fn run(part: Part, plan: Plan) -> Result<ResultLine, BenchError> {
    match part {
        Part::Selftest => selftest::run(plan).await,
        Part::Dbc => dbc::run(plan).await,
        Part::Ownership => ownership::run(plan).await,
        Part::Vfs => vfs::run(plan).await,
        Part::Cache => cache::run(plan).await,
        Part::Search => search::run(plan).await,
        Part::Migrate => migrate::run(plan).await,
    }
}

/// mimalloc instead of glibc malloc: the request paths allocate many small, short-lived
/// buffers across threads, where glibc's arena locks and fast-bin consolidation cost a quarter
/// of the pipelined client's time.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let plan = Plan::new(cli.quick);
    match run(cli.part, plan).await {
        Ok(line) => {
            println!("{}", line.render(plan));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("keyward-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
