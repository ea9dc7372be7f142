//! The encrypted overlay's datapath (design note §5): WireGuard in
//! userspace through boringtun's `noise` module, a TUN per encrypted
//! network (`wg0` in its sandbox, routed: the planner adds a `/32` per
//! remote endpoint), one UDP port per host, one session set per peer
//! *node* shared by all encrypted networks.
//!
//! Rules (each has a test):
//! * A decrypted packet reaches a TUN only if its source is one of the
//!   sending peer's endpoints on the network of its destination, which must
//!   be one of this host's (`routes`); anything else is dropped and counted.
//! * There is no plaintext path: the only writes to a TUN are packets that
//!   authenticated against a configured peer's static key. No VXLAN device,
//!   no plaintext socket. netd down ⇒ the TUN is unread ⇒ traffic stops.
//! * A responder finds the initiator's key with `parse_handshake_anon`
//!   under the local key whose `mac1` the initiation carries (current, or the
//!   previous one during a rotation; a cookie first when under load) and
//!   refuses keys no configured peer has: removing a peer revokes it at once.
//! * The queues a network is read from are its sandbox's TUN now: a TUN
//!   deleted or a sandbox made again since they were opened is seen
//!   (`EBADFD`, or the sandbox path naming another namespace) and reopened by
//!   the next `configure`, even of the same configuration.
//!
//! Threads, not tasks: `workers` threads, each polling its own queue of
//! every network's TUN and its own UDP socket (`SO_REUSEPORT` on one port,
//! `UDP_GRO` with offloads: a peer's segmented send, or datagrams the
//! kernel's GRO merged, arrive as one message, split here by its segment
//! size);
//! a timer thread drives each session's `update_timers` every 100 ms and
//! starts handshakes with peers that have no session. A `Tunn` is behind a
//! mutex of its own. The table (networks, peers, address maps) is rebuilt
//! whole by `configure`/`set_keys` and swapped; a worker takes the newest
//! (and remakes its epoll set) when the table's generation moved, and
//! allocates nothing per wake-up.
//!
//! Which worker takes a packet (`Steer`, netd's `--wg-steering`):
//! * `Cpu` (the default): a worker per CPU, pinned to it; programs on the
//!   socket group and on each TUN (`bpf`) hand a datagram or packet to the
//!   worker of the CPU that handles it, unless its flow is in motion (a
//!   packet within its gap before, `STEER_GAPS`), which keeps its socket or
//!   queue and so its order. A round trip's hand-offs then wake a thread
//!   on the CPU already running instead of another (on a VM, a halted
//!   vCPU: ~15–30 µs each, and cold caches). A worker busy more than half
//!   of a 50 ms window lets go of its CPU (`Pin`), so a stream's sending
//!   and its encryption can run on two; it takes it again when idle.
//!   Where the kernel refuses the programs, `Flow`.
//! * `Flow`: the kernel's flow hashes pick a TUN's queue and a datagram's
//!   socket (a peer host's datagrams hash to one socket, so a flow stays
//!   in order on one worker), min(cores, 4) workers that the scheduler
//!   places.
//!
//! Measured in the lab (2 vCPUs, 2026-12-06, alternated): ping through the
//! encrypted overlay 162–213 µs with `Cpu` against 400–447 with `Flow`
//! (3.5–3.8× the underlay against 8.0–8.6×); request/response alike
//! (47–67 µs against 56–59); one TCP stream 3.2–3.5 Gbit/s, as with
//! `Flow`, without retransmits. With a gap of 0.5 ms a stream paused longer
//! than that now and then (waiting for its window) and moved while packets
//! of it still waited: 2.2–2.8 Gbit/s and 4,000–6,000 retransmits a run;
//! with 5 ms, four streams still retransmitted (94–2,194) in about one 3 s
//! transfer in three, and with 20 ms for streams alone in 1 of 6 (188).
//!
//! Latency with `Flow`: a round trip wakes a worker on each host each way;
//! those wake-ups, not the worker's own work (~3 µs a packet), are the
//! cost. None of these moved the median (2026-12-05, alternated in one
//! run): `poll` or epoll, reading until `EAGAIN` or not, one worker pinned,
//! a lower nice, `SCHED_FIFO` (the tail from ms to ~0.2 ms but double the
//! median when quiet), a short adaptive poll after each hand-off (commits
//! ee26054..8e6f889 on branch s14-wg).
//!
//! Rotation: a peer has one `Tunn` per (local key, remote key) pair of the
//! keys in play (current, and previous during a grace period), kept across
//! rebuilds. Data goes over the most preferred pair with a session (current
//! keys first); the timer thread keeps handshaking the preferred one, so
//! the switch to new keys needs no gap.

pub mod bpf;
pub mod gro;
pub mod gso;
pub mod keys;
pub mod routes;
mod sys;
pub mod tun;

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant, SystemTime};

use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet, Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};

pub use keys::StaticKeys;
use routes::{Refusal, Routes};

/// How often the timer thread runs the sessions' timers.
const TICK: Duration = Duration::from_millis(100);
/// How often a peer without a session is sent a new handshake initiation.
const KICK_EVERY: Duration = Duration::from_secs(2);
/// The UDP socket's buffers (each way), forced past `rmem_max` where allowed.
const SOCKET_BUF: usize = 8 << 20;
/// Workers at most (one per CPU with `Steer::Cpu`).
const MAX_WORKERS: usize = 64;
/// How long a flow must pause before its packets may go to another queue or
/// socket: 5 ms, or 20 ms for a stream (its last two packets less than 1 ms
/// apart). A sparse exchange of one packet each way (a ping every 10 ms, on
/// a peer with no other traffic) still goes to its CPU's worker each time;
/// a stream waiting for its window does not move while packets of it still
/// wait (with 5 ms for all, four streams retransmitted now and then). A
/// request of several packets, or one beside a stream to the same peer
/// (whose datagrams share one slot), keeps the earlier choice for up to
/// 20 ms.
const STEER_GAPS: bpf::Gaps = bpf::Gaps { dense_ns: 1_000_000, sparse_ns: 5_000_000, stream_ns: 20_000_000 };
/// Messages taken per `recvmmsg` (each one datagram, or several with `UDP_GRO`).
const RX_BATCH: usize = 32;
/// Datagrams after which a worker takes no further batch from its socket in
/// a wake-up, but turns to its TUN queues.
const RX_WAKE: usize = 8 * RX_BATCH;
/// Largest packet read from a TUN (a 64 KiB super-packet and its header).
const TUN_BUF: usize = 65536 + gso::VNET_HDR_LEN;

pub struct DatapathConfig {
    /// The host's WireGuard address and port (port 0: any; see `Datapath::port`).
    pub listen: SocketAddrV4,
    /// Worker threads; 0 for `default_workers()` (`Flow`) or one per CPU this
    /// thread may run on, at most `MAX_WORKERS` (`Cpu`).
    pub workers: usize,
    /// Ask the TUNs for checksum and segmentation offloads (vnet headers), and
    /// the UDP sockets for `UDP_GRO`; without, one packet at a time.
    pub offload: bool,
    /// How packets are shared out among the workers.
    pub steer: Steer,
}

/// How a datapath shares packets out among its workers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Steer {
    /// The kernel's flow hashes pick a TUN's queue and a datagram's socket;
    /// the scheduler places the workers (`default_workers()` of them).
    Flow,
    /// A worker per CPU, pinned to it where the CPUs allowed are 0..n; a
    /// packet goes to the worker of the CPU it arrives on unless its flow is
    /// in motion (`bpf`), so a round trip's hand-offs stay on one CPU
    /// instead of waking another. A busy worker lets go of its CPU until it
    /// is idle again (`Pin`). Falls back to `Flow` where the kernel refuses
    /// the BPF programs.
    #[default]
    Cpu,
}

/// The CPUs this thread may run on.
pub fn allowed_cpus() -> Vec<usize> {
    cpus_in(&rustix::thread::sched_getaffinity(None).unwrap_or_default())
}

fn cpus_in(set: &rustix::thread::CpuSet) -> Vec<usize> {
    (0..rustix::thread::CpuSet::MAX_CPU).filter(|&c| set.is_set(c)).collect()
}

/// A worker's pin to its CPU (`Steer::Cpu`), let go while it is busy:
/// pinned, its wake-ups stay on the CPU that woke it; busy (a stream), it
/// may move where the scheduler finds room, its flows keeping their queues.
struct Pin {
    cpu: usize,
    /// The CPUs the worker may run on when not pinned.
    all: rustix::thread::CpuSet,
    pinned: bool,
    since: Instant,
    busy: Duration,
}

/// How often a worker weighs its pin.
const PIN_WINDOW: Duration = Duration::from_millis(50);

impl Pin {
    fn new(cpu: usize, all: rustix::thread::CpuSet) -> Pin {
        Pin { cpu, all, pinned: false, since: Instant::now(), busy: Duration::ZERO }
    }

    /// Pins the calling thread (at its start).
    fn start(&mut self) {
        let mut one = rustix::thread::CpuSet::new();
        one.set(self.cpu);
        self.set(true, &one);
    }

    fn set(&mut self, pinned: bool, cpus: &rustix::thread::CpuSet) {
        match rustix::thread::sched_setaffinity(None, cpus) {
            Ok(()) => self.pinned = pinned,
            Err(e) => tracing::debug!(error = %e, cpu = self.cpu, pinned, "wireguard: a worker's CPUs"),
        }
    }

    /// Counts `busy` (one wake-up's work); each window, a worker busy more
    /// than half of it lets go of its CPU, and one busy less than a
    /// quarter takes it again.
    fn account(&mut self, busy: Duration) {
        self.busy += busy;
        let window = self.since.elapsed();
        if window < PIN_WINDOW {
            return;
        }
        let load = self.busy.as_secs_f64() / window.as_secs_f64();
        if self.pinned && load > 0.5 {
            let all = self.all;
            self.set(false, &all);
        } else if !self.pinned && load < 0.25 {
            self.start();
        }
        (self.since, self.busy) = (Instant::now(), Duration::ZERO);
    }
}

/// min(cores, 4).
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get()).min(4)
}

/// An encrypted network on this host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WgNetwork {
    pub id: String,
    /// The sandbox's namespace file (where the TUN is).
    pub ns: PathBuf,
    /// The TUN's name in it (made by `tun::create_persistent`).
    pub tun: String,
    /// This host's endpoints on the network.
    pub local: Vec<Ipv4Addr>,
}

/// Another host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WgPeer {
    pub node: String,
    pub public: [u8; 32],
    /// Its previous key while its rotation's grace period runs.
    pub prev_public: Option<[u8; 32]>,
    /// Its data address and WireGuard port.
    pub endpoint: SocketAddrV4,
    /// Its endpoints: (network id, address).
    pub addrs: Vec<(String, Ipv4Addr)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerStats {
    pub node: String,
    pub endpoint: SocketAddrV4,
    /// When the newest session with it was made.
    pub last_handshake: Option<SystemTime>,
    /// Plaintext bytes sent to it and accepted from it.
    pub tx_bytes: u64,
    pub rx_bytes: u64,
    /// Decrypted packets from it dropped by the anti-spoof check.
    pub spoofed: u64,
}

/// Drops not charged to one peer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Dropped {
    /// Handshake initiations from keys no configured peer has (or under a
    /// key of this host it no longer holds).
    pub refused: u64,
    /// Datagrams that are not WireGuard messages of a live session.
    pub unknown: u64,
    /// Packets read from a TUN that no peer owns, or malformed.
    pub unroutable: u64,
}

/// The running datapath; `stop` (or drop) joins its threads and closes
/// its queues and sockets. The TUN devices persist.
pub struct Datapath {
    shared: Arc<Shared>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

struct Shared {
    table: RwLock<Arc<Table>>,
    /// Bumped after each new table: a worker takes the table (and remakes
    /// its epoll set) only when this moved, not at every wake-up.
    generation: AtomicU64,
    /// The last desired state (networks, peers, keys); held while a table is built.
    desired: Mutex<(Vec<WgNetwork>, Vec<WgPeer>, Arc<LocalKeys>)>,
    sockets: Vec<OwnedFd>,
    port: u16,
    workers: usize,
    /// The program that steers a TUN's packets to the queue of their CPU.
    steering: Option<OwnedFd>,
    offload: bool,
    stop: AtomicBool,
    next_index: AtomicU32,
    refused: AtomicU64,
    coalesced: AtomicU64,
    unknown: AtomicU64,
    unroutable: AtomicU64,
}

/// Handshake messages per second under one local key before initiators
/// must prove their address with a cookie (boringtun's device uses 100;
/// each message is counted twice here: at demux and in its `Tunn`).
const HANDSHAKE_LIMIT: u64 = 200;

/// One of this host's keys with the limiter that checks `mac1` (keyed by
/// its public half) before any Diffie-Hellman and asks for cookies under load.
struct LocalKey {
    secret: StaticSecret,
    public: PublicKey,
    limiter: Arc<RateLimiter>,
}

/// This host's keys, current first.
struct LocalKeys(Vec<LocalKey>);

impl LocalKeys {
    /// `k`'s keys; a key `old` had keeps its limiter.
    fn of(k: &StaticKeys, old: Option<&LocalKeys>) -> LocalKeys {
        let key = |secret: &StaticSecret| {
            let public = PublicKey::from(secret);
            let kept = old.and_then(|o| o.0.iter().find(|l| l.public == public)).map(|l| l.limiter.clone());
            let limiter = kept.unwrap_or_else(|| Arc::new(RateLimiter::new(&public, HANDSHAKE_LIMIT)));
            LocalKey { secret: secret.clone(), public, limiter }
        };
        LocalKeys(std::iter::once(&k.current).chain(k.prev.as_ref()).map(key).collect())
    }
}

/// One session set: a `Tunn` between one local and one remote static key.
struct Slot {
    local: [u8; 32],
    remote: [u8; 32],
    index: u32,
    tunn: Mutex<Tunn>,
}

/// Counters that outlive table rebuilds, per peer node.
#[derive(Default)]
struct Counters {
    tx: AtomicU64,
    rx: AtomicU64,
    spoofed: AtomicU64,
    last_kick: Mutex<Option<Instant>>,
}

struct Peer {
    node: String,
    endpoint: SocketAddrV4,
    /// In order of preference: current keys first.
    slots: Vec<Arc<Slot>>,
    /// The slot data goes over (set by the timer thread).
    tx_slot: AtomicUsize,
    counters: Arc<Counters>,
}

struct Net {
    id: String,
    ns: PathBuf,
    tun: String,
    /// One per worker.
    queues: Vec<OwnedFd>,
    /// Whether decrypted TCP segments are coalesced before their write
    /// (vnet headers on, and the kernel took TSO4).
    gro: bool,
    /// The namespace `ns` named when the queues were opened.
    ns_id: Option<(u64, u64)>,
    /// A worker read `EBADFD` from a queue: the TUN is gone.
    detached: AtomicBool,
}

impl Net {
    /// Whether the queues are no longer the sandbox's TUN: the device was
    /// deleted (a network removed and made again: its queues read `EBADFD`),
    /// or `ns` now names another namespace (the sandbox made again; these
    /// queues keep the old one, and its TUN, alive). `configure` reopens it.
    fn stale(&self) -> bool {
        self.detached.load(Ordering::Relaxed)
            || tun::namespace_id(&self.ns) != self.ns_id
            || self.queues.first().is_some_and(|q| !tun::attached(q.as_fd()))
    }
}

struct Table {
    keys: Arc<LocalKeys>,
    nets: Vec<Arc<Net>>,
    peers: Vec<Peer>,
    routes: Routes,
    /// Slot index (a session's receiver index >> 8) → (peer, slot).
    by_index: HashMap<u32, (usize, usize)>,
    /// A peer's public key (current or previous) → peer.
    by_key: HashMap<[u8; 32], usize>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Datapath {
    /// Binds the UDP port in the calling thread's namespace (the host's) and
    /// starts the workers and the timer thread, with no network and no peer.
    pub fn start(cfg: DatapathConfig, keys: StaticKeys) -> io::Result<Datapath> {
        let affinity = rustix::thread::sched_getaffinity(None).unwrap_or_default();
        let cpus = cpus_in(&affinity);
        // Loaded before the sockets are made: a kernel that refuses it gets `Flow` whole.
        let tun_program = match cfg.steer {
            Steer::Flow => None,
            Steer::Cpu => bpf::tun_program(STEER_GAPS)
                .inspect_err(|e| tracing::warn!(error = %e, "wireguard: cannot steer packets by CPU; the kernel's flow hashes will"))
                .ok(),
        };
        let workers = match (cfg.workers, tun_program.is_some()) {
            (0, false) => default_workers(),
            (0, true) => cpus.len().clamp(1, MAX_WORKERS),
            (n, _) => n,
        };
        let ctx = |e: io::Error| io::Error::new(e.kind(), format!("wireguard socket on {}: {e}", cfg.listen));
        let first = sys::udp_socket(cfg.listen, SOCKET_BUF, cfg.offload).map_err(ctx)?;
        let port = sys::local_port(first.as_fd()).map_err(ctx)?;
        if cfg.offload && !sys::udp_gro(first.as_fd()) {
            tracing::info!("wireguard: the kernel has no UDP_GRO; each datagram is received alone");
        }
        let mut sockets = vec![first];
        for _ in 1..workers {
            sockets.push(
                sys::udp_socket(SocketAddrV4::new(*cfg.listen.ip(), port), SOCKET_BUF, cfg.offload).map_err(ctx)?,
            );
        }
        // Nothing is attached unless all of it is: then the kernel's hashes pick among the sockets.
        let steering = tun_program.filter(|_| {
            let group: Vec<_> = sockets.iter().map(|s| s.as_fd()).collect();
            bpf::steer_sockets(&group, STEER_GAPS)
                .inspect_err(|e| tracing::warn!(error = %e, "wireguard: cannot steer datagrams by CPU; the kernel's hashes will"))
                .is_ok()
        });
        // Worker i serves CPU i's packets (the programs take the CPU modulo the workers).
        let pin = steering.is_some() && cpus.len() == workers && cpus.iter().enumerate().all(|(i, &c)| i == c);
        let keys = Arc::new(LocalKeys::of(&keys, None));
        let empty = Table {
            keys: keys.clone(),
            nets: Vec::new(),
            peers: Vec::new(),
            routes: Routes::default(),
            by_index: HashMap::new(),
            by_key: HashMap::new(),
        };
        let shared = Arc::new(Shared {
            table: RwLock::new(Arc::new(empty)),
            generation: AtomicU64::new(0),
            desired: Mutex::new((Vec::new(), Vec::new(), keys)),
            sockets,
            port,
            workers,
            steering,
            offload: cfg.offload,
            stop: AtomicBool::new(false),
            // A random start: a restarted datapath's indexes do not meet the old one's.
            next_index: AtomicU32::new(rand::random::<u32>() & 0x00ff_ffff),
            refused: AtomicU64::new(0),
            coalesced: AtomicU64::new(0),
            unknown: AtomicU64::new(0),
            unroutable: AtomicU64::new(0),
        });
        let mut threads = Vec::new();
        for w in 0..workers {
            let s = shared.clone();
            let pin = pin.then(|| Pin::new(w, affinity));
            threads.push(std::thread::Builder::new().name(format!("wg-worker-{w}")).spawn(move || worker(&s, w, pin))?);
        }
        let s = shared.clone();
        threads.push(std::thread::Builder::new().name("wg-timers".into()).spawn(move || timers(&s))?);
        Ok(Datapath { shared, threads })
    }

    /// The UDP port the datapath listens on.
    pub fn port(&self) -> u16 {
        self.shared.port
    }

    /// Whether packets are steered by CPU (`Steer::Cpu`, and the kernel took the programs).
    pub fn steered(&self) -> bool {
        self.shared.steering.is_some()
    }

    /// Makes `networks` and `peers` the datapath's whole configuration:
    /// queues of new networks opened, removed ones closed; new peers get
    /// sessions, removed peers lose theirs at once (revocation), changed
    /// ones keep the sessions whose keys did not change. A network whose
    /// queues cannot be opened is left out and named in the error; the rest
    /// is applied.
    pub fn configure(&self, networks: Vec<WgNetwork>, peers: Vec<WgPeer>) -> io::Result<()> {
        let mut desired = lock(&self.shared.desired);
        desired.0 = networks;
        desired.1 = peers;
        self.shared.rebuild(&desired)
    }

    /// New static keys (a rotation or the end of one): sessions under keys
    /// that stay are kept, new ones are handshaken beside them.
    pub fn set_keys(&self, keys: StaticKeys) {
        let mut desired = lock(&self.shared.desired);
        desired.2 = Arc::new(LocalKeys::of(&keys, Some(&desired.2)));
        // Queues of known networks are reused, so this opens nothing new.
        if let Err(e) = self.shared.rebuild(&desired) {
            tracing::warn!(error = %e, "wireguard: a network's queues");
        }
    }

    pub fn stats(&self) -> Vec<PeerStats> {
        let t = self.shared.table();
        t.peers
            .iter()
            .map(|p| PeerStats {
                node: p.node.clone(),
                endpoint: p.endpoint,
                last_handshake: p
                    .slots
                    .iter()
                    .filter_map(|s| lock(&s.tunn).time_since_last_handshake())
                    .min()
                    .and_then(|d| SystemTime::now().checked_sub(d)),
                tx_bytes: p.counters.tx.load(Ordering::Relaxed),
                rx_bytes: p.counters.rx.load(Ordering::Relaxed),
                spoofed: p.counters.spoofed.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// Datagrams that came several to a message (`UDP_GRO`).
    pub fn coalesced(&self) -> u64 {
        self.shared.coalesced.load(Ordering::Relaxed)
    }

    pub fn dropped(&self) -> Dropped {
        let s = &self.shared;
        Dropped {
            refused: s.refused.load(Ordering::Relaxed),
            unknown: s.unknown.load(Ordering::Relaxed),
            unroutable: s.unroutable.load(Ordering::Relaxed),
        }
    }

    /// The networks whose queues are not their sandbox's TUN any more (it
    /// was made again since they were opened): the next `configure`
    /// reopens them, even with the same configuration.
    pub fn stale_networks(&self) -> Vec<String> {
        self.shared.table().nets.iter().filter(|n| n.stale()).map(|n| n.id.clone()).collect()
    }

    /// Joins the threads and closes every queue and socket.
    pub fn stop(self) {}
}

impl Drop for Datapath {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Shared {
    fn table(&self) -> Arc<Table> {
        self.table.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn rebuild(&self, desired: &(Vec<WgNetwork>, Vec<WgPeer>, Arc<LocalKeys>)) -> io::Result<()> {
        let (networks, peers, keys) = desired;
        let old = self.table();
        let mut errors = Vec::new();
        let mut nets = Vec::new();
        let mut local = Vec::new();
        for n in networks {
            let known = old.nets.iter().find(|o| o.id == n.id && o.ns == n.ns && o.tun == n.tun);
            let reused = known.filter(|o| !o.stale()).cloned();
            if known.is_some() && reused.is_none() {
                tracing::info!(net.id = %n.id, tun = %n.tun, "wireguard: the network's TUN was made again: reopening");
            }
            // Taken before the open: a sandbox replaced in between reads as stale next time.
            let ns_id = tun::namespace_id(&n.ns);
            let net = match reused {
                Some(net) => net,
                None => match tun::open_queues(
                    &n.ns,
                    &n.tun,
                    self.workers,
                    self.offload,
                    self.steering.as_ref().map(|p| p.as_fd()),
                ) {
                    Ok((queues, offloads)) => {
                        tracing::info!(net.id = %n.id, tun = %n.tun, queues = queues.len(), offloads, "wireguard: network opened");
                        Arc::new(Net {
                            id: n.id.clone(),
                            ns: n.ns.clone(),
                            tun: n.tun.clone(),
                            queues,
                            gro: self.offload && offloads & tun::TSO4 != 0,
                            ns_id,
                            detached: AtomicBool::new(false),
                        })
                    }
                    Err(e) => {
                        errors.push(format!("network {}: {e}", n.id));
                        continue;
                    }
                },
            };
            nets.push(net);
            local.push(n.local.clone());
        }
        let net_index: HashMap<&str, usize> = nets.iter().enumerate().map(|(i, n)| (n.id.as_str(), i)).collect();
        let mut table_peers = Vec::new();
        let mut remote = Vec::new();
        let mut by_index = HashMap::new();
        let mut by_key = HashMap::new();
        for p in peers {
            let before = old.peers.iter().find(|o| o.node == p.node);
            let mut slots = Vec::new();
            for key in &keys.0 {
                for r in std::iter::once(p.public).chain(p.prev_public) {
                    let l = key.public.to_bytes();
                    let kept = before.and_then(|b| b.slots.iter().find(|s| s.local == l && s.remote == r)).cloned();
                    let slot = kept.unwrap_or_else(|| {
                        let index = self.next_index.fetch_add(1, Ordering::Relaxed) & 0x00ff_ffff;
                        let limiter = Some(key.limiter.clone());
                        let tunn = Tunn::new(key.secret.clone(), PublicKey::from(r), None, None, index, limiter);
                        Arc::new(Slot { local: l, remote: r, index, tunn: Mutex::new(tunn) })
                    });
                    slots.push(slot);
                }
            }
            let i = table_peers.len();
            for (s, slot) in slots.iter().enumerate() {
                by_index.insert(slot.index, (i, s));
            }
            by_key.entry(p.public).or_insert(i);
            if let Some(k) = p.prev_public {
                by_key.entry(k).or_insert(i);
            }
            remote.push(p.addrs.iter().filter_map(|(n, a)| net_index.get(n.as_str()).map(|&n| (n, *a))).collect());
            let tx = best_slot(&slots);
            table_peers.push(Peer {
                node: p.node.clone(),
                endpoint: p.endpoint,
                slots,
                tx_slot: AtomicUsize::new(tx),
                counters: before.map(|b| b.counters.clone()).unwrap_or_default(),
            });
        }
        let table = Table {
            keys: keys.clone(),
            nets,
            peers: table_peers,
            routes: Routes::new(&local, &remote),
            by_index,
            by_key,
        };
        *self.table.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(table);
        self.generation.fetch_add(1, Ordering::Release);
        if errors.is_empty() { Ok(()) } else { Err(io::Error::other(errors.join("; "))) }
    }
}

/// The first slot with a session, else the first.
fn best_slot(slots: &[Arc<Slot>]) -> usize {
    slots.iter().position(|s| lock(&s.tunn).time_since_last_handshake().is_some()).unwrap_or(0)
}

/// Splits `lens` (message lengths, in order) into runs one `UDP_SEGMENT`
/// send can carry: equal lengths and at most one shorter last, at most 64
/// datagrams and 65,000 bytes; `f(first length, count)` for each.
fn group_runs(lens: &[usize], mut f: impl FnMut(usize, usize)) {
    const MAX_SEGS: usize = 64;
    const MAX_BYTES: usize = 65000;
    let mut i = 0;
    while i < lens.len() {
        let seg = lens[i];
        let (mut j, mut total) = (i + 1, seg);
        while j < lens.len() && lens[j] == seg && j - i < MAX_SEGS && total + seg <= MAX_BYTES {
            total += seg;
            j += 1;
        }
        if j < lens.len() && lens[j] < seg && j - i < MAX_SEGS && total + lens[j] <= MAX_BYTES {
            j += 1;
        }
        f(seg, j - i);
        i = j;
    }
}

/// Sends `buf`, the WireGuard messages whose lengths are `lens` laid end to
/// end, to `dst`: each run of `group_runs` as one `UDP_SEGMENT` send (one
/// datagram at a time where the kernel refuses it).
fn send_all(sock: BorrowedFd<'_>, buf: &[u8], lens: &[usize], dst: SocketAddrV4) {
    let (mut i, mut off) = (0, 0);
    group_runs(lens, |seg, n| {
        let total: usize = lens[i..i + n].iter().sum();
        let chunk = &buf[off..off + total];
        let gso = (n > 1).then_some(seg as u16);
        if let Err(e) = sys::send(sock, chunk, dst, gso) {
            if gso.is_some() {
                let mut o = 0;
                for l in &lens[i..i + n] {
                    let _ = sys::send(sock, &chunk[o..o + l], dst, None);
                    o += l;
                }
            } else {
                tracing::debug!(error = %e, %dst, "wireguard: send");
            }
        }
        off += total;
        i += n;
    });
}

/// The epoll token of a worker's UDP socket; a network's queue is `1 + its index`.
const SOCKET_TOKEN: u64 = 0;

/// The epoll set of worker `w` for table `t`: its socket and its queue of
/// every network but the detached ones (a gone TUN's queue polls as an
/// error at once: it waits for `configure` unwatched).
fn watch(s: &Shared, t: &Table, w: usize) -> io::Result<sys::Epoll> {
    let ep = sys::Epoll::new(1 + t.nets.len())?;
    ep.add(s.sockets[w].as_fd(), SOCKET_TOKEN)?;
    for (i, n) in t.nets.iter().enumerate() {
        if let Some(q) = n.queues.get(w)
            && !n.detached.load(Ordering::Relaxed)
        {
            ep.add(q.as_fd(), 1 + i as u64)?;
        }
    }
    Ok(ep)
}

/// One worker: its socket and its queue of every network, in one epoll set
/// made again when the table changes (nothing is allocated per wake-up).
fn worker(s: &Shared, w: usize, mut pin: Option<Pin>) {
    if let Some(p) = pin.as_mut() {
        p.start();
    }
    let mut st = WorkerBufs::new();
    let mut ready = Vec::new();
    let sock = s.sockets[w].as_fd();
    let mut t = s.table();
    let mut seen = None;
    let mut ep = None;
    while !s.stop.load(Ordering::Relaxed) {
        // Read before the table: a rebuild between the two is seen at the next wake.
        let generation = s.generation.load(Ordering::Acquire);
        if seen != Some(generation) {
            t = s.table();
            ep = match watch(s, &t, w) {
                Ok(ep) => Some(ep),
                Err(e) => {
                    tracing::warn!(error = %e, "wireguard: epoll");
                    std::thread::sleep(TICK);
                    continue;
                }
            };
            seen = Some(generation);
        }
        let Some(ep) = ep.as_mut() else { continue };
        if let Err(e) = ep.wait(&mut ready, TICK.as_millis() as i32) {
            tracing::warn!(error = %e, "wireguard: epoll");
            std::thread::sleep(TICK);
            continue;
        }
        let woke = pin.as_ref().map(|_| Instant::now());
        for &token in &ready {
            if token == SOCKET_TOKEN {
                // Batches until RX_WAKE datagrams, then the TUNs' turn (a stream's ACKs wait
                // there); one batch of coalesced messages may hold up to 32 × 64.
                let mut taken = 0;
                while taken < RX_WAKE {
                    match st.batch.recv(sock, &mut st.rx, &mut st.got) {
                        Ok(0) => break,
                        Ok(n) => {
                            for i in 0..n {
                                let (data, got) = (std::mem::take(&mut st.rx[i]), st.got[i]);
                                if got.seg < got.len {
                                    s.coalesced.fetch_add(got.len.div_ceil(got.seg) as u64, Ordering::Relaxed);
                                }
                                for datagram in got.datagrams(&data) {
                                    rx_datagram(s, &t, w, &mut st, got.from, datagram);
                                    taken += 1;
                                }
                                st.rx[i] = data;
                            }
                            flush_gro(&t, w, &mut st.gro);
                            if n < RX_BATCH {
                                break; // drained: no second call only to hear EAGAIN
                            }
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "wireguard: recv");
                            break;
                        }
                    }
                }
                continue;
            }
            let net = (token - 1) as usize;
            let Some(q) = t.nets.get(net).and_then(|n| n.queues.get(w)) else { continue };
            for _ in 0..64 {
                match sys::read(q.as_fd(), &mut st.tun) {
                    Ok(Some(len)) => {
                        let pkt = std::mem::take(&mut st.tun);
                        tx_packet(s, &t, w, &mut st, net, &pkt[..len]);
                        st.tun = pkt;
                    }
                    Ok(None) => break,
                    Err(e) if e.raw_os_error() == Some(libc::EBADFD) => {
                        if !t.nets[net].detached.swap(true, Ordering::Relaxed) {
                            tracing::warn!(net.id = %t.nets[net].id, "wireguard: the network's TUN is gone");
                        }
                        ep.remove(q.as_fd()).ok();
                        break;
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, net = %t.nets[net].id, "wireguard: tun read");
                        break;
                    }
                }
            }
        }
        if let (Some(p), Some(t)) = (pin.as_mut(), woke) {
            p.account(t.elapsed());
        }
    }
}

struct WorkerBufs {
    tun: Vec<u8>,
    segs: Vec<u8>,
    seg_lens: Vec<usize>,
    enc: Vec<u8>,
    enc_lens: Vec<usize>,
    dec: Vec<u8>,
    rx: Vec<Vec<u8>>,
    got: Vec<sys::Received>,
    batch: sys::RecvBatch,
    gro: gro::Gro,
}

impl WorkerBufs {
    fn new() -> WorkerBufs {
        WorkerBufs {
            tun: vec![0; TUN_BUF],
            segs: Vec::with_capacity(2 * TUN_BUF),
            seg_lens: Vec::new(),
            enc: vec![0; 2 * TUN_BUF],
            enc_lens: Vec::new(),
            dec: vec![0; TUN_BUF],
            rx: (0..RX_BATCH).map(|_| vec![0; 65536]).collect(),
            got: Vec::new(),
            batch: sys::RecvBatch::new(RX_BATCH),
            gro: gro::Gro::new(),
        }
    }
}

/// A packet (or super-packet) read from network `net`'s TUN: segmented,
/// encrypted for the peer that owns its destination, sent.
fn tx_packet(s: &Shared, t: &Table, w: usize, st: &mut WorkerBufs, net: usize, buf: &[u8]) {
    st.segs.clear();
    st.seg_lens.clear();
    if s.offload {
        let Some(hdr) = gso::VnetHdr::parse(buf) else {
            s.unroutable.fetch_add(1, Ordering::Relaxed);
            return;
        };
        if gso::segment(&hdr, &buf[gso::VNET_HDR_LEN..], &mut st.segs, &mut st.seg_lens).is_err() {
            s.unroutable.fetch_add(1, Ordering::Relaxed);
            return;
        }
    } else {
        st.segs.extend_from_slice(buf);
        st.seg_lens.push(buf.len());
    }
    // Every segment of a super-packet has the same destination.
    let Ok(p) = t.routes.peer_for(net, &st.segs) else {
        s.unroutable.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let peer = &t.peers[p];
    let slot = peer.slots.get(peer.tx_slot.load(Ordering::Relaxed)).unwrap_or(&peer.slots[0]);
    let need = st.segs.len() + st.seg_lens.len() * 64 + 256;
    if st.enc.len() < need {
        st.enc.resize(need, 0);
    }
    st.enc_lens.clear();
    let (mut off, mut at) = (0, 0);
    {
        let mut tunn = lock(&slot.tunn);
        for &len in &st.seg_lens {
            if let TunnResult::WriteToNetwork(out) = tunn.encapsulate(&st.segs[at..at + len], &mut st.enc[off..]) {
                let n = out.len();
                st.enc_lens.push(n);
                off += n;
            }
            at += len;
        }
    }
    peer.counters.tx.fetch_add(at as u64, Ordering::Relaxed);
    send_all(s.sockets[w].as_fd(), &st.enc[..off], &st.enc_lens, peer.endpoint);
}

/// Where a datagram goes.
#[derive(Debug, PartialEq, Eq)]
enum Demux {
    /// To this (peer, slot)'s session set.
    Slot(usize, usize),
    /// An initiation under no key of ours, or from a key no peer has.
    Refused,
    /// Under load: this cookie reply goes back to the sender's address.
    Cookie(Vec<u8>),
    /// Not a WireGuard message, or not one of a live session.
    Unknown,
}

/// Which (peer, slot) a datagram belongs to: an initiation by the key it
/// opens under (its `mac1` checked first), the other messages by their
/// receiver index.
fn demux(t: &Table, from: Ipv4Addr, data: &[u8]) -> Demux {
    let idx = |at: usize| data.get(at..at + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) >> 8);
    let by_index =
        |i: Option<u32>| i.and_then(|i| t.by_index.get(&i)).map_or(Demux::Unknown, |&(p, s)| Demux::Slot(p, s));
    match Tunn::parse_incoming_packet(data) {
        Ok(Packet::HandshakeInit(_)) => {
            let mut cookie = [0u8; 64];
            for key in &t.keys.0 {
                let init = match key.limiter.verify_packet(Some(from.into()), data, &mut cookie) {
                    Ok(Packet::HandshakeInit(init)) => init,
                    Err(TunnResult::WriteToNetwork(c)) => return Demux::Cookie(c.to_vec()),
                    _ => continue, // mac1 is for another key
                };
                let Ok(half) = parse_handshake_anon(&key.secret, &key.public, &init) else { break };
                let remote = half.peer_static_public;
                let l = key.public.to_bytes();
                let found = t.by_key.get(&remote).and_then(|&p| {
                    t.peers[p].slots.iter().position(|x| x.local == l && x.remote == remote).map(|s| (p, s))
                });
                return found.map_or(Demux::Refused, |(p, s)| Demux::Slot(p, s));
            }
            Demux::Refused
        }
        Ok(Packet::HandshakeResponse(_)) => by_index(idx(8)),
        Ok(Packet::PacketCookieReply(_) | Packet::PacketData(_)) => by_index(idx(4)),
        Err(_) => Demux::Unknown,
    }
}

/// A datagram from the network: authenticated and decrypted by the
/// sender's session, checked, written to its network's TUN.
fn rx_datagram(s: &Shared, t: &Table, w: usize, st: &mut WorkerBufs, from: SocketAddrV4, data: &[u8]) {
    let sock = s.sockets[w].as_fd();
    let (p, slot) = match demux(t, *from.ip(), data) {
        Demux::Slot(p, slot) => (p, slot),
        Demux::Refused => {
            s.refused.fetch_add(1, Ordering::Relaxed);
            return;
        }
        Demux::Cookie(c) => {
            sys::send(sock, &c, from, None).ok();
            return;
        }
        Demux::Unknown => {
            s.unknown.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    let peer = &t.peers[p];
    let h = gso::VNET_HDR_LEN;
    let mut tunn = lock(&peer.slots[slot].tunn);
    match tunn.decapsulate(Some((*from.ip()).into()), data, &mut st.dec[h..]) {
        TunnResult::WriteToNetwork(reply) => {
            sys::send(sock, reply, peer.endpoint, None).ok();
            // Packets queued while the handshake ran.
            while let TunnResult::WriteToNetwork(out) = tunn.decapsulate(None, &[], &mut st.dec[h..]) {
                sys::send(sock, out, peer.endpoint, None).ok();
            }
        }
        TunnResult::WriteToTunnelV4(pkt, _) => {
            let n = pkt.len();
            drop(tunn);
            match t.routes.accept(p, &st.dec[h..h + n]) {
                Ok(net) => {
                    peer.counters.rx.fetch_add(n as u64, Ordering::Relaxed);
                    if t.nets[net].gro {
                        let pkt = &st.dec[h..h + n];
                        if !st.gro.append(net, pkt) {
                            flush_gro(t, w, &mut st.gro);
                            st.gro.start(net, pkt);
                        }
                        return;
                    }
                    let Some(q) = t.nets[net].queues.get(w) else { return };
                    let out = if s.offload {
                        // gso_type NONE, no checksum to finish: the sender completed it.
                        st.dec[..h].fill(0);
                        &st.dec[..h + n]
                    } else {
                        &st.dec[h..h + n]
                    };
                    if let Err(e) = sys::write(q.as_fd(), out) {
                        tracing::debug!(error = %e, "wireguard: tun write");
                    }
                }
                Err(Refusal::Spoofed | Refusal::NotLocal | Refusal::NotIpv4 | Refusal::NoPeer) => {
                    peer.counters.spoofed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        TunnResult::WriteToTunnelV6(..) => {
            peer.counters.spoofed.fetch_add(1, Ordering::Relaxed);
        }
        TunnResult::Done | TunnResult::Err(_) => {}
    }
}

/// Writes the coalesced packet, if any, to its network's TUN.
fn flush_gro(t: &Table, w: usize, g: &mut gro::Gro) {
    let net = g.net;
    if let Some(out) = g.finish()
        && let Some(q) = t.nets.get(net).and_then(|n| n.queues.get(w))
        && let Err(e) = sys::write(q.as_fd(), out)
    {
        tracing::debug!(error = %e, "wireguard: tun write");
    }
}

/// The timer thread: every session's timers; a handshake for any peer
/// whose preferred session is missing; which session data goes over.
fn timers(s: &Shared) {
    let mut buf = vec![0u8; 2048];
    let sock = s.sockets[0].as_fd();
    let mut next = Instant::now();
    while !s.stop.load(Ordering::Relaxed) {
        next += TICK;
        let t = s.table();
        for key in &t.keys.0 {
            key.limiter.reset_count(); // once a second at most, by itself
        }
        for peer in &t.peers {
            let mut best = None;
            for (i, slot) in peer.slots.iter().enumerate() {
                let mut tunn = lock(&slot.tunn);
                if let TunnResult::WriteToNetwork(out) = tunn.update_timers(&mut buf) {
                    sys::send(sock, out, peer.endpoint, None).ok();
                }
                if tunn.time_since_last_handshake().is_some() {
                    best.get_or_insert(i);
                }
            }
            peer.tx_slot.store(best.unwrap_or(0), Ordering::Relaxed);
            if best != Some(0) {
                let mut kicked = lock(&peer.counters.last_kick);
                if kicked.is_none_or(|k| k.elapsed() >= KICK_EVERY) {
                    *kicked = Some(Instant::now());
                    let mut tunn = lock(&peer.slots[0].tunn);
                    // A fresh initiation each time: one refused (the peer had not learnt
                    // our new key yet) is not left to boringtun's 5 s retry.
                    if let TunnResult::WriteToNetwork(out) = tunn.format_handshake_initiation(&mut buf, true) {
                        sys::send(sock, out, peer.endpoint, None).ok();
                    }
                }
            }
        }
        drop(t);
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else {
            next = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A datapath's shared state with no socket, network or thread: enough
    /// to build tables and demultiplex messages.
    fn shared(keys: &StaticKeys) -> Shared {
        let keys = Arc::new(LocalKeys::of(keys, None));
        Shared {
            table: RwLock::new(Arc::new(Table {
                keys: keys.clone(),
                nets: Vec::new(),
                peers: Vec::new(),
                routes: Routes::default(),
                by_index: HashMap::new(),
                by_key: HashMap::new(),
            })),
            generation: AtomicU64::new(0),
            desired: Mutex::new((Vec::new(), Vec::new(), keys)),
            sockets: Vec::new(),
            port: 0,
            workers: 1,
            steering: None,
            offload: false,
            stop: AtomicBool::new(false),
            next_index: AtomicU32::new(1),
            refused: AtomicU64::new(0),
            coalesced: AtomicU64::new(0),
            unknown: AtomicU64::new(0),
            unroutable: AtomicU64::new(0),
        }
    }

    fn set(s: &Shared, keys: Option<&StaticKeys>, peers: Vec<WgPeer>) {
        let mut d = lock(&s.desired);
        d.1 = peers;
        if let Some(k) = keys {
            d.2 = Arc::new(LocalKeys::of(k, Some(&d.2)));
        }
        s.rebuild(&d).expect("rebuilt");
    }

    fn wg_peer(node: &str, k: &StaticKeys) -> WgPeer {
        WgPeer {
            node: node.into(),
            public: k.public(),
            prev_public: k.prev_public(),
            endpoint: SocketAddrV4::new(Ipv4Addr::new(10, 199, 0, 2), 51820),
            addrs: Vec::new(),
        }
    }

    /// A handshake initiation from `from`'s current key to the public key `to`.
    fn initiation(from: &StaticKeys, to: [u8; 32]) -> Vec<u8> {
        let mut t = Tunn::new(from.current.clone(), PublicKey::from(to), None, None, 77, None);
        let mut buf = vec![0u8; 256];
        match t.format_handshake_initiation(&mut buf, false) {
            TunnResult::WriteToNetwork(p) => p.to_vec(),
            other => panic!("no initiation: {other:?}"),
        }
    }

    /// The (local, remote) keys of the slot a message lands on.
    fn lands(s: &Shared, msg: &[u8]) -> Option<([u8; 32], [u8; 32])> {
        let t = s.table();
        match demux(&t, Ipv4Addr::new(10, 199, 0, 2), msg) {
            Demux::Slot(p, slot) => Some((t.peers[p].slots[slot].local, t.peers[p].slots[slot].remote)),
            Demux::Refused => {
                s.refused.fetch_add(1, Ordering::Relaxed);
                None
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_rotating_responder_accepts_either_key_until_the_grace_period_ends() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let mut x = StaticKeys::load_or_create(dir.path()).expect("x's keys");
        let p = StaticKeys::generate().expect("p's key");
        let s = shared(&x);
        set(&s, None, vec![wg_peer("p", &p)]);
        let old = x.public();
        assert_eq!(lands(&s, &initiation(&p, old)), Some((old, p.public())));

        x.rotate(dir.path()).expect("rotated");
        set(&s, Some(&x), vec![wg_peer("p", &p)]);
        let new = x.public();
        // A peer that knows only the old key, and one that learnt the new one.
        assert_eq!(lands(&s, &initiation(&p, old)), Some((old, p.public())));
        assert_eq!(lands(&s, &initiation(&p, new)), Some((new, p.public())));
        // The old pair's session set is the same object: its sessions live on.
        let t = s.table();
        assert_eq!(t.peers[0].slots.len(), 2);
        assert_eq!(t.peers[0].slots[0].local, new, "the new key is preferred");

        x.drop_prev(dir.path()).expect("dropped");
        set(&s, Some(&x), vec![wg_peer("p", &p)]);
        assert_eq!(lands(&s, &initiation(&p, old)), None, "the old key is gone");
        assert_eq!(lands(&s, &initiation(&p, new)), Some((new, p.public())));
        assert_eq!(s.refused.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_removed_or_unknown_node_is_refused_and_a_rotating_peer_is_known_by_both_keys() {
        let x = StaticKeys::generate().expect("x's key");
        let dir = tempfile::tempdir().expect("a temp dir");
        let mut p = StaticKeys::load_or_create(dir.path()).expect("p's keys");
        let q = StaticKeys::generate().expect("q's key");
        let s = shared(&x);
        set(&s, None, vec![wg_peer("p", &p), wg_peer("q", &q)]);
        assert!(lands(&s, &initiation(&q, x.public())).is_some());
        let before = p.clone();
        p.rotate(dir.path()).expect("rotated");
        set(&s, None, vec![wg_peer("p", &p)]);
        // q removed: refused at once.
        assert_eq!(lands(&s, &initiation(&q, x.public())), None);
        // p under either of its keys while its grace period runs.
        assert_eq!(lands(&s, &initiation(&p, x.public())), Some((x.public(), p.public())));
        assert_eq!(lands(&s, &initiation(&before, x.public())), Some((x.public(), before.public())));
        // A stranger.
        let z = StaticKeys::generate().expect("z's key");
        assert_eq!(lands(&s, &initiation(&z, x.public())), None);
        assert_eq!(s.refused.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn a_forged_initiation_costs_no_diffie_hellman_and_a_flood_gets_cookies() {
        let x = StaticKeys::generate().expect("x's key");
        let p = StaticKeys::generate().expect("p's key");
        let s = shared(&x);
        set(&s, None, vec![wg_peer("p", &p)]);
        let t = s.table();
        let from = Ipv4Addr::new(10, 199, 0, 2);
        let mut bad = initiation(&p, x.public());
        bad[60] ^= 1; // mac1 no longer matches: refused before the DH
        assert_eq!(demux(&t, from, &bad), Demux::Refused);
        assert_eq!(demux(&t, from, b"\x45 not wireguard"), Demux::Unknown);
        let mut data = vec![4, 0, 0, 0, 9, 9, 9, 9];
        data.resize(64, 0);
        assert_eq!(demux(&t, from, &data), Demux::Unknown, "no such session");
        let cookies = (0..2 * HANDSHAKE_LIMIT)
            .filter(|_| matches!(demux(&t, from, &initiation(&p, x.public())), Demux::Cookie(_)))
            .count();
        assert!(cookies > 0, "under load the sender must prove its address");
    }

    #[test]
    fn the_datapath_can_be_shared_between_threads() {
        fn shareable<T: Send + Sync>() {}
        shareable::<Datapath>();
    }

    #[test]
    fn runs_of_equal_messages_are_grouped_for_udp_segmentation() {
        // Only the grouping (which the send follows) is checked here; the kernel test sends.
        fn runs(lens: &[usize]) -> Vec<(usize, usize)> {
            let mut out = Vec::new();
            group_runs(lens, |seg, n| out.push((seg, n)));
            out
        }
        assert_eq!(runs(&[1452, 1452, 1452, 700]), [(1452, 4)]);
        assert_eq!(runs(&[148, 1452, 1452]), [(148, 1), (1452, 2)]);
        assert_eq!(runs(&[500, 1000]), [(500, 1), (1000, 1)]);
        assert_eq!(runs(&[1452; 50]), [(1452, 44), (1452, 6)]);
    }
}
