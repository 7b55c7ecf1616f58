//! The `handoff` command line: `serve` runs the service.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use handoff::app::{App, shutdown_signal};
use handoff::config::Settings;

/// mimalloc instead of glibc's malloc: the request path allocates many small short-lived
/// buffers across two threads, where glibc spent ~20% of the cycles of an ingest profile
/// (docs/performance.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "handoff", version, about = "Voice-to-WhatsApp handoff service")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service (settings from the environment; see README).
    Serve,
    /// Play the whole story locally (call, offer, yes, template, hang-up, WhatsApp reply) and
    /// print what happens on both channels. Needs no configuration and no network.
    Demo,
    /// Load and performance harness: drives an in-process service over loopback (see
    /// docs/performance.md). Modes: baseline, ingest, calls, handoff (default: all).
    Bench(Box<handoff::bench::BenchArgs>),
    /// The callers of `bench calls`, in a process of their own (started by the bench; reads
    /// its plan on stdin).
    #[command(hide = true)]
    BenchCallers,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Demo => return demo(),
        Command::Bench(args) => return bench(&args),
        Command::BenchCallers => {
            return match handoff::bench::callers::main() {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    eprintln!("handoff bench-callers: {err}");
                    ExitCode::FAILURE
                }
            };
        }
        Command::Serve => {}
    }
    let settings = match Settings::from_env() {
        Ok(settings) => settings,
        Err(err) => {
            eprintln!("handoff: {err}");
            return ExitCode::from(2);
        }
    };
    handoff::telemetry::init(settings.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("handoff: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        match cli.command {
            Command::Demo | Command::Bench(_) | Command::BenchCallers => {
                unreachable!("handled above")
            }
            Command::Serve => {
                let app = App::build(settings).await?;
                // One plain line on stdout for operators and scripts (the port may be 0).
                println!("handoff listening on http://{}", app.local_addr());
                handoff::app::spawn_standard_workers(&app);
                app.run(shutdown_signal()).await
            }
        }
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %err, "handoff stopped with an error");
            eprintln!("handoff: {err}");
            ExitCode::FAILURE
        }
    }
}

fn demo() -> ExitCode {
    // Quiet by default: the demo prints its own transcript; RUST_LOG shows the service's logs.
    if std::env::var_os("RUST_LOG").is_some() {
        handoff::telemetry::init(handoff::config::LogFormat::Human);
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("handoff: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(handoff::demo::run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("handoff demo failed: {err}");
            ExitCode::FAILURE
        }
    }
}

fn bench(args: &handoff::bench::BenchArgs) -> ExitCode {
    if std::env::var_os("RUST_LOG").is_some() {
        handoff::telemetry::init(handoff::config::LogFormat::Human);
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("handoff: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(handoff::bench::run(args)) {
        Ok(report) => {
            if args.json {
                match serde_json::to_string_pretty(&report) {
                    Ok(json) => println!("{json}"),
                    Err(err) => {
                        eprintln!("handoff bench: {err}");
                        return ExitCode::FAILURE;
                    }
                }
            } else {
                print!("{}", report.table());
            }
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("handoff bench failed: {err}");
            ExitCode::FAILURE
        }
    }
}
