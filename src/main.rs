//! The `keyward` binary: `serve` runs a node; `status`, `vfs …` and `migrate …` are admin tools.
//! A thin layer over the library crates.

use clap::{Parser, Subcommand};
use keyward::config::{KeywardConfig, LogFormat};
use keyward::{exit, shutdown, Keyward, NodeError, Parts};
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
// Parsed once per process: boxing the large command trees would buy nothing.
#[allow(clippy::large_enum_variant)]
enum Command {
    /// Run a node: ownership server, cache peer, search API, VFS volume (embedded defaults).
    Serve,
    /// Show the node's view: ownership group, peers, ports, cache and search figures.
    Status {
        /// Print the view as JSON (the node's `/cluster.json`).
        #[arg(long)]
        json: bool,
    },
    /// Files on the configured encrypted volume: put, get, ls, stat, rm, mv, key.
    Vfs {
        #[command(subcommand)]
        command: keyward::vfs::VfsCommand,
    },
    /// Schema migrations, copies between backends (the `keyward-migrate` command tree).
    Migrate(keyward::migrate::MigrateArgs),
}

fn init_logging(cfg: &KeywardConfig) {
    let filter = tracing_subscriber::EnvFilter::try_new(&cfg.log.level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match cfg.log.format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// mimalloc instead of glibc malloc: the request paths allocate many small, short-lived
/// buffers across threads, where glibc's arena locks and fast-bin consolidation cost a quarter
/// of the pipelined client's time.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            };
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

/// Each command's future is boxed: nested in one, the node's start-up futures are deep enough to
/// overflow rustc's layout query depth on a clean (non-incremental) build.
async fn run(command: Command, config: KeywardConfig) -> Result<u8, NodeError> {
    match command {
        Command::Serve => Box::pin(serve(config)).await,
        Command::Status { json } => Box::pin(status(config, json)).await,
        Command::Vfs { command } => Box::pin(vfs(command, config)).await,
        Command::Migrate(args) => Box::pin(migrate(args, config)).await,
    }
}

/// Exit codes of the part crates use the same table; anything out of range is a plain failure.
fn code(c: i32) -> u8 {
    u8::try_from(c).unwrap_or(exit::FAILURE)
}

async fn vfs(command: keyward::vfs::VfsCommand, config: KeywardConfig) -> Result<u8, NodeError> {
    let vfs_cfg = config.vfs.clone();
    let node = Keyward::builder()
        .config(config)
        .parts(Parts::session_only())
        .build()
        .await?;
    let result = keyward::vfs::run(command, &vfs_cfg, node.coordinator().clone()).await;
    node.shutdown().await?;
    match result {
        Ok(()) => Ok(exit::OK),
        Err(e) => {
            eprintln!("keyward vfs: {e}");
            Ok(code(e.exit_code()))
        }
    }
}

async fn migrate(
    args: keyward::migrate::MigrateArgs,
    config: KeywardConfig,
) -> Result<u8, NodeError> {
    let json = args.json;
    let secret = config.cache.secret.clone();
    let node = Keyward::builder()
        .config(config)
        .parts(Parts::session_only())
        .build()
        .await?;
    // `copy` writes behind the cache's back: the owners of copied keys must drop them.
    let on_copied = keyward::invalidate::copy_hook(node.coordinator().clone(), &secret);
    let ctx = keyward::migrate::MigrateContext {
        coordinator: Some(node.coordinator().clone()),
        on_copied: Some(on_copied),
        ..Default::default()
    };
    let cancel = ctx.cancel.clone();
    let stop = tokio::spawn(async move {
        shutdown::signal().await;
        eprintln!("interrupt: stopping at the next safe point");
        cancel.cancel();
    });
    let result = keyward::migrate::run(args, ctx).await;
    stop.abort();
    node.shutdown().await?;
    match result {
        Ok(outcome) => {
            println!("{}", outcome.render(json));
            Ok(exit::OK)
        }
        Err(e) => {
            if json {
                println!("{}", keyward::migrate::error_json(&e));
            } else {
                eprintln!("keyward migrate: {e}");
            }
            Ok(code(e.exit_code()))
        }
    }
}

async fn serve(config: KeywardConfig) -> Result<u8, NodeError> {
    let node = Keyward::builder().config(config).build().await?;
    tracing::info!(
        node = %node.coordinator().node_id(),
        ownership = node.ownership_role().name(),
        http = ?node.http_addr(),
        "keyward node running; Ctrl-C or SIGTERM stops it"
    );
    shutdown::signal().await;
    tracing::info!("stopping: flushing the cache and releasing ports");
    node.shutdown().await?;
    tracing::info!("stopped");
    Ok(exit::OK)
}

/// Asks the running node at `search.listen` for its view; without one, asks the configured
/// ownership servers directly.
async fn status(config: KeywardConfig, json: bool) -> Result<u8, NodeError> {
    match keyward::status::fetch(&config).await {
        Ok(view) => {
            if json {
                println!("{view:#}");
            } else {
                print!("{}", keyward::status::render(&view));
            }
            Ok(exit::OK)
        }
        Err(e) => {
            eprintln!("keyward status: {e}");
            Ok(exit::UNAVAILABLE)
        }
    }
}
