//! Bulk import benchmark: a generated hospital backlog as NDJSON (Patients with valid citizen
//! IDs, their Encounters and Observations, about 1 : 2 : 7, with explicit ids and
//! `Patient/<id>` references, one set of files per type), imported by the real `yba import`
//! into a fresh database; then the same import again on the same database (the resume path:
//! everything is already in and unchanged).
//!
//!     cargo bench --bench import -- --db sqlite   [--resources 500000] [--workers N] [--batch N]
//!     cargo bench --bench import -- --db postgres   # YBA_BENCH_POSTGRES_URL to override
//!
//! `yba import` runs in its own process on the same machine; this process only generates the
//! files, waits, and measures: wall time, the child's peak RSS (`ru_maxrss` from `wait4`) and
//! its CPU time against the whole machine's (on PostgreSQL the difference is mostly the database
//! server; SQLite runs inside `yba`).

mod common;

use std::io::{BufWriter, Read as _, Write as _};
use std::path::Path;
use std::time::{Duration, Instant};

use common::Rng;
use diesel::{Connection, RunQueryDsl};
use serde_json::{Value, json};

const LINES_PER_FILE: usize = 100_000;

struct Args {
    db: String,
    resources: usize,
    workers: Option<usize>,
    batch: Option<usize>,
}

fn args() -> Args {
    let f = common::Flags::parse();
    Args {
        db: f.text("db", "sqlite"),
        resources: f.num("resources", 500_000),
        workers: f.on("workers").then(|| f.num("workers", 0)),
        batch: f.on("batch").then(|| f.num("batch", 0)),
    }
}

/// Person `n` (copied from benches/load.rs). Distinct `n` (below 120 million) are distinct
/// people, each with a citizen ID of their own (the server keeps one record per citizen) whose
/// birth year and sex agree with the record (the server checks them).
fn patient(n: u64) -> Value {
    let female = (n / 60_000_000) % 2 == 1;
    let yy = 40 + (n / 1_000_000) % 60;
    json!({
        "resourceType": "Patient",
        "identifier": [{"system": "http://fhir.ehealth.gov.vn/core/sid/citizen_id", "value": format!("001{}{yy:02}{:06}", u8::from(female), n % 1_000_000)}],
        "active": true,
        "name": [{"use": "official", "family": "Nguyễn", "given": ["Văn", format!("An{n}")]}],
        "telecom": [{"system": "phone", "value": format!("09{:08}", n % 100_000_000), "use": "mobile"}],
        "gender": if female { "female" } else { "male" },
        "birthDate": format!("19{yy:02}-{:02}-{:02}", 1 + n % 12, 1 + n % 28),
        "address": [{"use": "home", "line": ["12 Lê Lợi"], "city": "Huế", "district": "Phú Hội", "country": "VN"}]
    })
}

/// Encounter `e` of patient `n`.
fn encounter(e: u64, n: u64) -> Value {
    let day = format!("20{:02}-{:02}-{:02}", 20 + e % 6, 1 + e % 12, 1 + e % 28);
    json!({"resourceType": "Encounter", "id": format!("e-{e}"), "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": if e.is_multiple_of(5) { "IMP" } else { "AMB" }},
        "subject": {"reference": format!("Patient/p-{n}")},
        "period": {"start": format!("{day}T08:00:00+07:00"), "end": format!("{day}T08:30:00+07:00")}})
}

/// Vital signs: LOINC code, display, UCUM unit, base value, spread.
const VITALS: [(&str, &str, &str, u64, usize); 5] = [
    ("8480-6", "Systolic blood pressure", "mm[Hg]", 100, 70),
    ("8462-4", "Diastolic blood pressure", "mm[Hg]", 60, 40),
    ("8867-4", "Heart rate", "/min", 55, 60),
    ("29463-7", "Body weight", "kg", 40, 50),
    ("8310-5", "Body temperature", "Cel", 36, 4),
];

/// Observation `o` of patient `n`, made during encounter `e`.
fn observation(o: u64, n: u64, e: u64, rng: &mut Rng) -> Value {
    let (code, display, unit, base, spread) = VITALS[(o % 5) as usize];
    let day = format!("20{:02}-{:02}-{:02}", 20 + e % 6, 1 + e % 12, 1 + e % 28);
    json!({"resourceType": "Observation", "id": format!("o-{o}"), "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": code, "display": display}]},
        "subject": {"reference": format!("Patient/p-{n}")}, "encounter": {"reference": format!("Encounter/e-{e}")},
        "effectiveDateTime": format!("{day}T08:10:00+07:00"),
        "valueQuantity": {"value": base + rng.below(spread) as u64, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit}})
}

/// NDJSON files of one resource type, `LINES_PER_FILE` lines each, named so that the files of
/// `order` come before those of a greater one (Patients first, as an export gives them).
struct Files<'a> {
    dir: &'a Path,
    order: u32,
    ty: &'static str,
    lines: usize,
    files: usize,
    out: Option<BufWriter<std::fs::File>>,
}

impl<'a> Files<'a> {
    fn new(dir: &'a Path, order: u32, ty: &'static str) -> Self {
        Files {
            dir,
            order,
            ty,
            lines: 0,
            files: 0,
            out: None,
        }
    }

    fn write(&mut self, v: &Value) {
        if self.lines.is_multiple_of(LINES_PER_FILE) {
            if let Some(mut f) = self.out.take() {
                f.flush().unwrap();
            }
            let name = format!("{}-{}-{:03}.ndjson", self.order, self.ty, self.files);
            let f = std::fs::File::create(self.dir.join(name)).expect("create an NDJSON file");
            self.out = Some(BufWriter::with_capacity(1 << 20, f));
            self.files += 1;
        }
        let out = self.out.as_mut().unwrap();
        serde_json::to_writer(&mut *out, v).unwrap();
        out.write_all(b"\n").unwrap();
        self.lines += 1;
    }

    fn finish(mut self) -> (usize, usize) {
        if let Some(mut f) = self.out.take() {
            f.flush().unwrap();
        }
        (self.lines, self.files)
    }
}

/// Writes the backlog: `patients` Patients, 2 Encounters and 7 Observations each. Returns the
/// resources written, per type (type, resources, files), and the bytes on disk.
fn generate(dir: &Path, patients: u64) -> (usize, Vec<(&'static str, usize, usize)>, u64) {
    let mut p = Files::new(dir, 1, "Patient");
    let mut e = Files::new(dir, 2, "Encounter");
    let mut o = Files::new(dir, 3, "Observation");
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let (mut next_e, mut next_o) = (0u64, 0u64);
    for n in 0..patients {
        let mut v = patient(n);
        v["id"] = json!(format!("p-{n}"));
        p.write(&v);
        for k in 0..2 {
            e.write(&encounter(next_e + k, n));
        }
        for j in 0..7u64 {
            // Four observations at the first visit, three at the second.
            o.write(&observation(
                next_o + j,
                n,
                next_e + u64::from(j >= 4),
                &mut rng,
            ));
        }
        next_e += 2;
        next_o += 7;
    }
    let mut types = Vec::new();
    let mut total = 0;
    for (ty, f) in [("Patient", p), ("Encounter", e), ("Observation", o)] {
        let (lines, files) = f.finish();
        total += lines;
        types.push((ty, lines, files));
    }
    let bytes = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|f| f.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum();
    (total, types, bytes)
}

/// The busy and total jiffies of the whole machine (`/proc/stat`).
fn machine_jiffies() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return (0, 0);
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is within user).
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// What one `yba import` run did.
struct Run {
    wall: Duration,
    /// The line `yba import` printed.
    line: String,
    written: u64,
    unchanged: u64,
    /// The child's peak resident set, kB.
    peak_rss_kb: u64,
    /// The child's CPU time, user + system.
    cpu: Duration,
    /// CPU time the whole machine spent meanwhile.
    machine_cpu: Duration,
}

/// The number before `label` in `line` (`... 500000 resources written ...`).
fn count_before(line: &str, label: &str) -> Option<u64> {
    let at = line.find(label)?;
    line[..at].split_whitespace().last()?.parse().ok()
}

fn import(dir: &Path, url: &str, a: &Args) -> Run {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_yba"));
    cmd.arg("import").arg(dir);
    if let Some(w) = a.workers {
        cmd.args(["--workers", &w.to_string()]);
    }
    if let Some(b) = a.batch {
        cmd.args(["--batch", &b.to_string()]);
    }
    cmd.env("DATABASE_URL", url)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped());
    let (busy0, _) = machine_jiffies();
    let start = Instant::now();
    #[expect(clippy::zombie_processes, reason = "wait4 below reaps it")]
    let mut child = cmd.spawn().expect("yba import starts");
    let pid = child.id() as libc::pid_t;
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        stdout.read_to_string(&mut s).expect("read yba's output");
        s
    });
    // wait4 rather than Child::wait: it also gives the child's peak RSS and CPU time.
    let mut status = 0;
    // SAFETY: a zeroed rusage is a valid value for wait4 to fill in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is our own child, not yet waited for; both pointers are to live locals.
    let got = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let wall = start.elapsed();
    let (busy1, _) = machine_jiffies();
    assert_eq!(got, pid, "wait4: {}", std::io::Error::last_os_error());
    let out = reader.join().unwrap();
    print!("{out}");
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "yba import failed (wait status {status:#x}); its output is above"
    );
    let line = out
        .lines()
        .find(|l| l.starts_with("imported in"))
        .unwrap_or_else(|| panic!("yba import printed no summary line:\n{out}"))
        .to_string();
    let written = count_before(&line, "resources written")
        .unwrap_or_else(|| panic!("no written count in: {line}"));
    let unchanged = count_before(&line, "already in and unchanged")
        .unwrap_or_else(|| panic!("no unchanged count in: {line}"));
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Run {
        wall,
        line,
        written,
        unchanged,
        peak_rss_kb: usage.ru_maxrss as u64,
        cpu: tv(usage.ru_utime) + tv(usage.ru_stime),
        machine_cpu: Duration::from_secs_f64(busy1.saturating_sub(busy0) as f64 / hz),
    }
}

/// Drops the bench's PostgreSQL schema when the run ends, panics included.
struct Schema {
    server: String,
    name: String,
}

impl Drop for Schema {
    fn drop(&mut self) {
        if let Ok(mut c) = diesel::PgConnection::establish(&self.server) {
            let _ = diesel::sql_query(format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name))
                .execute(&mut c);
        }
    }
}

/// The database's size on disk after the import, MB (on SQLite the main file, not its WAL).
fn database_mb(postgres: bool, url: &str, db_file: &Path, schema: &str) -> f64 {
    if !postgres {
        return std::fs::metadata(db_file).map_or(0.0, |m| m.len() as f64 / 1e6);
    }
    #[derive(diesel::QueryableByName)]
    struct Size {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        bytes: i64,
    }
    let mut c = diesel::PgConnection::establish(url).expect("PostgreSQL reachable");
    diesel::sql_query(format!(
        "SELECT COALESCE(SUM(pg_total_relation_size(c.oid)), 0)::BIGINT AS bytes FROM pg_class c \
         JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = '{schema}' AND c.relkind IN ('r', 'm')"
    ))
    .get_result::<Size>(&mut c)
    .map_or(0.0, |s| s.bytes as f64 / 1e6)
}

fn main() {
    let a = args();
    let postgres = a.db.starts_with("postgres");
    let patients = a.resources.div_ceil(10).max(1) as u64;

    let data = tempfile::tempdir().expect("a temporary directory");
    let backlog = data.path().join("backlog");
    std::fs::create_dir(&backlog).unwrap();
    let t = Instant::now();
    let (resources, types, bytes) = generate(&backlog, patients);
    println!(
        "generated {resources} resources ({:.0} MB of NDJSON) in {:.1} s: {}",
        bytes as f64 / 1e6,
        t.elapsed().as_secs_f64(),
        types
            .iter()
            .map(|(ty, n, f)| format!("{n} {ty} in {f} file(s)"))
            .collect::<Vec<_>>()
            .join(", ")
    );

    let db_file = data.path().join("db").join("yba.db");
    let schema_name = format!("bench_{}", uuid::Uuid::new_v4().simple());
    let mut _schema = None;
    let url = if postgres {
        let server = std::env::var("YBA_BENCH_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        let mut c = diesel::PgConnection::establish(&server).expect("PostgreSQL reachable");
        diesel::sql_query(format!("CREATE SCHEMA {schema_name}"))
            .execute(&mut c)
            .unwrap();
        let url = format!("{server}?options=-csearch_path%3D{schema_name}");
        _schema = Some(Schema {
            server,
            name: schema_name.clone(),
        });
        url
    } else {
        format!("sqlite://{}", db_file.display())
    };
    let database = if postgres {
        format!("PostgreSQL (schema {schema_name})")
    } else {
        "SQLite (synchronous=full)".to_string()
    };
    let flags = format!(
        "{}{}",
        a.workers
            .map_or(String::new(), |w| format!(" --workers {w}")),
        a.batch.map_or(String::new(), |b| format!(" --batch {b}"))
    );
    println!("yba import{flags} into {database}\n");

    let first = import(&backlog, &url, &a);
    assert_eq!(
        first.written, resources as u64,
        "the first import wrote {} of the {resources} resources generated: {}",
        first.written, first.line
    );
    let size_mb = database_mb(postgres, &url, &db_file, &schema_name);
    let again = import(&backlog, &url, &a);
    assert!(
        again.written == 0 && again.unchanged == resources as u64,
        "the second import should find all {resources} resources in and unchanged: {}",
        again.line
    );

    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("\n## yba import{flags} — {database}, {resources} resources, {cores} cores");
    println!("| run | wall s | resources/s | yba CPU s | whole machine CPU s | peak RSS MB |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (label, r) in [
        ("first import (empty database)", &first),
        ("second import (all in, unchanged)", &again),
    ] {
        let secs = r.wall.as_secs_f64();
        println!(
            "| {label} | {secs:.1} | {:.0} | {:.1} | {:.1} | {:.1} |",
            resources as f64 / secs,
            r.cpu.as_secs_f64(),
            r.machine_cpu.as_secs_f64(),
            r.peak_rss_kb as f64 / 1024.0
        );
    }
    println!(
        "\nwall time is from spawning `yba import` to its exit (start-up and migrations \
         included); its own lines:\n  {}\n  {}",
        first.line, again.line
    );
    println!("database size after the import: {size_mb:.0} MB");
}
