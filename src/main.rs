//! The `yba` command: `serve`, `migrate`, `reindex`.

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
    /// Rebuild the search index from the stored resources (after search parameter
    /// definitions change), with a progress bar.
    Reindex(Config),
}

fn main() -> std::process::ExitCode {
    yba::telemetry::init_logging();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(config) => serve(config),
        Command::Migrate(config) => yba::store::migrate(&config.store())
            .map(|b| tracing::info!(database = b.name(), "migrations are up to date"))
            .map_err(|e| e.to_string()),
        Command::Reindex(config) => reindex(config),
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
        match yba::fhir::search::load_custom_params(&running.store).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(count = n, "the server's own search parameters are in force"),
            Err(e) => tracing::warn!("the server's own search parameters were not loaded: {e}"),
        }
        match running.fhir.conformance().load_stored(&running.store).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(count = n, "stored profiles and terminology are in force"),
            Err(e) => tracing::warn!("stored profiles and terminology were not loaded: {e}"),
        }
        for (ty, url) in &config.rules().always {
            if running.fhir.conformance().registry().profile(url).is_none() {
                tracing::warn!(
                    "the compulsory profile {url} of {ty} is not known: every {ty} write will be refused until it is loaded"
                );
            }
        }
        match yba::fhir::search::index_is_current(&running.store).await {
            Ok(true) => {}
            Ok(false) => tracing::warn!(
                "the search index was written under other search parameter definitions: run `yba reindex`"
            ),
            Err(e) => tracing::warn!("cannot check the search index: {e}"),
        }
        tracing::info!(addr = %running.addr, database = running.store.backend().name(), "yba serves FHIR R4 at http://{}/fhir", running.addr);
        running.server.await.map_err(|e| e.to_string())?;
        tracing::info!("stopped");
        Ok(())
    })
}

fn reindex(config: Config) -> Result<(), String> {
    actix_web::rt::System::new().block_on(async move {
        let store = yba::store::Store::open(&config.store()).map_err(|e| e.to_string())?;
        let custom = yba::fhir::search::load_custom_params(&store)
            .await
            .map_err(|e| e.to_string())?;
        tracing::info!(
            custom,
            "reindexing under the R4 search parameters and the server's own"
        );
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} reindexing [{bar:40}] {pos}/{len} resources ({per_sec}, {eta} left)",
            )
            .map_err(|e| e.to_string())?
            .progress_chars("=> "),
        );
        let done = yba::fhir::search::reindex(&store, &|done, total| {
            bar.set_length(total);
            bar.set_position(done);
        })
        .await
        .map_err(|e| e.to_string())?;
        bar.finish();
        tracing::info!(resources = done, "search index rebuilt");
        Ok(())
    })
}
