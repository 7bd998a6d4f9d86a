//! The `yba` command: `serve`, `migrate`.

use clap::{Parser, Subcommand};

use yba::config::Config;

#[derive(Parser)]
#[command(
    name = "yba",
    version,
    about = "Electronic health record server (FHIR R4) for Vietnam"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the FHIR API (runs pending migrations first).
    Serve(Config),
    /// Run pending database migrations and exit.
    Migrate(Config),
}

fn main() -> std::process::ExitCode {
    yba::telemetry::init_logging();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(config) => serve(config),
        Command::Migrate(config) => yba::store::migrate(&config.store())
            .map(|b| tracing::info!(database = b.name(), "migrations are up to date"))
            .map_err(|e| e.to_string()),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("yba: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn serve(config: Config) -> Result<(), String> {
    actix_web::rt::System::new().block_on(async move {
        let running = yba::api::start(&config).map_err(|e| e.to_string())?;
        tracing::info!(addr = %running.addr, database = running.store.backend().name(), "yba serves FHIR R4 at http://{}/fhir", running.addr);
        running.server.await.map_err(|e| e.to_string())?;
        tracing::info!("stopped");
        Ok(())
    })
}
