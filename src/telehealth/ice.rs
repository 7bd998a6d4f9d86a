//! How participants reach the media relay: the server's host candidates (an address, a UDP
//! port range, a public address behind 1:1 NAT) and the STUN/TURN servers handed to clients,
//! with TURN credentials minted per join (coturn's shared-secret scheme, `use-auth-secret`).

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;

use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};

/// Where and how the relay listens.
#[derive(Debug, Clone)]
pub struct IceSettings {
    /// The interface address of host candidates (`0.0.0.0`: every interface).
    pub ip: IpAddr,
    /// UDP ports to take one from per participant; None: ephemeral.
    pub ports: Option<(u16, u16)>,
    /// Media over TCP too (ICE-TCP, passive candidates on the same port numbers).
    pub tcp: bool,
    /// Advertised instead of the private address (1:1 NAT).
    pub public_ip: Option<IpAddr>,
    /// STUN/TURN URLs for clients.
    pub servers: Vec<String>,
    /// coturn's `static-auth-secret`.
    pub turn_secret: Option<String>,
}

impl IceSettings {
    /// The `iceServers` a participant gets in `joined`: STUN as they are, TURN with credentials
    /// valid for `valid_secs` (username `expiry:participant`, credential
    /// base64(HMAC-SHA1(secret, username)), as coturn checks them).
    pub fn servers_for(&self, participant: &str, now_secs: u64, valid_secs: u64) -> Value {
        let (stun, turn): (Vec<&String>, Vec<&String>) =
            self.servers.iter().partition(|u| u.starts_with("stun"));
        let mut out = Vec::new();
        if !stun.is_empty() {
            out.push(json!({"urls": stun}));
        }
        if !turn.is_empty() {
            match &self.turn_secret {
                Some(secret) => {
                    let username = format!("{}:{participant}", now_secs + valid_secs);
                    out.push(json!({"urls": turn, "username": username,
                        "credential": turn_credential(secret, &username)}));
                }
                None => out.push(json!({"urls": turn})),
            }
        }
        Value::Array(out)
    }
}

/// coturn's TURN REST credential for `username`.
pub fn turn_credential(secret: &str, username: &str) -> String {
    // HMAC takes keys of any length: `new_from_slice` cannot fail for it.
    let mut mac = <Hmac<sha1::Sha1> as Mac>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    mac.update(username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// The relay's UDP ports: one per participant, from the configured range (or ephemeral).
#[derive(Debug)]
pub struct Ports {
    range: Option<(u16, u16)>,
    taken: Mutex<(HashSet<u16>, u16)>,
}

impl Ports {
    pub fn new(range: Option<(u16, u16)>) -> Ports {
        Ports {
            range,
            taken: Mutex::new((HashSet::new(), range.map_or(0, |r| r.0))),
        }
    }

    /// Candidate ports to bind, in the order to try them (the next free ones in the range,
    /// round robin; `[0]` for ephemeral). Each is marked taken: give back the unused ones.
    pub fn offer(&self, ip: IpAddr, tries: usize) -> Vec<SocketAddr> {
        let Some((lo, hi)) = self.range else {
            return vec![SocketAddr::new(ip, 0)];
        };
        let mut g = self.taken.lock().unwrap_or_else(|e| e.into_inner());
        let span = usize::from(hi - lo) + 1;
        let mut out = Vec::new();
        let mut port = g.1;
        for _ in 0..span {
            if out.len() == tries {
                break;
            }
            if !g.0.contains(&port) {
                g.0.insert(port);
                out.push(SocketAddr::new(ip, port));
            }
            port = if port >= hi { lo } else { port + 1 };
        }
        g.1 = port;
        out
    }

    /// Gives a port back.
    pub fn release(&self, port: u16) {
        if self.range.is_some() {
            self.taken
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .0
                .remove(&port);
        }
    }

    /// Ports in use.
    pub fn in_use(&self) -> usize {
        self.taken.lock().unwrap_or_else(|e| e.into_inner()).0.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turn_credentials_are_cotturns() {
        // coturn's documented example: secret "north", username "1433453422:ninefingers".
        let c = turn_credential("north", "1433453422:ninefingers");
        assert_eq!(c.len(), 28);
        let s = IceSettings {
            ip: IpAddr::from([127, 0, 0, 1]),
            ports: None,
            tcp: false,
            public_ip: None,
            servers: vec!["stun:s:3478".into(), "turn:t:3478?transport=udp".into()],
            turn_secret: Some("north".into()),
        };
        let v = s.servers_for("Patient/p", 1000, 600);
        assert_eq!(v[0]["urls"][0], "stun:s:3478");
        assert_eq!(v[1]["username"], "1600:Patient/p");
        assert_eq!(
            v[1]["credential"],
            turn_credential("north", "1600:Patient/p")
        );
    }

    #[test]
    fn ports_come_from_the_range_and_go_back() {
        let p = Ports::new(Some((5000, 5002)));
        let ip = IpAddr::from([127, 0, 0, 1]);
        let a = p.offer(ip, 2);
        assert_eq!(
            a.iter().map(SocketAddr::port).collect::<Vec<_>>(),
            [5000, 5001]
        );
        assert_eq!(p.offer(ip, 2).len(), 1);
        assert!(p.offer(ip, 1).is_empty());
        p.release(5001);
        assert_eq!(p.offer(ip, 1)[0].port(), 5001);
        assert_eq!(p.in_use(), 3);
        assert_eq!(Ports::new(None).offer(ip, 3)[0].port(), 0);
    }
}
