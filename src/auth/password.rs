//! Passwords: argon2id hashes in PHC form (`$argon2id$v=19$m=19456,t=2,p=1$salt$hash`), the
//! parameters OWASP's Password Storage Cheat Sheet gives for argon2id (19 MiB of memory, two
//! passes, one lane; their cost on this server's machine is in BENCHMARKS.md), and the rules a
//! new password must meet (NIST SP 800-63B §5.1.1.2: length over composition, no known-bad
//! passwords, nothing derived from the account's own name).
//!
//! Verification costs the same whether or not the account exists: an unknown account is checked
//! against a dummy hash of the same parameters, so neither the answer nor its timing tells a
//! caller which accounts exist.

use std::sync::OnceLock;

use argon2::password_hash::PasswordHasher;
use argon2::password_hash::phc::Output;
use argon2::{Algorithm, Argon2, Block, Params, PasswordHash, Version};

/// OWASP's argon2id configuration: m = 19 MiB, t = 2, p = 1.
pub const MEMORY_KIB: u32 = 19 * 1024;
pub const PASSES: u32 = 2;
pub const LANES: u32 = 1;

/// Shortest and longest password accepted (NIST SP 800-63B: at least 8; we ask 10, since health
/// records are at stake; at least 64 must be allowed).
pub const MIN_LEN: usize = 10;
pub const MAX_LEN: usize = 128;

fn argon2() -> Argon2<'static> {
    // The constants are valid argon2 parameters; `Params::new` fails only outside its ranges.
    let params = Params::new(MEMORY_KIB, PASSES, LANES, None).unwrap_or(Params::DEFAULT);
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// Hashes a password with a fresh random salt.
pub fn hash(password: &str) -> Result<String, String> {
    argon2()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| format!("cannot hash the password: {e}"))
}

/// Whether `password` is the one `stored` was made from. `None` (no such account) is checked
/// against a dummy hash and is never a match, at the same cost as a real check.
pub fn verify(stored: Option<&str>, password: &str) -> bool {
    verify_in(stored, password, &mut Vec::new())
}

/// [`verify`] with the 19 MiB of argon2 working memory in `blocks`, grown as needed and kept
/// by the caller for the next check.
fn verify_in(stored: Option<&str>, password: &str, blocks: &mut Vec<Block>) -> bool {
    static DUMMY: OnceLock<String> = OnceLock::new();
    match stored {
        Some(h) => matches(h, password.as_bytes(), blocks),
        None => {
            let dummy = DUMMY.get_or_init(|| hash("not a password of anyone").unwrap_or_default());
            let _ = matches(dummy, password.as_bytes(), blocks);
            false
        }
    }
}

/// Recomputes a PHC argon2 hash's output for `password` with its own algorithm, version,
/// parameters and salt, and compares the two in constant time (`Output`'s equality).
fn matches(stored: &str, password: &[u8], blocks: &mut Vec<Block>) -> bool {
    let Ok(h) = PasswordHash::new(stored) else {
        return false;
    };
    let (Some(salt), Some(expected)) = (&h.salt, &h.hash) else {
        return false;
    };
    let (Ok(params), Ok(algorithm)) = (
        Params::try_from(&h),
        Algorithm::try_from(h.algorithm.as_str()),
    ) else {
        return false;
    };
    let version = match h.version.map(Version::try_from).transpose() {
        Ok(v) => v.unwrap_or_default(),
        Err(_) => return false,
    };
    let need = params.block_count();
    if blocks.len() < need {
        blocks.resize(need, Block::default());
    }
    let mut buffer = [0u8; Output::MAX_LENGTH];
    let Some(out) = buffer.get_mut(..expected.len()) else {
        return false;
    };
    Argon2::new(algorithm, version, params)
        .hash_password_into_with_memory(password, salt.as_ref(), out, &mut blocks[..need])
        .is_ok()
        && Output::new(out).is_ok_and(|o| o == *expected)
}

/// [`verify`] on the password threads, for async callers.
///
/// Password checks run on a few threads of their own (one per core), never on the HTTP workers
/// nor tokio's blocking pool, and each of those threads keeps its 19 MiB of argon2 working
/// memory from one check to the next. Allocated afresh per check on a pool of hundreds of
/// threads, that memory came to half a gigabyte held after a burst of sign-ins; on the fixed
/// few it is a fixed 19 MiB each, and a flood of sign-ins cannot take more than those threads
/// (BENCHMARKS.md).
pub async fn verify_async(stored: Option<String>, password: String) -> bool {
    thread_local! {
        static BLOCKS: std::cell::RefCell<Vec<Block>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    let job: Job = Box::new(move || {
        let ok = BLOCKS.with(|b| verify_in(stored.as_deref(), &password, &mut b.borrow_mut()));
        let _ = tx.send(ok);
    });
    if workers().send(job).is_err() {
        return false;
    }
    rx.await.unwrap_or(false)
}

type Job = Box<dyn FnOnce() + Send>;

fn workers() -> &'static std::sync::mpsc::Sender<Job> {
    static POOL: OnceLock<std::sync::mpsc::Sender<Job>> = OnceLock::new();
    POOL.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let rx = std::sync::Arc::new(std::sync::Mutex::new(rx));
        let n = std::thread::available_parallelism().map_or(2, usize::from);
        for i in 0..n {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("yba-password-{i}"))
                .spawn(move || {
                    loop {
                        let job = match rx.lock() {
                            Ok(r) => r.recv(),
                            Err(e) => e.into_inner().recv(),
                        };
                        match job {
                            Ok(job) => job(),
                            Err(_) => return,
                        }
                    }
                });
            if let Err(e) = spawned {
                tracing::error!("a password thread cannot start: {e}");
            }
        }
        tx
    })
}

/// Passwords people choose most (the head of the public breach lists); a password containing
/// one of them outright is refused.
const COMMON: &[&str] = &[
    "123456", "password", "12345678", "qwerty", "abc123", "111111", "iloveyou", "admin", "welcome",
    "matkhau", "123123", "000000", "letmein", "football", "monkey", "dragon",
];

/// Checks a new password for the account `username` (for a patient, their citizen ID).
pub fn check_rules(password: &str, username: &str) -> Result<(), String> {
    let n = password.chars().count();
    if n < MIN_LEN {
        return Err(format!("a password has at least {MIN_LEN} characters"));
    }
    if n > MAX_LEN {
        return Err(format!("a password has at most {MAX_LEN} characters"));
    }
    let lower = password.to_lowercase();
    let mut chars = lower.chars();
    if let Some(first) = chars.next()
        && chars.all(|c| c == first)
    {
        return Err("a password is not one character repeated".into());
    }
    if !username.is_empty() && lower.contains(&username.to_lowercase()) {
        return Err("a password does not contain the account's name or citizen ID".into());
    }
    // Sequential digits or letters only (1234567890, abcdefghij; 0 follows 9 on keyboards).
    let bytes = lower.as_bytes();
    if bytes
        .windows(2)
        .all(|w| w[1] == w[0].wrapping_add(1) || (w[0] == b'9' && w[1] == b'0'))
    {
        return Err("a password is not a run of consecutive characters".into());
    }
    if let Some(c) = COMMON
        .iter()
        .find(|c| lower == **c || (c.len() >= 6 && lower.starts_with(**c) && n < c.len() + 4))
    {
        return Err(format!(
            "'{c}' is among the passwords people choose most; choose another"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_argon2id_with_owasp_parameters_and_verify() {
        let h = hash("Trạm y tế xã 2026!").expect("hashes");
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        assert!(verify(Some(&h), "Trạm y tế xã 2026!"));
        assert!(!verify(Some(&h), "Trạm y tế xã 2026"));
        // Salted: the same password hashes differently.
        assert_ne!(h, hash("Trạm y tế xã 2026!").expect("hashes"));
        // No account, or a stored value that is not a hash: never a match.
        assert!(!verify(None, "Trạm y tế xã 2026!"));
        assert!(!verify(Some("plain text"), "plain text"));
    }

    #[test]
    fn a_hash_is_checked_with_its_own_parameters_and_kept_memory() {
        // Made elsewhere with other parameters (an older policy): still verifies.
        let params = Params::new(8 * 1024, 1, 1, None).expect("params");
        let other = Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password(b"Bac si tram xa 01")
            .expect("hashes")
            .to_string();
        let mut blocks = Vec::new();
        assert!(verify_in(Some(&other), "Bac si tram xa 01", &mut blocks));
        assert_eq!(blocks.len(), 8 * 1024);
        // The memory is reused, and grows for a costlier hash.
        let ours = hash("Bac si tram xa 01").expect("hashes");
        assert!(!verify_in(Some(&ours), "Bac si tram xa 02", &mut blocks));
        assert!(verify_in(Some(&ours), "Bac si tram xa 01", &mut blocks));
        assert_eq!(blocks.len(), MEMORY_KIB as usize);
        assert!(verify_in(Some(&other), "Bac si tram xa 01", &mut blocks));
        // argon2i and argon2d hashes are checked as what they are.
        for alg in [Algorithm::Argon2i, Algorithm::Argon2d] {
            let h = Argon2::new(
                alg,
                Version::V0x13,
                Params::new(1024, 1, 1, None).expect("params"),
            )
            .hash_password(b"x1y2z3w4v5")
            .expect("hashes")
            .to_string();
            assert!(verify(Some(&h), "x1y2z3w4v5"), "{h}");
            assert!(!verify(Some(&h), "x1y2z3w4v6"), "{h}");
        }
    }

    #[test]
    fn password_rules() {
        for ok in ["mùa thu Hà Nội 1990", "correct horse battery", "Xk8#pQ2$wL"] {
            assert_eq!(check_rules(ok, "001090000001"), Ok(()), "{ok}");
        }
        for (bad, why) in [
            ("short1!", "at least"),
            ("aaaaaaaaaaaa", "repeated"),
            ("pw001090000001", "citizen ID"),
            ("password1!", "choose most"),
            ("1234567890", "consecutive"),
            ("abcdefghijk", "consecutive"),
        ] {
            let e = check_rules(bad, "001090000001").expect_err(bad);
            assert!(e.contains(why), "{bad}: {e}");
        }
        assert!(check_rules(&"x1".repeat(65), "u").is_err());
    }
}
