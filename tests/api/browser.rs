//! The teleconsultation page (`/consult/{id}`) in real browsers: two headless Chromiums,
//! driven over WebDriver (chromedriver), sign in on the page, check their devices, and hold a
//! call through the server's relay — the doctor admits the station's health worker from the
//! waiting room, each sees the other's video, mutes and the audio-only switch reach the other
//! side, and the doctor's End button ends the call for both. On both databases.
//!
//! Chromium and chromedriver come from Debian (`chromium chromium-driver`; `.ci/run` installs
//! them). Without them the browser test is skipped, except in CI, where it fails.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

use crate::auth::{PW, user_token};
use crate::calls::held_consultation;
use crate::consultations::station_world;
use crate::helpers::TestApp;

crate::on_both_databases!(@with crate::helpers::with_auth;
    the_page_and_its_assets_are_served_with_a_strict_policy,
    a_doctor_and_a_station_hold_a_video_call_in_two_browsers,
);

async fn the_page_and_its_assets_are_served_with_a_strict_policy(app: TestApp) {
    station_world(&app).await;
    let dr = user_token(&app, "dr.an").await;
    let id = held_consultation(&app, &dr).await;

    // No sign-in needed: the page holds no personal data.
    let page = app.get(&format!("/consult/{id}")).await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let csp = page.header("content-security-policy").unwrap_or_default();
    for directive in [
        "default-src 'self'",
        "script-src 'self'",
        "connect-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(directive), "{directive} missing from {csp}");
    }
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert_eq!(page.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(page.header("referrer-policy"), Some("no-referrer"));
    assert_eq!(page.header("cache-control"), Some("no-cache"));
    assert!(
        page.body
            .contains(r#"<script src="/consult/assets/consult.js" defer>"#)
    );
    assert!(
        !page.body.contains(&id),
        "the page is the same for every consultation"
    );

    for (path, ty, needle) in [
        (
            "/consult/assets/consult.js",
            "text/javascript; charset=utf-8",
            "RTCPeerConnection",
        ),
        (
            "/consult/assets/consult.css",
            "text/css; charset=utf-8",
            ".tile",
        ),
    ] {
        let r = app.get(path).await;
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        assert_eq!(r.header("content-type"), Some(ty), "{path}");
        assert_eq!(
            r.header("x-content-type-options"),
            Some("nosniff"),
            "{path}"
        );
        assert!(r.body.contains(needle), "{path}");
        // Revalidation is cheap: the same file answers 304.
        let etag = r.header("etag").expect("an ETag").to_string();
        let again = app
            .send(
                app.request(reqwest::Method::GET, path)
                    .header("if-none-match", &etag),
            )
            .await;
        assert_eq!(again.status, 304, "{path}");
        assert!(again.body.is_empty());
    }

    assert_eq!(app.get("/consult/assets/other.js").await.status, 404);
    assert_eq!(app.get("/consult/a%20b").await.status, 404);
}

/// Chromium and chromedriver, from `YBA_CHROMIUM` / `YBA_CHROMEDRIVER` or the `PATH`.
fn browser_tools() -> Option<(PathBuf, PathBuf)> {
    let find = |var: &str, names: &[&str]| match std::env::var_os(var) {
        Some(p) => Some(PathBuf::from(p)).filter(|p| p.is_file()),
        None => {
            let path = std::env::var_os("PATH")?;
            std::env::split_paths(&path)
                .flat_map(|dir| names.iter().map(move |n| dir.join(n)))
                .find(|p| p.is_file())
        }
    };
    let chromium = find(
        "YBA_CHROMIUM",
        &["chromium", "chromium-browser", "google-chrome"],
    );
    let driver = find("YBA_CHROMEDRIVER", &["chromedriver"]);
    match (chromium, driver) {
        (Some(c), Some(d)) => Some((c, d)),
        _ if std::env::var_os("CI").is_some() => {
            panic!(
                "Chromium and chromedriver are required in CI (apt-get install chromium chromium-driver)"
            )
        }
        _ => {
            eprintln!(
                "Chromium or chromedriver not found: the browser test is skipped \
                 (apt-get install chromium chromium-driver)"
            );
            None
        }
    }
}

/// A chromedriver of our own, in a process group of its own, so that it and every browser it
/// started go with it, even when the test fails half-way.
struct Driver {
    child: Child,
    url: String,
    profiles: Vec<tempfile::TempDir>,
}

impl Driver {
    fn start(path: &Path) -> Driver {
        use std::os::unix::process::CommandExt;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new(path)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("chromedriver starts");
        let driver = Driver {
            child,
            url: format!("http://127.0.0.1:{port}"),
            profiles: Vec::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not listen");
            std::thread::sleep(Duration::from_millis(100));
        }
        driver
    }

    /// A fresh headless Chromium with a fake camera and microphone that need no permission.
    async fn browser(&mut self, chromium: &Path) -> Client {
        let profile = tempfile::tempdir().expect("profile dir");
        let args = [
            "--headless=new".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-dev-shm-usage".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--disable-crash-reporter".into(),
            "--window-size=1024,768".into(),
            format!("--user-data-dir={}", profile.path().display()),
            "--use-fake-device-for-media-stream".into(),
            "--use-fake-ui-for-media-stream".into(),
            "--autoplay-policy=no-user-gesture-required".into(),
            // Host candidates with real addresses, not mDNS names the relay would have to
            // resolve. Chromium gathers none on loopback by default; its candidate on the
            // machine's own address reaches the relay's 127.0.0.1 by local delivery, never
            // leaving the machine. (So the machine needs an interface besides loopback: with
            // --allow-loopback-in-peer-connection in a namespace holding only `lo`, Chromium
            // gathered 127.0.0.1 but the call's ICE did not complete.)
            "--disable-features=WebRtcHideLocalIpsWithMdns".into(),
        ];
        self.profiles.push(profile);
        let caps = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium, "args": args},
        });
        let Value::Object(caps) = caps else {
            unreachable!()
        };
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&self.url)
            .await
            .expect("a Chromium session")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let group = i32::try_from(self.child.id()).expect("a pid");
        // SAFETY: kill(2) on the process group of the chromedriver we spawned (pgid = its pid).
        unsafe {
            libc::kill(-group, libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

/// One person's browser on the page.
struct Page {
    who: &'static str,
    client: Client,
}

impl Page {
    async fn js(&self, script: &str) -> Value {
        self.client
            .execute(script, Vec::new())
            .await
            .unwrap_or_else(|e| panic!("{}: script failed: {e}\n{script}", self.who))
    }

    /// Waits until the expression is true on the page; on timeout, says what the page knew.
    async fn until(&self, what: &str, expr: &str, secs: u64) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        let script = format!("return !!({expr});");
        loop {
            if self.js(&script).await == json!(true) {
                return;
            }
            if Instant::now() > deadline {
                let state = self
                    .js(
                        "return JSON.stringify({state: window.yba && window.yba.state, \
                         error: document.getElementById('error').textContent})",
                    )
                    .await;
                panic!(
                    "{}: not {what} within {secs} s; the page: {state}",
                    self.who
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    async fn click(&self, css: &str) {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{}: no {css}: {e}", self.who))
            .click()
            .await
            .unwrap_or_else(|e| panic!("{}: cannot click {css}: {e}", self.who));
    }

    async fn type_into(&self, css: &str, text: &str) {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{}: no {css}: {e}", self.who))
            .send_keys(text)
            .await
            .unwrap_or_else(|e| panic!("{}: cannot type into {css}: {e}", self.who));
    }

    async fn text(&self, css: &str) -> String {
        let v = self
            .js(&format!(
                "return document.querySelector({}).textContent;",
                json!(css)
            ))
            .await;
        v.as_str().unwrap_or_default().to_string()
    }

    /// Signs in on the page and waits for the device check to pass.
    async fn sign_in_and_check(&self, username: &str) {
        self.until("on the sign-in screen", "yba.state.phase === 'signin'", 30)
            .await;
        self.type_into("#username", username).await;
        self.type_into("#password", PW).await;
        self.click("#signin-btn").await;
        self.until(
            "through the device check",
            "yba.state.phase === 'check' && yba.state.check.camera === 'ok' \
             && yba.state.check.mic === 'ok' && yba.state.check.server === 'ok' \
             && yba.state.check.ice === 'ok' && !document.getElementById('join-btn').disabled",
            30,
        )
        .await;
        // The fake microphone beeps: the level meter hears it.
        self.until(
            "hearing the microphone",
            "yba.state.check.micPeak > 0.01",
            30,
        )
        .await;
        self.click("#speaker-test").await;
        self.until(
            "done with the speaker test",
            "yba.state.check.speaker === 'played'",
            10,
        )
        .await;
    }

    /// Inbound RTP counters of what this browser receives.
    async fn inbound(&self) -> Value {
        self.js(
            "return (async () => {
               const v = {videoPackets: 0, frames: 0, audioPackets: 0};
               if (!yba.pc) return v;
               (await yba.pc.getStats()).forEach(s => {
                 if (s.type !== 'inbound-rtp') return;
                 if (s.kind === 'video') { v.videoPackets += s.packetsReceived || 0; v.frames += s.framesDecoded || 0; }
                 if (s.kind === 'audio') v.audioPackets += s.packetsReceived || 0;
               });
               return v;
             })();",
        )
        .await
    }

    /// Frames this browser's camera encoder produced.
    async fn frames_sent(&self) -> u64 {
        self.js("return (async () => {
               let n = 0;
               (await yba.pc.getStats()).forEach(s => {
                 if (s.type === 'outbound-rtp' && s.kind === 'video') n += s.framesEncoded || 0;
               });
               return n;
             })();")
            .await
            .as_u64()
            .unwrap_or(0)
    }

    /// The other side's video plays here: a sized picture, and packets and decoded frames that
    /// keep coming.
    async fn sees_video(&self) {
        self.until(
            "showing the other's video",
            "(() => { const v = document.querySelector('#tiles .tile.remote video'); \
             return v && v.videoWidth > 0 && v.readyState >= 2 \
             && getComputedStyle(v).display !== 'none'; })()",
            60,
        )
        .await;
        let before = self.inbound().await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let after = self.inbound().await;
        for key in ["videoPackets", "frames", "audioPackets"] {
            if after[key].as_u64() <= before[key].as_u64() {
                let state = self
                    .js("return JSON.stringify({quality: yba.state.videoQuality, \
                         notice: document.getElementById('notice').textContent})")
                    .await;
                panic!(
                    "{}: {key} did not rise: {before} then {after}; the page: {state}",
                    self.who
                );
            }
        }
    }

    async fn close(self) {
        let _ = self.client.close().await;
    }
}

const DOCTOR: &str = "Practitioner/dr-an";
const STATION: &str = "Practitioner/yt-binh";

async fn a_doctor_and_a_station_hold_a_video_call_in_two_browsers(app: TestApp) {
    let Some((chromium, chromedriver)) = browser_tools() else {
        return;
    };
    station_world(&app).await;
    let dr = user_token(&app, "dr.an").await;
    let id = held_consultation(&app, &dr).await;
    let url = format!("http://{}/consult/{id}", app.addr);

    let mut driver = Driver::start(&chromedriver);
    let doctor = Page {
        who: "the doctor",
        client: driver.browser(&chromium).await,
    };
    let station = Page {
        who: "the station",
        client: driver.browser(&chromium).await,
    };
    doctor.client.goto(&url).await.expect("the page opens");
    station.client.goto(&url).await.expect("the page opens");

    // Vietnamese first; the station's worker reads it in English.
    doctor
        .until(
            "in Vietnamese",
            "document.documentElement.lang === 'vi'",
            30,
        )
        .await;
    assert_eq!(doctor.text("#signin-btn").await, "Đăng nhập");
    station
        .until("loaded", "yba.state.phase === 'signin'", 30)
        .await;
    station.click("#lang-btn").await;
    assert_eq!(station.text("#signin-btn").await, "Sign in");

    doctor.sign_in_and_check("dr.an").await;
    station.sign_in_and_check("yt.binh").await;

    // The doctor enters at once; the station waits until admitted.
    doctor.click("#join-btn").await;
    doctor
        .until(
            "in the call",
            "yba.state.phase === 'call' && yba.state.role === 'moderator' \
             && !document.getElementById('end-btn').hidden",
            30,
        )
        .await;
    station.click("#join-btn").await;
    station
        .until(
            "in the waiting room",
            "yba.state.phase === 'waiting' && !document.getElementById('screen-waiting').hidden",
            30,
        )
        .await;
    let admit = format!("[data-admit={}]", json!(STATION));
    doctor
        .until(
            "shown the station waiting",
            &format!("document.querySelector({})", json!(admit)),
            30,
        )
        .await;
    // Waiting means no media: nothing is negotiated before the doctor says so.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(station.js("return yba.state.phase").await, "waiting");
    assert_eq!(station.js("return yba.pc === null").await, true);
    doctor.click(&admit).await;
    station
        .until("admitted into the call", "yba.state.phase === 'call'", 30)
        .await;
    doctor
        .until(
            "no longer shown the station waiting",
            &format!("!document.querySelector({})", json!(admit)),
            30,
        )
        .await;

    // Each sees the other.
    doctor.sees_video().await;
    station.sees_video().await;
    doctor
        .until(
            "showing the station's tile",
            &format!(
                "document.querySelector({})",
                json!(format!(".tile.remote[data-participant={}]", json!(STATION)))
            ),
            10,
        )
        .await;

    // Connection quality, measured from getStats.
    for page in [&doctor, &station] {
        page.until(
            "rating the connection",
            "yba.state.quality && ['good', 'fair', 'poor'].includes(yba.state.quality.level) \
             && typeof yba.state.quality.rtt === 'number' \
             && !document.getElementById('quality').hidden \
             && document.getElementById('quality').textContent.length > 0",
            30,
        )
        .await;
    }

    // Muting reaches the other side, both ways.
    station.click("#mute-btn").await;
    doctor
        .until(
            "told the station muted its microphone",
            &format!(
                "yba.state.participants[{0}].audioMuted === true \
                 && document.querySelector('.tile.remote').classList.contains('audio-muted')",
                json!(STATION)
            ),
            30,
        )
        .await;
    assert_eq!(
        station
            .js("return document.getElementById('mute-btn').getAttribute('aria-pressed')")
            .await,
        "true"
    );
    station.click("#mute-btn").await;
    doctor
        .until(
            "told the station unmuted",
            &format!(
                "yba.state.participants[{}].audioMuted === false",
                json!(STATION)
            ),
            30,
        )
        .await;
    doctor.click("#camera-btn").await;
    station
        .until(
            "told the doctor's camera is off",
            &format!(
                "yba.state.participants[{}].videoMuted === true",
                json!(DOCTOR)
            ),
            30,
        )
        .await;
    doctor.click("#camera-btn").await;
    station
        .until(
            "told the doctor's camera is on",
            &format!(
                "yba.state.participants[{}].videoMuted === false",
                json!(DOCTOR)
            ),
            30,
        )
        .await;

    // Audio only: the station stops sending and showing video, and the relay stops sending it
    // the doctor's (`quality` off: the link's bandwidth goes to the sound); sound goes on.
    station.click("#audio-only").await;
    doctor
        .until(
            "told the station's video is off",
            &format!(
                "yba.state.participants[{}].videoMuted === true",
                json!(STATION)
            ),
            30,
        )
        .await;
    station
        .until(
            "hiding the doctor's video",
            "getComputedStyle(document.querySelector('#tiles .tile.remote video')).display === 'none'",
            10,
        )
        .await;
    station
        .until(
            "told by the relay it gets no video",
            "yba.state.videoQuality === 'off'",
            10,
        )
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let sent = station.frames_sent().await;
    let heard = station.inbound().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        station.frames_sent().await,
        sent,
        "the station still encodes video"
    );
    let heard_later = station.inbound().await;
    assert!(
        heard_later["audioPackets"].as_u64() > heard["audioPackets"].as_u64(),
        "sound stopped in audio-only mode: {heard} then {heard_later}"
    );
    assert_eq!(
        heard_later["videoPackets"], heard["videoPackets"],
        "the relay still sends video to an audio-only station"
    );
    assert_eq!(station.js("return yba.state.phase").await, "call");
    assert_eq!(
        station
            .js("return [yba.state.errors, document.getElementById('error').hidden]")
            .await,
        json!([[], true]),
        "the station was shown an error"
    );
    station.click("#audio-only").await;
    doctor
        .until(
            "told the station's video is back",
            &format!(
                "yba.state.participants[{}].videoMuted === false",
                json!(STATION)
            ),
            30,
        )
        .await;
    doctor.sees_video().await;
    station.sees_video().await;

    // A dropped socket is resumed: a new one, the same peer connection, restarted ICE, and
    // the pictures go on.
    let answered = station.js("return yba.state.answered").await;
    station.js("yba.ws.close(); return null;").await;
    station
        .until(
            "resumed after its socket dropped",
            &format!(
                "yba.state.resumes === 1 && yba.state.phase === 'call' \
                 && yba.state.answered > {answered} && yba.ws.readyState === WebSocket.OPEN"
            ),
            30,
        )
        .await;
    station.sees_video().await;
    doctor.sees_video().await;

    // The page keeps its socket alive.
    doctor
        .until("answered a heartbeat", "yba.state.pongs > 0", 30)
        .await;

    // The doctor ends the call for everyone.
    doctor.click("#end-btn").await;
    for page in [&doctor, &station] {
        page.until(
            "shown the call ended",
            "yba.state.phase === 'ended' && !document.getElementById('screen-ended').hidden \
             && yba.pc === null && document.getElementById('quality').hidden",
            30,
        )
        .await;
    }
    assert_eq!(
        station.text("#ended-reason").await,
        "The doctor ended the call."
    );
    assert_eq!(
        doctor.text("#ended-reason").await,
        "Bác sĩ đã kết thúc cuộc gọi."
    );

    doctor.close().await;
    station.close().await;
    drop(driver);
}
