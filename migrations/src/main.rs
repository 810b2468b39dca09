//! `keyward-migrate`: a thin main around [`keyward_migrate::run`].

use clap::Parser;
use keyward_migrate::{error_json, exit, MigrateArgs, MigrateContext};

#[derive(Parser, Debug)]
#[command(
    name = "keyward-migrate",
    version,
    about = "Keyward schema migrations and table copies"
)]
struct Cli {
    #[command(flatten)]
    args: MigrateArgs,
}

fn main() {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KEYWARD_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(exit::FAILURE);
        }
    };
    let json = cli.args.json;
    let code = runtime.block_on(async move {
        let ctx = MigrateContext::default();
        let cancel = ctx.cancel.clone();
        // Ctrl-C stops at the next safe point (between migrations, after a copy batch).
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("interrupt: stopping at the next safe point (Ctrl-C again to abort)");
                cancel.cancel();
                if tokio::signal::ctrl_c().await.is_ok() {
                    std::process::exit(exit::INTERRUPTED);
                }
            }
        });
        match keyward_migrate::run(cli.args, ctx).await {
            Ok(outcome) => {
                println!("{}", outcome.render(json));
                exit::OK
            }
            Err(e) => {
                if json {
                    println!("{}", error_json(&e));
                } else {
                    eprintln!("error: {e}");
                }
                e.exit_code()
            }
        }
    });
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    std::process::exit(code);
}
