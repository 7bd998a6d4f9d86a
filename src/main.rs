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
    /// Import NDJSON files (one resource a line), transaction or batch Bundles (.json, .xml),
    /// or folders of them, with a progress bar. Resources keep their ids; a re-run after an
    /// interruption skips what went in. Lines that fail are listed with their file, line and
    /// OperationOutcome, and the rest goes in.
    Import {
        /// Files or folders (walked for .ndjson, .jsonl, .json and .xml files).
        #[arg(required = true)]
        paths: Vec<std::path::PathBuf>,
        /// Resources per batch (one database transaction each).
        #[arg(long, default_value_t = 500)]
        batch: usize,
        /// Also write the failures as NDJSON (source, line, OperationOutcome) to this file.
        #[arg(long)]
        errors: Option<std::path::PathBuf>,
        #[command(flatten)]
        config: Config,
    },
    /// Commune node: one sync round with the upstream server (YBA_UPSTREAM and the station's
    /// client), pull then push; prints the round as JSON. Exits 1 if the round failed.
    Sync {
        /// Run one round and exit (the server's own loop runs them in the background).
        #[arg(long, required = true)]
        once: bool,
        #[command(flatten)]
        config: Config,
    },
    /// Accounts of people: `create`, `reset-password`, `disable`, `enable`. Passwords are read
    /// from the environment variable YBA_PASSWORD or, without it, from the first line of stdin.
    User {
        #[command(subcommand)]
        action: UserAction,
    },
    /// OAuth clients of hospital systems.
    Client {
        #[command(subcommand)]
        action: ClientAction,
    },
}

#[derive(Subcommand)]
enum UserAction {
    /// Adds an account.
    Create {
        /// A patient's citizen ID (CCCD), or a staff username.
        #[arg(long)]
        username: String,
        /// patient, practitioner, pharmacist or admin.
        #[arg(long)]
        role: String,
        /// The person's FHIR resource: Patient/…, Practitioner/… or PractitionerRole/….
        #[arg(long)]
        fhir_user: Option<String>,
        /// The organization a practitioner or pharmacist works for: Organization/….
        #[arg(long)]
        organization: Option<String>,
        #[command(flatten)]
        config: Config,
    },
    /// Sets a new password and ends the account's sessions.
    ResetPassword {
        #[arg(long)]
        username: String,
        #[command(flatten)]
        config: Config,
    },
    /// Disables an account and ends its sessions at once.
    Disable {
        #[arg(long)]
        username: String,
        #[command(flatten)]
        config: Config,
    },
    /// Enables a disabled account.
    Enable {
        #[arg(long)]
        username: String,
        #[command(flatten)]
        config: Config,
    },
}

#[derive(Subcommand)]
enum ClientAction {
    /// Registers a hospital system; prints a generated secret once (only its hash is kept).
    Create {
        #[arg(long)]
        client_id: String,
        #[arg(long)]
        name: String,
        /// The organization the system acts for: Organization/….
        #[arg(long)]
        organization: String,
        /// The most it may be granted, e.g. `system/*.cruds` or `system/Observation.cr`.
        #[arg(long, default_value = "system/*.cruds")]
        scopes: String,
        /// A PEM public key (RSA or P-384) for private_key_jwt, instead of a secret.
        #[arg(long)]
        public_key_file: Option<std::path::PathBuf>,
        #[command(flatten)]
        config: Config,
    },
}

fn main() -> std::process::ExitCode {
    yba::telemetry::settle_allocator();
    yba::telemetry::init_logging();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(config) => serve(config),
        Command::Migrate(config) => yba::store::migrate(&config.store())
            .map(|b| tracing::info!(database = b.name(), "migrations are up to date"))
            .map_err(|e| e.to_string()),
        Command::Reindex(config) => reindex(config),
        Command::Import {
            paths,
            batch,
            errors,
            config,
        } => import(paths, batch, errors, config),
        Command::Sync { once: _, config } => sync_once(config),
        Command::User { action } => user(action),
        Command::Client { action } => client(action),
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
        let audit_writer = running.audit_writer;
        running.server.await.map_err(|e| e.to_string())?;
        // The audit writer stops once the server's handles are gone, after writing what is queued.
        if let Some(w) = audit_writer {
            let _ = tokio::task::spawn_blocking(move || w.join()).await;
        }
        tracing::info!("stopped");
        Ok(())
    })
}

fn sync_once(config: Config) -> Result<(), String> {
    let upstream = config
        .upstream()?
        .ok_or("yba sync needs YBA_UPSTREAM (the upstream server's FHIR base)")?;
    actix_web::rt::System::new().block_on(async move {
        let store = yba::store::Store::open(&config.store()).map_err(|e| e.to_string())?;
        yba::fhir::search::load_custom_params(&store)
            .await
            .map_err(|e| e.to_string())?;
        let fhir = yba::fhir::interactions::Fhir::new(store, config.rules());
        let node = yba::sync::Node::new(
            fhir,
            upstream,
            std::time::Duration::from_millis(config.sync_interval_ms),
        )?;
        let round = node.round().await;
        println!(
            "{}",
            serde_json::to_string(&round).map_err(|e| e.to_string())?
        );
        match round.error {
            None => Ok(()),
            Some(e) => Err(format!("the sync round failed: {e}")),
        }
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

/// The progress bar of `yba import`.
struct Bar(indicatif::ProgressBar);

impl yba::fhir::import::Progress for Bar {
    fn total(&self, units: u64) {
        self.0.set_length(units);
    }
    fn advance(&self, units: u64) {
        self.0.inc(units);
    }
}

fn import(
    paths: Vec<std::path::PathBuf>,
    batch: usize,
    errors: Option<std::path::PathBuf>,
    config: Config,
) -> Result<(), String> {
    use yba::fhir::import;
    let mut opts = import::Options {
        batch,
        base: config
            .base_url
            .clone()
            .unwrap_or_else(|| format!("http://{}/fhir", config.bind)),
        ..import::Options::default()
    };
    // `--workers` (YBA_WORKERS): batches parsed and written at the same time.
    if let Some(w) = config.workers {
        opts.workers = w.max(1);
    }
    let mut store_config = config.store();
    store_config.pool_size = store_config.pool_size.max(opts.workers as u32 + 2);
    actix_web::rt::System::new().block_on(async move {
        let store = yba::store::Store::open(&store_config).map_err(|e| e.to_string())?;
        yba::fhir::search::load_custom_params(&store)
            .await
            .map_err(|e| e.to_string())?;
        // Into an empty database this stamps the search index's definitions (as `yba serve`
        // does), so that the server later started on it knows its index is current.
        if !yba::fhir::search::index_is_current(&store)
            .await
            .map_err(|e| e.to_string())?
        {
            tracing::warn!(
                "the search index was written under other search parameter definitions: run `yba reindex` after the import"
            );
        }
        let fhir = yba::fhir::interactions::Fhir::new(store.clone(), config.rules());
        fhir.conformance()
            .load_stored(&store)
            .await
            .map_err(|e| e.to_string())?;
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} importing [{bar:40}] {pos}/{len} resources ({per_sec}, {eta} left)",
            )
            .map_err(|e| e.to_string())?
            .progress_chars("=> "),
        );
        let progress = std::sync::Arc::new(Bar(bar.clone()));
        let sources = paths.into_iter().map(import::Source::Path).collect();
        let started = std::time::Instant::now();
        let report = import::run(&fhir, sources, &opts, progress)
            .await
            .map_err(|e| format!("the import stopped: {e}: {:?}", e.issues()))?;
        bar.finish_and_clear();
        let secs = started.elapsed().as_secs_f64();
        println!(
            "imported in {secs:.1} s: {} resources written ({:.0}/s), {} already in and unchanged, \
             {} Bundles processed, {} Bundles imported before",
            report.written,
            report.written as f64 / secs.max(0.001),
            report.unchanged,
            report.bundles,
            report.bundles_skipped
        );
        for f in &report.ignored {
            println!("ignored (not .ndjson, .jsonl, .json or .xml): {f}");
        }
        if let Some(path) = &errors {
            let mut out = String::new();
            for f in &report.failures {
                let v = serde_json::json!({
                    "source": f.source,
                    "line": f.line,
                    "outcome": yba::fhir::outcome::to_value(&f.issues),
                });
                out.push_str(&v.to_string());
                out.push('\n');
            }
            std::fs::write(path, out)
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        }
        if report.failures.is_empty() {
            return Ok(());
        }
        println!("{} failed:", report.failures.len());
        for f in &report.failures {
            println!("{f}\n  {}", yba::fhir::outcome::to_value(&f.issues));
        }
        Err(format!(
            "{} lines or files failed (listed above); everything else went in",
            report.failures.len()
        ))
    })
}

fn password_input() -> Result<String, String> {
    if let Ok(p) = std::env::var("YBA_PASSWORD") {
        return Ok(p);
    }
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|e| format!("cannot read the password from stdin: {e}"))?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

fn with_store<F, Fut>(config: &Config, f: F) -> Result<(), String>
where
    F: FnOnce(yba::store::Store) -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let store = yba::store::Store::open(&config.store()).map_err(|e| e.to_string())?;
    actix_web::rt::System::new().block_on(f(store))
}

fn user(action: UserAction) -> Result<(), String> {
    use yba::auth::service;
    match action {
        UserAction::Create {
            username,
            role,
            fhir_user,
            organization,
            config,
        } => {
            let role = yba::auth::Role::parse(&role).ok_or_else(|| {
                format!("'{role}' is not a role: patient, practitioner, pharmacist or admin")
            })?;
            let pw = password_input()?;
            with_store(&config, |store| async move {
                let u = service::NewUser {
                    username,
                    role,
                    fhir_user,
                    organization,
                };
                service::create_user(&store, u, &pw).await?;
                println!("user created");
                Ok(())
            })
        }
        UserAction::ResetPassword { username, config } => {
            let pw = password_input()?;
            with_store(&config, |store| async move {
                service::reset_password(&store, &username, &pw).await?;
                println!("password set; the account's sessions are ended");
                Ok(())
            })
        }
        UserAction::Disable { username, config } => with_store(&config, |store| async move {
            service::set_user_disabled(&store, &username, true).await?;
            println!("account disabled; its sessions are ended");
            Ok(())
        }),
        UserAction::Enable { username, config } => with_store(&config, |store| async move {
            service::set_user_disabled(&store, &username, false).await?;
            println!("account enabled");
            Ok(())
        }),
    }
}

fn client(action: ClientAction) -> Result<(), String> {
    use yba::auth::service;
    match action {
        ClientAction::Create {
            client_id,
            name,
            organization,
            scopes,
            public_key_file,
            config,
        } => {
            let public_key = match public_key_file {
                Some(p) => Some(
                    std::fs::read_to_string(&p)
                        .map_err(|e| format!("cannot read {}: {e}", p.display()))?,
                ),
                None => None,
            };
            let secret = public_key.is_none().then(yba::auth::token::random_token);
            with_store(&config, |store| async move {
                let c = service::NewClient {
                    client_id,
                    name,
                    organization,
                    scopes,
                    secret: secret.clone(),
                    public_key,
                };
                service::create_client(&store, c).await?;
                match secret {
                    Some(s) => {
                        println!("client created; its secret (shown once, keep it safe):\n{s}")
                    }
                    None => println!("client created (private_key_jwt with the given public key)"),
                }
                Ok(())
            })
        }
    }
}
