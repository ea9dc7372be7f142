//! Node probes: how the managers make sure a node whose heartbeats stopped is
//! really gone before they declare it down, directly and through other nodes,
//! so that a busy CPU or a broken path to the leader alone never does.
//!
//! A probe is a UDP datagram to the node's advertise address (the manager port
//! number, on UDP): `MAGIC`, a nonce and the node id. The node's responder
//! answers with `MAGIC`, the nonce and an HMAC-SHA256 of both under the key it
//! gave the managers in its hello, so only that node, alive, can answer.
//! A host that is up but has no responder answers with ICMP port unreachable,
//! which the prober sees as `Refused` at once.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rand::RngCore;

const MAGIC: &[u8; 8] = b"SHOALPR1";
const NONCE: usize = 16;
const MAC: usize = 16;
/// How often a probe is sent again while no answer came.
const RESEND: Duration = Duration::from_millis(200);

/// What a probe saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The node answered with the right MAC.
    Alive,
    /// The host said nothing listens there: the node's daemon is gone.
    Refused,
    /// No answer within the time.
    Timeout,
    /// The probe could not be sent (bad address, no route).
    Error,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Alive => "alive",
            Outcome::Refused => "refused",
            Outcome::Timeout => "timeout",
            Outcome::Error => "error",
        }
    }

    pub fn parse(s: &str) -> Outcome {
        match s {
            "alive" => Outcome::Alive,
            "refused" => Outcome::Refused,
            "timeout" => Outcome::Timeout,
            _ => Outcome::Error,
        }
    }
}

/// A fresh random key for a node's responder.
pub fn new_key() -> Vec<u8> {
    let mut k = vec![0u8; 32];
    rand::rng().fill_bytes(&mut k);
    k
}

fn mac(key: &[u8], nonce: &[u8], node_id: &str) -> [u8; MAC] {
    let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    let mut ctx = ring::hmac::Context::with_key(&k);
    ctx.update(nonce);
    ctx.update(node_id.as_bytes());
    let tag = ctx.sign();
    let mut out = [0u8; MAC];
    out.copy_from_slice(&tag.as_ref()[..MAC]);
    out
}

/// The datagram that probes `node_id`.
pub fn request(nonce: &[u8; NONCE], node_id: &str) -> Vec<u8> {
    let mut d = Vec::with_capacity(MAGIC.len() + NONCE + node_id.len());
    d.extend_from_slice(MAGIC);
    d.extend_from_slice(nonce);
    d.extend_from_slice(node_id.as_bytes());
    d
}

/// The responder's answer to a datagram, or None when it is not a probe of this node.
pub fn answer(key: &[u8], node_id: &str, datagram: &[u8]) -> Option<Vec<u8>> {
    let rest = datagram.strip_prefix(MAGIC.as_slice())?;
    if rest.len() != NONCE + node_id.len() || &rest[NONCE..] != node_id.as_bytes() {
        return None;
    }
    let nonce = &rest[..NONCE];
    let mut d = Vec::with_capacity(MAGIC.len() + NONCE + MAC);
    d.extend_from_slice(MAGIC);
    d.extend_from_slice(nonce);
    d.extend_from_slice(&mac(key, nonce, node_id));
    Some(d)
}

/// Whether `reply` is the node's answer to the probe with `nonce`.
pub fn verify(key: &[u8], node_id: &str, nonce: &[u8; NONCE], reply: &[u8]) -> bool {
    let Some(rest) = reply.strip_prefix(MAGIC.as_slice()) else { return false };
    rest.len() == NONCE + MAC
        && rest[..NONCE] == nonce[..]
        && rest[NONCE..].iter().zip(mac(key, nonce, node_id)).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

/// Probes `node_id` at `addr` (`ip:port`) until it answers, refuses, or `timeout` passes.
pub async fn probe(addr: &str, node_id: &str, key: &[u8], timeout: Duration) -> Outcome {
    let Ok(target) = addr.parse::<SocketAddr>() else { return Outcome::Error };
    let local: SocketAddr =
        if target.is_ipv4() { "0.0.0.0:0".parse().unwrap_or(target) } else { "[::]:0".parse().unwrap_or(target) };
    let Ok(sock) = tokio::net::UdpSocket::bind(local).await else { return Outcome::Error };
    if sock.connect(target).await.is_err() {
        return Outcome::Error;
    }
    let mut nonce = [0u8; NONCE];
    rand::rng().fill_bytes(&mut nonce);
    let req = request(&nonce, node_id);
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf = [0u8; 128];
    loop {
        match sock.send(&req).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return Outcome::Refused,
            Err(_) => return Outcome::Error,
        }
        let wait = RESEND.min(deadline.saturating_duration_since(tokio::time::Instant::now()));
        let until = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(until, sock.recv(&mut buf)).await {
                Err(_) => break,
                Ok(Ok(n)) if verify(key, node_id, &nonce, &buf[..n]) => return Outcome::Alive,
                Ok(Ok(_)) => continue, // a stale or foreign answer
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => return Outcome::Refused,
                Ok(Err(_)) => return Outcome::Error,
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Outcome::Timeout;
        }
    }
}

/// Answers probes of this node on a thread of its own (so a busy async
/// runtime does not delay it), until dropped.
pub struct Responder {
    stop: Arc<AtomicBool>,
    addr: SocketAddr,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Responder {
    pub fn start(bind: SocketAddr, node_id: String, key: Vec<u8>) -> std::io::Result<Responder> {
        let sock = UdpSocket::bind(bind)?;
        sock.set_read_timeout(Some(Duration::from_millis(200)))?;
        let addr = sock.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new().name("probe-responder".into()).spawn(move || {
            let mut buf = [0u8; 512];
            while !flag.load(Ordering::Relaxed) {
                let Ok((n, from)) = sock.recv_from(&mut buf) else { continue };
                if let Some(reply) = answer(&key, &node_id, &buf[..n]) {
                    let _ = sock.send_to(&reply, from);
                }
            }
        })?;
        Ok(Responder { stop, addr, thread: Some(thread) })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Within one read timeout the socket is closed, so the port can be bound again.
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_node_with_the_key_answers_its_own_probes() {
        let key = new_key();
        let nonce = [7u8; NONCE];
        let req = request(&nonce, "node-a");
        let reply = answer(&key, "node-a", &req).expect("a probe of this node");
        assert!(verify(&key, "node-a", &nonce, &reply));
        assert!(!verify(&new_key(), "node-a", &nonce, &reply), "another key");
        assert!(!verify(&key, "node-a", &[8u8; NONCE], &reply), "another nonce");
        assert!(!verify(&key, "node-b", &nonce, &reply), "another node");
        assert!(answer(&key, "node-b", &req).is_none(), "a probe of another node is not answered");
        assert!(answer(&key, "node-a", b"SHOALPR1short").is_none());
        assert!(answer(&key, "node-a", b"garbage").is_none());
    }

    #[tokio::test]
    async fn probes_see_alive_refused_and_timeout() {
        let key = new_key();
        let r = Responder::start("127.0.0.1:0".parse().unwrap(), "n1".into(), key.clone()).unwrap();
        let addr = r.local_addr().to_string();
        let t = Duration::from_secs(2);
        assert_eq!(probe(&addr, "n1", &key, t).await, Outcome::Alive);
        assert_eq!(
            probe(&addr, "n1", &new_key(), Duration::from_millis(300)).await,
            Outcome::Timeout,
            "a wrong key never passes"
        );
        drop(r);
        // The responder's socket is closed once it is dropped: loopback refuses at once.
        assert_eq!(probe(&addr, "n1", &key, t).await, Outcome::Refused);
        assert_eq!(probe("not an address", "n1", &key, t).await, Outcome::Error);
    }
}
