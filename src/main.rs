//! The `handoff` command line: `serve` runs the service.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use handoff::app::{App, shutdown_signal};
use handoff::config::Settings;

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
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
