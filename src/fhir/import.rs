//! Bulk import: NDJSON files (one resource a line), transaction and batch Bundles, and folders of
//! them, into the record store, as `yba import` and `$import` do.
//!
//! - **Fast path.** Lines are read in batches; workers parse and validate them in parallel
//!   (through the same checks as a create: the R4 model, compulsory profiles, identifier
//!   rules), and each batch goes in as one database transaction of multi-row inserts.
//! - **Nothing partial.** A line that fails its checks is reported (source, line,
//!   OperationOutcome) and the rest of its batch goes in. A batch the database refuses (a citizen
//!   ID already held, say) is retried one resource at a time, so only the guilty lines fail.
//! - **Resumable.** Resources keep their ids (create-on-update, as a Bulk Data export gives
//!   them); a resource without one gets an id made from its content. A resource whose content is
//!   already the current version is left alone, so a re-run after an interruption skips what
//!   went in and writes the rest. A Bundle is marked as imported in its own transaction.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::bundle::{self, BundleOptions};
use super::datetime::now_millis;
use super::format::{Format, parse_resource, restamp, same_content};
use super::identity;
use super::interactions::{Fhir, check_id, prepare, retry};
use super::outcome::Issue;
use super::vn_rules::CITIZEN_ID;
use crate::error::{Error, Result};
use crate::store::{IndexRows, Method, NewVersion, Session, fnv1a};

/// How an import runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// Batches parsed and written at the same time.
    pub workers: usize,
    /// Resources per batch (one database transaction).
    pub batch: usize,
    /// The server's FHIR base URL (to read absolute references in Bundles).
    pub base: String,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
            batch: 500,
            base: "http://localhost/fhir".into(),
        }
    }
}

/// Something to import.
#[derive(Debug, Clone)]
pub enum Source {
    /// A file or a folder (walked for `.ndjson`, `.jsonl`, `.json` and `.xml` files).
    Path(PathBuf),
    /// NDJSON in memory (an upload or a downloaded `$import` input), under a name for reports.
    Ndjson { name: String, data: bytes::Bytes },
}

/// A line or file that did not go in.
#[derive(Debug, Clone)]
pub struct Failure {
    /// The file (or input) it came from.
    pub source: String,
    /// Its line (from 1) in an NDJSON file; None for a whole file.
    pub line: Option<u64>,
    pub issues: Vec<Issue>,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line {
            Some(l) => write!(f, "{}:{l}", self.source)?,
            None => write!(f, "{}", self.source)?,
        }
        for i in &self.issues {
            write!(f, ": {}", i.diagnostics)?;
            if let Some(at) = &i.expression {
                write!(f, " (at {at})")?;
            }
        }
        Ok(())
    }
}

/// What an import did.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Resources written (a new resource or a new version).
    pub written: u64,
    /// Resources whose content was already current (an earlier run wrote them).
    pub unchanged: u64,
    /// Bundles processed, and those skipped as imported already.
    pub bundles: u64,
    pub bundles_skipped: u64,
    /// Everything that failed: each failure names its place.
    pub failures: Vec<Failure>,
    /// Files in the folders given that are not of a kind imported (left alone).
    pub ignored: Vec<String>,
}

impl Report {
    fn absorb(&mut self, other: Report) {
        self.written += other.written;
        self.unchanged += other.unchanged;
        self.bundles += other.bundles;
        self.bundles_skipped += other.bundles_skipped;
        self.failures.extend(other.failures);
    }
}

/// Told how far an import is: the number of lines and files to do (once known), then each
/// step done. Implemented by the CLI's progress bar and `$import`'s job status.
pub trait Progress: Send + Sync {
    fn total(&self, units: u64);
    fn advance(&self, units: u64);
    /// Whether to stop (a deleted `$import` job); checked between batches.
    fn cancelled(&self) -> bool {
        false
    }
}

/// No progress reporting.
pub struct Quiet;

impl Progress for Quiet {
    fn total(&self, _: u64) {}
    fn advance(&self, _: u64) {}
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Ndjson,
    Json,
    Xml,
}

fn kind_of(path: &Path) -> Option<Kind> {
    let name = path.file_name()?.to_str()?.to_ascii_lowercase();
    if name.starts_with('.') {
        return None;
    }
    if name.ends_with(".ndjson") || name.ends_with(".jsonl") {
        Some(Kind::Ndjson)
    } else if name.ends_with(".json") {
        Some(Kind::Json)
    } else if name.ends_with(".xml") {
        Some(Kind::Xml)
    } else {
        None
    }
}

/// The files of the sources, in a stable order (folders walked, their files sorted by name).
fn expand(sources: Vec<Source>, report: &mut Report) -> Result<Vec<Input>> {
    let mut out = Vec::new();
    for s in sources {
        match s {
            Source::Ndjson { name, data } => out.push(Input::Memory { name, data }),
            Source::Path(p) => {
                let meta = std::fs::metadata(&p).map_err(|e| {
                    Error::invalid("not-found", format!("cannot read {}: {e}", p.display()))
                })?;
                if meta.is_dir() {
                    walk(&p, &mut out, report)?;
                } else {
                    // A file named on its own is taken whatever its name: NDJSON unless it
                    // says .json or .xml.
                    out.push(Input::File(p.clone(), kind_of(&p).unwrap_or(Kind::Ndjson)));
                }
            }
        }
    }
    Ok(out)
}

fn walk(dir: &Path, out: &mut Vec<Input>, report: &mut Report) -> Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::invalid("not-found", format!("cannot read {}: {e}", dir.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            walk(&p, out, report)?;
        } else {
            match kind_of(&p) {
                Some(k) => out.push(Input::File(p, k)),
                None => report.ignored.push(p.display().to_string()),
            }
        }
    }
    Ok(())
}

#[derive(Debug, Clone)]
enum Input {
    File(PathBuf, Kind),
    Memory { name: String, data: bytes::Bytes },
}

impl Input {
    fn name(&self) -> String {
        match self {
            Input::File(p, _) => p.display().to_string(),
            Input::Memory { name, .. } => name.clone(),
        }
    }

    fn kind(&self) -> Kind {
        match self {
            Input::File(_, k) => *k,
            Input::Memory { .. } => Kind::Ndjson,
        }
    }

    fn reader(&self) -> std::io::Result<Box<dyn BufRead + Send>> {
        Ok(match self {
            Input::File(p, _) => {
                Box::new(BufReader::with_capacity(1 << 20, std::fs::File::open(p)?))
            }
            Input::Memory { data, .. } => Box::new(std::io::Cursor::new(data.clone())),
        })
    }

    /// Its steps for the progress bar: non-empty lines of NDJSON, one for a whole file.
    fn units(&self) -> u64 {
        if self.kind() != Kind::Ndjson {
            return 1;
        }
        let Ok(mut r) = self.reader() else { return 0 };
        let mut buf = vec![0u8; 1 << 16];
        let (mut n, mut blank) = (0u64, true);
        while let Ok(k) = r.read(&mut buf) {
            if k == 0 {
                break;
            }
            for &b in &buf[..k] {
                if b == b'\n' {
                    n += u64::from(!blank);
                    blank = true;
                } else if !b.is_ascii_whitespace() {
                    blank = false;
                }
            }
        }
        n + u64::from(!blank)
    }
}

/// A batch of lines of one input.
struct Chunk {
    source: Arc<str>,
    /// (line number from 1, the line's bytes)
    lines: Vec<(u64, Vec<u8>)>,
    /// A whole .json or .xml file (then `lines` has it as its one entry, line 0).
    whole: Option<Kind>,
}

/// A resource ready to write.
struct Item {
    line: u64,
    ty: &'static str,
    id: String,
    /// The stored JSON, stamped version 1 at `at`.
    body: String,
    at: i64,
    rows: IndexRows,
}

/// A Bundle to run through the transaction engine.
struct BundleItem {
    line: Option<u64>,
    value: Value,
    bytes: Vec<u8>,
    format: Format,
}

/// Imports `sources` through `fhir` (which should be ungated: the caller has checked the right
/// to import). Failures of lines and files are in the report; an `Err` is a failure of the whole
/// (an unreadable folder, the database gone).
pub async fn run(
    fhir: &Fhir,
    sources: Vec<Source>,
    opts: &Options,
    progress: Arc<dyn Progress>,
) -> Result<Report> {
    let mut report = Report::default();
    let inputs = expand(sources, &mut report)?;
    let counted = inputs.clone();
    let total = tokio::task::spawn_blocking(move || counted.iter().map(Input::units).sum::<u64>())
        .await
        .map_err(|e| Error::invalid("exception", format!("counting failed: {e}")))?;
    progress.total(total);

    let workers = opts.workers.max(1);
    let batch = opts.batch.clamp(1, 5_000);
    let (tx, rx) = tokio::sync::mpsc::channel::<Chunk>(workers * 2);
    let reader = {
        let progress = progress.clone();
        tokio::task::spawn_blocking(move || read_inputs(inputs, batch, &tx, progress.as_ref()))
    };
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..workers {
        let (rx, fhir, opts, progress) = (rx.clone(), fhir.clone(), opts.clone(), progress.clone());
        tasks.spawn(async move {
            let mut report = Report::default();
            loop {
                let next = rx.lock().await.recv().await;
                let Some(chunk) = next else { break };
                if progress.cancelled() {
                    continue;
                }
                let n = chunk.lines.len() as u64;
                report.absorb(import_chunk(&fhir, chunk, &opts).await?);
                progress.advance(n);
            }
            Ok::<_, Error>(report)
        });
    }
    let mut first_error = None;
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok(Ok(r)) => report.absorb(r),
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(e) => {
                first_error.get_or_insert(Error::invalid(
                    "exception",
                    format!("an import worker failed: {e}"),
                ));
            }
        }
        if first_error.is_some() {
            // Closing the channel stops the reader; the other workers finish their batch.
            rx.lock().await.close();
        }
    }
    match reader.await {
        Ok(failures) => report.failures.extend(failures),
        Err(e) => {
            first_error.get_or_insert(Error::invalid(
                "exception",
                format!("the import reader failed: {e}"),
            ));
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    report
        .failures
        .sort_by(|a, b| (&a.source, a.line).cmp(&(&b.source, b.line)));
    if report.written > 0 || report.bundles > 0 {
        fhir.conformance().load_stored(fhir.store()).await?;
        fhir.store().analyze().await?;
    }
    Ok(report)
}

/// Reads the inputs into chunks for the workers; returns the inputs it could not read.
fn read_inputs(
    inputs: Vec<Input>,
    batch: usize,
    tx: &tokio::sync::mpsc::Sender<Chunk>,
    progress: &dyn Progress,
) -> Vec<Failure> {
    let mut failures = Vec::new();
    for input in inputs {
        let source: Arc<str> = input.name().into();
        let unreadable = |e: std::io::Error| Failure {
            source: source.to_string(),
            line: None,
            issues: vec![Issue::error(
                "exception",
                format!("cannot read the file: {e}"),
            )],
        };
        let mut r = match input.reader() {
            Ok(r) => r,
            Err(e) => {
                failures.push(unreadable(e));
                continue;
            }
        };
        if input.kind() != Kind::Ndjson {
            let mut bytes = Vec::new();
            if let Err(e) = r.read_to_end(&mut bytes) {
                failures.push(unreadable(e));
                progress.advance(1);
                continue;
            }
            let chunk = Chunk {
                source: source.clone(),
                lines: vec![(0, bytes)],
                whole: Some(input.kind()),
            };
            if tx.blocking_send(chunk).is_err() {
                return failures;
            }
            continue;
        }
        let mut lines = Vec::with_capacity(batch);
        let mut no = 0u64;
        loop {
            let mut line = Vec::new();
            match r.read_until(b'\n', &mut line) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    failures.push(Failure {
                        line: Some(no + 1),
                        ..unreadable(e)
                    });
                    break;
                }
            }
            no += 1;
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            lines.push((no, line));
            if lines.len() == batch {
                let chunk = Chunk {
                    source: source.clone(),
                    lines: std::mem::replace(&mut lines, Vec::with_capacity(batch)),
                    whole: None,
                };
                if tx.blocking_send(chunk).is_err() {
                    return failures;
                }
            }
        }
        if !lines.is_empty() {
            let chunk = Chunk {
                source,
                lines,
                whole: None,
            };
            if tx.blocking_send(chunk).is_err() {
                return failures;
            }
        }
    }
    failures
}

/// Parses, checks and writes one chunk.
async fn import_chunk(fhir: &Fhir, chunk: Chunk, opts: &Options) -> Result<Report> {
    let source = chunk.source.clone();
    let checker = fhir.clone();
    let (items, bundles, mut failures) =
        tokio::task::spawn_blocking(move || prepare_chunk(&checker, chunk))
            .await
            .map_err(|e| Error::invalid("exception", format!("a parser failed: {e}")))?;
    let mut report = Report::default();
    if !items.is_empty() {
        write_items(fhir, items, &source, &mut report).await?;
    }
    for b in bundles {
        import_bundle(fhir, b, &source, opts, &mut report).await?;
    }
    report.failures.append(&mut failures);
    Ok(report)
}

type Prepared = (Vec<Item>, Vec<BundleItem>, Vec<Failure>);

fn prepare_chunk(fhir: &Fhir, chunk: Chunk) -> Prepared {
    let now = now_millis();
    let mut items = Vec::with_capacity(chunk.lines.len());
    let mut bundles = Vec::new();
    let mut failures = Vec::new();
    let format = match chunk.whole {
        Some(Kind::Xml) => Format::Xml,
        _ => Format::Json,
    };
    for (line, bytes) in chunk.lines {
        let place = chunk.whole.is_none().then_some(line);
        let fail = |issues: Vec<Issue>| Failure {
            source: chunk.source.to_string(),
            line: place,
            issues,
        };
        let bytes = strip_bom(bytes);
        let (value, ty) = match parse_resource(&bytes, format) {
            Ok(v) => v,
            Err(issues) => {
                failures.push(fail(issues));
                continue;
            }
        };
        if ty == "Bundle"
            && matches!(
                value.get("type").and_then(Value::as_str),
                Some("transaction" | "batch")
            )
        {
            bundles.push(BundleItem {
                line: place,
                value,
                bytes,
                format,
            });
            continue;
        }
        match prepare_item(fhir, value, ty, line, now) {
            Ok(item) => items.push(item),
            Err(e) => failures.push(fail(e.issues())),
        }
    }
    (items, bundles, failures)
}

fn strip_bom(mut bytes: Vec<u8>) -> Vec<u8> {
    if bytes.starts_with(&[0xEF, 0xBB, 0xBF]) {
        bytes.drain(..3);
    }
    bytes
}

fn prepare_item(fhir: &Fhir, value: Value, ty: &'static str, line: u64, now: i64) -> Result<Item> {
    let id = match value.get("id").and_then(Value::as_str) {
        Some(id) => {
            check_id(id).map_err(|e| match e {
                Error::Invalid(issues) => Error::Invalid(
                    issues
                        .into_iter()
                        .map(|i| i.at(format!("{ty}.id")))
                        .collect(),
                ),
                e => e,
            })?;
            id.to_string()
        }
        None => content_id(&value),
    };
    fhir.admit(ty, &value, ty)?;
    let (body, rows) = prepare(value, ty, &id, 1, now, ty)?;
    Ok(Item {
        line,
        ty,
        id,
        body,
        at: now,
        rows,
    })
}

/// The id of a resource that came without one: a UUID made from its content, so that importing
/// it again finds it instead of making a copy.
fn content_id(value: &Value) -> String {
    let digest = Sha256::digest(value.to_string().as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(b).into_uuid().to_string()
}

/// Writes prepared resources in one transaction; if the database refuses it, one at a time, so
/// that only the lines at fault fail.
async fn write_items(
    fhir: &Fhir,
    items: Vec<Item>,
    source: &Arc<str>,
    report: &mut Report,
) -> Result<()> {
    let items = Arc::new(items);
    let all: Vec<usize> = (0..items.len()).collect();
    match write_some(fhir, &items, all).await {
        Ok((w, u)) => {
            report.written += w;
            report.unchanged += u;
            return Ok(());
        }
        Err(e) if !is_about_data(&e) => return Err(e),
        Err(_) => {}
    }
    for i in 0..items.len() {
        match write_some(fhir, &items, vec![i]).await {
            Ok((w, u)) => {
                report.written += w;
                report.unchanged += u;
            }
            Err(e) if !is_about_data(&e) => return Err(e),
            Err(e) => report.failures.push(Failure {
                source: source.to_string(),
                line: Some(items[i].line),
                issues: e.issues(),
            }),
        }
    }
    Ok(())
}

/// Whether an error is about the data written (reported against its line) rather than the
/// database being unavailable (which stops the import).
fn is_about_data(e: &Error) -> bool {
    !matches!(
        e.root(),
        Error::Store(crate::store::StoreError::Unavailable(_) | crate::store::StoreError::Db(_))
    )
}

async fn write_some(fhir: &Fhir, items: &Arc<Vec<Item>>, which: Vec<usize>) -> Result<(u64, u64)> {
    let which = Arc::new(which);
    retry(|| {
        let (items, which) = (items.clone(), which.clone());
        fhir.store().write(move |s| {
            let picked: Vec<&Item> = which.iter().map(|&i| &items[i]).collect();
            write_batch(s, &picked)
        })
    })
    .await
}

/// A version to insert: (item, version, lastUpdated, body, the citizen IDs already its own).
type ToWrite<'i> = (&'i Item, i64, i64, std::borrow::Cow<'i, str>, Vec<String>);

/// One batch in one transaction: new resources and changed ones get a version; resources whose
/// content is current already are left alone. Returns (written, unchanged).
fn write_batch(s: &mut Session<'_>, items: &[&Item]) -> Result<(u64, u64)> {
    let mut seen = HashSet::with_capacity(items.len());
    if let Some(dup) = items.iter().find(|i| !seen.insert((i.ty, i.id.as_str()))) {
        return Err(Error::invalid(
            "duplicate",
            format!("{}/{} appears twice in one batch", dup.ty, dup.id),
        ));
    }
    let mut keys: Vec<i64> = items
        .iter()
        .map(|i| fnv1a(&[i.ty.as_bytes(), b"/", i.id.as_bytes()]))
        .collect();
    s.lock_keys(&mut keys)?;
    let mut by_type: HashMap<&str, Vec<&str>> = HashMap::new();
    for i in items {
        by_type.entry(i.ty).or_default().push(&i.id);
    }
    let mut current = HashMap::with_capacity(items.len());
    for (ty, ids) in by_type {
        for r in s.current_rows(ty, &ids)? {
            current.insert((r.res_type.clone(), r.res_id.clone()), r);
        }
    }
    let mut out: Vec<ToWrite<'_>> = Vec::with_capacity(items.len());
    let mut unchanged = 0;
    for &item in items {
        match current.get(&(item.ty.to_string(), item.id.clone())) {
            None => out.push((item, 1, item.at, item.body.as_str().into(), Vec::new())),
            Some(c) if !c.deleted && same_content(&c.body, &item.body) => unchanged += 1,
            Some(c) => {
                let (version, at) = (c.version + 1, item.at.max(c.last_updated));
                let settled = if item.ty == "Patient" && !c.deleted {
                    identity::prior_claims(s.retire_returning(c.pk, CITIZEN_ID)?)
                } else {
                    s.retire(c.pk)?;
                    Vec::new()
                };
                let body = restamp(&item.body, version, at).ok_or_else(|| {
                    Error::invalid("exception", "the stored JSON has no meta to stamp")
                })?;
                out.push((item, version, at, body.into(), settled));
            }
        }
    }
    let claims: Vec<identity::Claim<'_>> = out
        .iter()
        .map(|(item, _, _, body, settled)| identity::Claim {
            ty: item.ty,
            id: &item.id,
            rows: &item.rows,
            body,
            entry: None,
            settled,
        })
        .collect();
    identity::check(s, &claims)?;
    let txid = s.txid();
    let versions: Vec<NewVersion<'_>> = out
        .iter()
        .map(|(item, version, at, body, _)| NewVersion {
            res_type: item.ty,
            res_id: &item.id,
            version: *version,
            is_current: true,
            deleted: false,
            method: Method::Update as i16,
            txid,
            last_updated: *at,
            body,
        })
        .collect();
    let rows: Vec<&IndexRows> = out.iter().map(|(item, ..)| &item.rows).collect();
    s.insert_versions(&versions, &rows)?;
    Ok((versions.len() as u64, unchanged))
}

/// The key of a Bundle's import mark.
fn bundle_key(bytes: &[u8]) -> String {
    let d = Sha256::digest(bytes);
    d.iter().map(|b| format!("{b:02x}")).collect()
}

async fn import_bundle(
    fhir: &Fhir,
    b: BundleItem,
    source: &Arc<str>,
    opts: &Options,
    report: &mut Report,
) -> Result<()> {
    let key = bundle_key(&b.bytes);
    let k = key.clone();
    if fhir
        .store()
        .read(move |s| Ok::<_, Error>(s.is_marked(&k)?))
        .await?
    {
        report.bundles_skipped += 1;
        return Ok(());
    }
    let transaction = b.value.get("type").and_then(Value::as_str) == Some("transaction");
    let bopts = BundleOptions {
        base: opts.base.clone(),
        representation: false,
        once: transaction.then(|| key.clone()),
    };
    let (bytes, format) = (b.bytes, b.format);
    let reparse = || {
        parse_resource(&bytes, format)
            .map(|(v, _)| v)
            .map_err(Error::Invalid)
    };
    let fail = |issues: Vec<Issue>| Failure {
        source: source.to_string(),
        line: b.line,
        issues,
    };
    match bundle::process(fhir, b.value, reparse, &bopts).await {
        Ok(json) => {
            report.bundles += 1;
            let response: Value = serde_json::from_str(&json).unwrap_or(Value::Null);
            let entries = response["entry"].as_array().map_or(&[][..], Vec::as_slice);
            for (i, e) in entries.iter().enumerate() {
                let status = e["response"]["status"].as_str().unwrap_or("");
                if status.starts_with('2') {
                    report.written += u64::from(status.starts_with("201"));
                    continue;
                }
                let issues = entry_issues(&e["response"]["outcome"], i, status);
                report.failures.push(fail(issues));
            }
            if !transaction {
                // A batch's entries each went in on their own: marked after them all.
                fhir.store()
                    .write(move |s| Ok::<_, Error>(s.mark(&key, now_millis())?))
                    .await?;
            }
        }
        Err(e) if is_about_data(&e) => report.failures.push(fail(e.issues())),
        Err(e) => return Err(e),
    }
    Ok(())
}

/// The issues of a failed batch entry, from its response's OperationOutcome.
fn entry_issues(outcome: &Value, index: usize, status: &str) -> Vec<Issue> {
    let mut out: Vec<Issue> = outcome["issue"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|i| {
                    let mut issue = Issue::error(
                        "processing",
                        format!(
                            "Bundle.entry[{index}] ({status}): {}",
                            i["diagnostics"].as_str().unwrap_or("failed")
                        ),
                    );
                    issue.expression = i["expression"][0]
                        .as_str()
                        .map(str::to_string)
                        .or_else(|| Some(format!("Bundle.entry[{index}]")));
                    issue
                })
                .collect()
        })
        .unwrap_or_default();
    if out.is_empty() {
        out.push(
            Issue::error(
                "processing",
                format!("Bundle.entry[{index}] failed ({status})"),
            )
            .at(format!("Bundle.entry[{index}]")),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = r#"{"resourceType":"Patient","id":"p","meta":{"versionId":"1","lastUpdated":"2026-01-01T00:00:00.000Z"},"active":true}"#;

    #[test]
    fn content_apart_from_the_stamp_is_compared() {
        let b = restamp(A, 7, 0).expect("meta");
        assert!(b.contains(r#""versionId":"7","lastUpdated":"1970-01-01T00:00:00.000Z""#));
        assert!(same_content(A, &b));
        assert!(!same_content(A, &b.replace("true", "false")));
    }

    #[test]
    fn a_resource_without_id_gets_the_same_id_each_time() {
        let v: Value = serde_json::from_str(r#"{"resourceType":"Basic","code":{}}"#).unwrap();
        assert_eq!(content_id(&v), content_id(&v.clone()));
        assert!(check_id(&content_id(&v)).is_ok());
    }
}
