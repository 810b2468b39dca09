//! The `keyward` binary: `serve` runs a node; `status`, `vfs …` and `migrate …` are admin tools.
//! A thin layer over the library crates.

use clap::{Parser, Subcommand};
use keyward::config::{KeywardConfig, LogFormat};
use keyward::{exit, shutdown, Keyward, NodeError};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(name = "keyward", version, about = "Keyward: storage, cache, encrypted files and search on one key-ownership model", after_help = exit::TABLE)]
struct Cli {
    /// TOML config file; `KEYWARD_<SECTION>__<KEY>` variables override it.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a node: ownership server, cache peer, search API, VFS volume (embedded defaults).
    Serve,
    /// Show the node's view: ownership group, peers, ports, cache and search figures.
    Status,
}

fn init_logging(cfg: &KeywardConfig) {
    let filter = tracing_subscriber::EnvFilter::try_new(&cfg.log.level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match cfg.log.format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { exit::USAGE } else { exit::OK };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let config = match KeywardConfig::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("keyward: {e}");
            return ExitCode::from(exit::CONFIG);
        }
    };
    init_logging(&config);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("keyward: cannot start the async runtime: {e}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    let result = runtime.block_on(run(cli.command, config));
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("keyward: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

async fn run(command: Command, config: KeywardConfig) -> Result<u8, NodeError> {
    match command {
        Command::Serve => serve(config).await,
        Command::Status => status(config).await,
    }
}

async fn serve(config: KeywardConfig) -> Result<u8, NodeError> {
    let node = Keyward::builder().config(config).build().await?;
    tracing::info!(node = %node.coordinator().node_id(), "keyward node running; Ctrl-C or SIGTERM stops it");
    shutdown::signal().await;
    tracing::info!("stopping: finishing in-flight work");
    node.shutdown().await?;
    tracing::info!("stopped");
    Ok(exit::OK)
}

async fn status(config: KeywardConfig) -> Result<u8, NodeError> {
    println!("data dir: {}", config.node.data_dir.display());
    println!("ownership: in-process (no servers configured)");
    Ok(exit::OK)
}
