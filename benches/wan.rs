//! The testnets side by side with mainline over an emulated WAN link (`dht-bench
//! --only-wan --wan-rtt-ms 50`).
//!
//! This kernel has no `sch_netem`, so the link is emulated in user space: the process
//! moves itself into a network namespace of its own (`unshare(CLONE_NEWNET)`, before any
//! thread starts, so every thread, socket and child process of the run is in it), brings
//! its `lo` up, and adds one iptables-legacy rule there:
//!
//! ```text
//! iptables-legacy -t mangle -A OUTPUT -o lo -j NFQUEUE --queue-num 0
//! ```
//!
//! Every packet sent on `lo` (both directions of every TCP connection, every UDP datagram)
//! is handed to a delayer thread of this process over netfilter's queue (NFQUEUE), which
//! holds it for RTT / 2 (plus a uniform jitter of +/- J, keeping each flow's packets in
//! order) and then accepts it, or drops it with the configured loss probability. So every
//! node pair, ours over TCP and mainline over UDP alike, sees the configured RTT. The
//! namespace belongs to the process: it vanishes with its rule and its queue when the
//! process exits, whatever the cause (error, Ctrl-C, kill). Nothing is added to the root
//! network namespace; the run refuses to add its rule unless it is in a new namespace.
//! TCP autocorking is turned off in the namespace: with packets held inside the
//! sender's stack it would hold a socket's next small write for RTT / 2, which a real
//! link does not (see `no_autocorking`).
//!
//! The report states each latency in RTTs and a self-check of the link: a TCP and a UDP
//! ping-pong between two sockets of the namespace, and how late the delayer released the
//! packets during the run.

use std::collections::{BinaryHeap, HashMap};
use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;

use crate::{leak, Figures, Pcts};

/// The emulated link.
#[derive(Debug, Clone, Copy)]
pub struct Link {
    /// Round-trip time: each packet is held for half of it.
    pub rtt_ms: f64,
    /// Each packet's one-way delay is RTT / 2 plus a uniform draw in [-jitter, +jitter].
    pub jitter_ms: f64,
    /// Probability (percent) that a packet is dropped, in each direction.
    pub loss_pct: f64,
}

/// Whether this process can emulate the link, and why not.
pub fn unavailable() -> Option<String> {
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root (a network namespace and an iptables rule need root)".into());
    }
    if iptables().is_none() {
        return Some(
            "iptables-legacy not found (Debian: apt-get install -y iptables; benches/run.sh \
             installs it)"
                .into(),
        );
    }
    None
}

fn iptables() -> Option<std::path::PathBuf> {
    ["/usr/sbin/iptables-legacy", "/sbin/iptables-legacy"]
        .iter()
        .map(std::path::PathBuf::from)
        .chain(
            std::env::var_os("PATH")
                .into_iter()
                .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
                .map(|d| d.join("iptables-legacy")),
        )
        .find(|p| p.exists())
}

fn netns_inode() -> io::Result<u64> {
    Ok(std::fs::metadata("/proc/thread-self/ns/net")?.ino())
}

/// The running emulation: statistics of the delayer thread.
pub struct Emulation {
    pub link: Link,
    stats: Arc<Mutex<Stats>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Counters of the delayer.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    /// Packets seen, dropped as loss, and the most held at once.
    pub packets: u64,
    pub lost: u64,
    pub max_held: usize,
    /// How late packets were released past their deadline: a histogram in 10 us buckets
    /// (the last bucket holds everything from 100 ms on).
    late: Vec<u64>,
    pub late_max: Duration,
    pub error: Option<String>,
}

const LATE_BUCKET_US: u64 = 10;
const LATE_BUCKETS: usize = 10_000;

impl Stats {
    fn late_pct(&self, q: f64) -> Duration {
        let total: u64 = self.late.iter().sum();
        if total == 0 {
            return Duration::ZERO;
        }
        let want = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, n) in self.late.iter().enumerate() {
            seen += n;
            if seen >= want {
                return Duration::from_micros(i as u64 * LATE_BUCKET_US);
            }
        }
        self.late_max
    }
}

/// Moves this process into a new network namespace of its own with its `lo` up and
/// nothing else (no emulated link): its loopback counters then count only this
/// process's traffic. Call it before any thread starts, as [`enter`].
pub fn own_namespace() -> anyhow::Result<()> {
    anyhow::ensure!(
        unsafe { libc::geteuid() } == 0,
        "not root (a network namespace needs root)"
    );
    let before = netns_inode()?;
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        anyhow::bail!("unshare(CLONE_NEWNET): {}", io::Error::last_os_error());
    }
    anyhow::ensure!(
        netns_inode()? != before,
        "still in the original network namespace after unshare"
    );
    loopback_up()?;
    Ok(())
}

/// Moves this process into a new network namespace with the emulated link on its `lo`.
/// Call it first thing in `main`, before any thread starts: threads started later (the
/// tokio runtime, mainline's) inherit the namespace, threads started earlier would not.
pub fn enter(link: Link) -> anyhow::Result<Emulation> {
    if let Some(why) = unavailable() {
        anyhow::bail!("cannot emulate a WAN link: {why}");
    }
    let iptables = iptables().expect("checked");
    let before = netns_inode()?;
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        anyhow::bail!("unshare(CLONE_NEWNET): {}", io::Error::last_os_error());
    }
    // Refuse to touch netfilter unless this is a namespace of our own.
    let after = netns_inode()?;
    anyhow::ensure!(
        after != before,
        "still in the original network namespace after unshare; not adding any rule"
    );
    loopback_up()?;
    no_autocorking()?;
    let queue_num = 0;
    let nfq = Nfq::open(queue_num)?;
    let status = Command::new(&iptables)
        .args([
            "-w",
            "-t",
            "mangle",
            "-A",
            "OUTPUT",
            "-o",
            "lo",
            "-j",
            "NFQUEUE",
            "--queue-num",
        ])
        .arg(queue_num.to_string())
        .status()?;
    anyhow::ensure!(status.success(), "{} failed: {status}", iptables.display());
    let stats = Arc::new(Mutex::new(Stats {
        late: vec![0; LATE_BUCKETS],
        ..Stats::default()
    }));
    let stop = Arc::new(AtomicBool::new(false));
    let thread = {
        let (stats, stop) = (stats.clone(), stop.clone());
        std::thread::Builder::new()
            .name("wan-delayer".into())
            .spawn(move || {
                if let Err(e) = delayer(nfq, link, &stats, &stop) {
                    stats.lock().expect("stats").error = Some(e.to_string());
                    eprintln!("wan delayer stopped: {e}");
                }
            })?
    };
    Ok(Emulation {
        link,
        stats,
        stop,
        thread: Some(thread),
    })
}

impl Emulation {
    pub fn stats(&self) -> Stats {
        self.stats.lock().expect("stats").clone()
    }
}

impl Drop for Emulation {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Turns TCP autocorking off in the namespace (a per-namespace sysctl). Autocorking
/// holds a small write back while an earlier segment of the socket has not left the
/// host yet; on a real link that is microseconds, but here the delayer holds every
/// packet inside the sender's own stack for RTT / 2, so a second small write (a
/// stream's FIN frame written a moment after its request) waited half a round trip:
/// puts measured 1.5 RTT on the link, 1.0 with autocorking off (a 2-node probe, 100 ms
/// RTT: 152 ms and 102 ms at p50). Mainline (UDP) is unaffected either way.
fn no_autocorking() -> io::Result<()> {
    std::fs::write("/proc/sys/net/ipv4/tcp_autocorking", "0")
}

fn loopback_up() -> io::Result<()> {
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = OwnedFd::from_raw_fd(fd);
        let mut req: libc::ifreq = std::mem::zeroed();
        for (d, s) in req.ifr_name.iter_mut().zip(b"lo\0") {
            *d = *s as libc::c_char;
        }
        if libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) < 0 {
            return Err(io::Error::last_os_error());
        }
        req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        if libc::ioctl(fd.as_raw_fd(), libc::SIOCSIFFLAGS, &req) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

// ---- A minimal NFQUEUE client over netlink (linux/netfilter/nfnetlink_queue.h) ----

const NFNL_SUBSYS_QUEUE: u16 = 3;
const NFQNL_MSG_PACKET: u16 = 0;
const NFQNL_MSG_VERDICT: u16 = 1;
const NFQNL_MSG_CONFIG: u16 = 2;
const NFQA_PACKET_HDR: u16 = 1;
const NFQA_VERDICT_HDR: u16 = 2;
const NFQA_PAYLOAD: u16 = 10;
const NFQA_CFG_CMD: u16 = 1;
const NFQA_CFG_PARAMS: u16 = 2;
const NFQA_CFG_QUEUE_MAXLEN: u16 = 3;
const NFQA_CFG_MASK: u16 = 4;
const NFQA_CFG_FLAGS: u16 = 5;
const NFQNL_CFG_CMD_BIND: u8 = 1;
const NFQNL_COPY_PACKET: u8 = 2;
const NFQA_CFG_F_GSO: u32 = 1 << 2;
const NF_DROP: u32 = 0;
const NF_ACCEPT: u32 = 1;
/// Bytes of each packet copied to the delayer: the IPv4 header and the ports (to keep
/// each flow's packets in order under jitter).
const COPY_RANGE: u32 = 64;
/// Packets the kernel may hold for the delayer at once (held packets count).
const QUEUE_MAXLEN: u32 = 1 << 20;

/// Appends one netfilter netlink message for the queue subsystem to `out`.
fn nfnl_msg(out: &mut Vec<u8>, msg: u16, flags: u16, seq: u32, queue: u16, attrs: &[(u16, &[u8])]) {
    let start = out.len();
    out.extend_from_slice(&0u32.to_ne_bytes()); // length, set below
    out.extend_from_slice(&((NFNL_SUBSYS_QUEUE << 8) | msg).to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel
    out.push(libc::AF_UNSPEC as u8); // nfgenmsg: family, version, queue number
    out.push(0);
    out.extend_from_slice(&queue.to_be_bytes());
    for (ty, data) in attrs {
        out.extend_from_slice(&((4 + data.len()) as u16).to_ne_bytes());
        out.extend_from_slice(&ty.to_ne_bytes());
        out.extend_from_slice(data);
        while !out.len().is_multiple_of(4) {
            out.push(0);
        }
    }
    let len = (out.len() - start) as u32;
    out[start..start + 4].copy_from_slice(&len.to_ne_bytes());
}

/// A packet queued to user space: its id and the first bytes of its IP header.
#[derive(Debug, PartialEq)]
struct Queued<'a> {
    id: u32,
    head: &'a [u8],
}

/// Walks the netlink messages of one receive: queued packets, and acknowledgements or
/// errors (`Err(errno)`, 0 for an acknowledgement).
fn parse(buf: &[u8], mut on_packet: impl FnMut(Queued<'_>), mut on_ack: impl FnMut(i32)) {
    let mut at = 0;
    while at + 16 <= buf.len() {
        let len = u32::from_ne_bytes(buf[at..at + 4].try_into().expect("4")) as usize;
        let ty = u16::from_ne_bytes(buf[at + 4..at + 6].try_into().expect("2"));
        if len < 16 || at + len > buf.len() {
            break;
        }
        let body = &buf[at + 16..at + len];
        if ty == libc::NLMSG_ERROR as u16 && body.len() >= 4 {
            on_ack(-i32::from_ne_bytes(body[..4].try_into().expect("4")));
        } else if ty == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET && body.len() >= 4 {
            let mut id = None;
            let mut head: &[u8] = &[];
            let mut a = 4;
            while a + 4 <= body.len() {
                let alen = u16::from_ne_bytes(body[a..a + 2].try_into().expect("2")) as usize;
                let aty = u16::from_ne_bytes(body[a + 2..a + 4].try_into().expect("2")) & 0x3fff;
                if alen < 4 || a + alen > body.len() {
                    break;
                }
                let data = &body[a + 4..a + alen];
                match aty {
                    NFQA_PACKET_HDR if data.len() >= 4 => {
                        id = Some(u32::from_be_bytes(data[..4].try_into().expect("4")));
                    }
                    NFQA_PAYLOAD => head = data,
                    _ => {}
                }
                a += (alen + 3) & !3;
            }
            if let Some(id) = id {
                on_packet(Queued { id, head });
            }
        }
        at += (len + 3) & !3;
    }
}

/// The flow of an IPv4 packet (addresses, protocol, ports), to keep its order.
fn flow_of(head: &[u8]) -> Option<[u8; 13]> {
    if head.len() < 20 || head[0] >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(head[0] & 0x0f) * 4;
    let mut key = [0u8; 13];
    key[..8].copy_from_slice(&head[12..20]);
    key[8] = head[9];
    if matches!(head[9], 6 | 17) && head.len() >= ihl + 4 {
        key[9..13].copy_from_slice(&head[ihl..ihl + 4]);
    }
    Some(key)
}

struct Nfq {
    fd: OwnedFd,
    queue: u16,
    seq: u32,
}

impl Nfq {
    fn open(queue: u16) -> io::Result<Nfq> {
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_NETFILTER,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as _;
        let one: libc::c_int = 1;
        let rcvbuf: libc::c_int = 32 << 20;
        unsafe {
            if libc::bind(
                fd.as_raw_fd(),
                &addr as *const _ as *const libc::sockaddr,
                std::mem::size_of_val(&addr) as _,
            ) < 0
            {
                return Err(io::Error::last_os_error());
            }
            // A full socket buffer would make the kernel drop packets: make it large, and
            // do not report overruns as errors (the kernel's queue counters show them).
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_NETLINK,
                libc::NETLINK_NO_ENOBUFS,
                &one as *const _ as *const libc::c_void,
                4,
            );
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                &rcvbuf as *const _ as *const libc::c_void,
                4,
            );
        }
        let mut q = Nfq { fd, queue, seq: 0 };
        q.config(&[(NFQA_CFG_CMD, &[NFQNL_CFG_CMD_BIND, 0, 0, 0])])?;
        let mut params = COPY_RANGE.to_be_bytes().to_vec();
        params.push(NFQNL_COPY_PACKET);
        q.config(&[(NFQA_CFG_PARAMS, &params)])?;
        q.config(&[(NFQA_CFG_QUEUE_MAXLEN, &QUEUE_MAXLEN.to_be_bytes())])?;
        // Take segmentation-offload packets whole (nothing is modified): fewer packets.
        q.config(&[
            (NFQA_CFG_FLAGS, &NFQA_CFG_F_GSO.to_be_bytes()),
            (NFQA_CFG_MASK, &NFQA_CFG_F_GSO.to_be_bytes()),
        ])?;
        Ok(q)
    }

    fn send(&self, buf: &[u8]) -> io::Result<()> {
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as _;
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                buf.as_ptr() as *const libc::c_void,
                buf.len(),
                0,
                &addr as *const _ as *const libc::sockaddr,
                std::mem::size_of_val(&addr) as _,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Sends a configuration message and waits for its acknowledgement.
    fn config(&mut self, attrs: &[(u16, &[u8])]) -> io::Result<()> {
        self.seq += 1;
        let mut msg = Vec::new();
        nfnl_msg(
            &mut msg,
            NFQNL_MSG_CONFIG,
            (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16,
            self.seq,
            self.queue,
            attrs,
        );
        self.send(&msg)?;
        let mut buf = vec![0u8; 8192];
        loop {
            let n = self.recv(&mut buf, 0)?;
            let mut ack = None;
            parse(&buf[..n], |_| {}, |e| ack = Some(e));
            match ack {
                Some(0) => return Ok(()),
                Some(e) => return Err(io::Error::from_raw_os_error(e)),
                None => {}
            }
        }
    }

    fn recv(&self, buf: &mut [u8], flags: libc::c_int) -> io::Result<usize> {
        let n = unsafe {
            libc::recv(
                self.fd.as_raw_fd(),
                buf.as_mut_ptr() as *mut libc::c_void,
                buf.len(),
                flags,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// Waits until a packet is queued or `timeout` passed.
    fn wait(&self, timeout: Duration) {
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ts = libc::timespec {
            tv_sec: timeout.as_secs() as _,
            tv_nsec: timeout.subsec_nanos() as _,
        };
        unsafe { libc::ppoll(&mut pfd, 1, &ts, std::ptr::null()) };
    }
}

/// The delayer: receives every queued packet, holds it until its deadline, accepts it
/// (or drops it right away with the loss probability).
fn delayer(nfq: Nfq, link: Link, stats: &Mutex<Stats>, stop: &AtomicBool) -> io::Result<()> {
    // Real-time priority: a release is then late by scheduling latency at most, even on a
    // machine whose cores the testnets keep busy. Without it (no permission), carry on.
    unsafe {
        let p = libc::sched_param { sched_priority: 20 };
        if libc::sched_setscheduler(0, libc::SCHED_FIFO, &p) != 0 {
            eprintln!(
                "wan delayer: no real-time priority ({}); releases may be late under load",
                io::Error::last_os_error()
            );
        }
    }
    let one_way = Duration::from_secs_f64(link.rtt_ms / 2e3);
    let jitter = link.jitter_ms / 1e3;
    let loss = (link.loss_pct / 100.0).clamp(0.0, 1.0);
    let mut rng = rand::thread_rng();
    // (deadline, arrival order, packet id), earliest first.
    let mut held: BinaryHeap<std::cmp::Reverse<(Instant, u64, u32)>> = BinaryHeap::new();
    let mut flows: HashMap<[u8; 13], Instant> = HashMap::new();
    let mut order = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    let mut verdicts = Vec::with_capacity(1 << 16);
    let mut local = Stats {
        late: vec![0; LATE_BUCKETS],
        ..Stats::default()
    };
    loop {
        let now = Instant::now();
        let timeout = held
            .peek()
            .map_or(Duration::from_millis(50), |d| {
                d.0 .0.saturating_duration_since(now)
            })
            .min(Duration::from_millis(50));
        if !timeout.is_zero() {
            nfq.wait(timeout);
        }
        if stop.load(Ordering::Relaxed) {
            break;
        }
        // Take every queued packet.
        loop {
            let n = match nfq.recv(&mut buf, libc::MSG_DONTWAIT) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // ENOBUFS despite NETLINK_NO_ENOBUFS: the kernel dropped some, go on.
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => continue,
                Err(e) => return Err(e),
            };
            let arrived = Instant::now();
            parse(
                &buf[..n],
                |p| {
                    local.packets += 1;
                    if loss > 0.0 && rng.gen_bool(loss) {
                        local.lost += 1;
                        nfnl_msg(
                            &mut verdicts,
                            NFQNL_MSG_VERDICT,
                            libc::NLM_F_REQUEST as u16,
                            0,
                            nfq.queue,
                            &[(NFQA_VERDICT_HDR, &verdict(NF_DROP, p.id))],
                        );
                        return;
                    }
                    let mut deadline = arrived + one_way;
                    if jitter > 0.0 {
                        let j = rng.gen_range(-jitter..=jitter);
                        deadline = if j >= 0.0 {
                            deadline + Duration::from_secs_f64(j)
                        } else {
                            deadline
                                .checked_sub(Duration::from_secs_f64(-j))
                                .unwrap_or(arrived)
                                .max(arrived)
                        };
                        // A flow's packets stay in order (as on a real path).
                        if let Some(flow) = flow_of(p.head) {
                            let last = flows.entry(flow).or_insert(deadline);
                            deadline = deadline.max(*last);
                            *last = deadline;
                        }
                    }
                    order += 1;
                    held.push(std::cmp::Reverse((deadline, order, p.id)));
                },
                |_| {},
            );
        }
        local.max_held = local.max_held.max(held.len());
        // Release what is due.
        let now = Instant::now();
        while let Some(std::cmp::Reverse((deadline, _, id))) = held.peek().copied() {
            if deadline > now {
                break;
            }
            held.pop();
            let late = now - deadline;
            local.late_max = local.late_max.max(late);
            let b = ((late.as_micros() as u64) / LATE_BUCKET_US).min(LATE_BUCKETS as u64 - 1);
            local.late[b as usize] += 1;
            accept(&nfq, &mut verdicts, id)?;
        }
        if !verdicts.is_empty() {
            nfq.send(&verdicts)?;
            verdicts.clear();
        }
        if flows.len() > 50_000 {
            flows.retain(|_, last| *last > now);
        }
        let mut s = stats.lock().expect("stats");
        s.packets = local.packets;
        s.lost = local.lost;
        s.max_held = local.max_held;
        s.late_max = local.late_max;
        s.late.clone_from(&local.late);
    }
    // Stopping: let whatever is held through.
    for std::cmp::Reverse((_, _, id)) in held.drain() {
        accept(&nfq, &mut verdicts, id)?;
    }
    if !verdicts.is_empty() {
        nfq.send(&verdicts)?;
    }
    Ok(())
}

/// Adds an accept verdict for packet `id` to the batch, sending the batch once it is large.
fn accept(nfq: &Nfq, verdicts: &mut Vec<u8>, id: u32) -> io::Result<()> {
    nfnl_msg(
        verdicts,
        NFQNL_MSG_VERDICT,
        libc::NLM_F_REQUEST as u16,
        0,
        nfq.queue,
        &[(NFQA_VERDICT_HDR, &verdict(NF_ACCEPT, id))],
    );
    if verdicts.len() > 60_000 {
        nfq.send(verdicts)?;
        verdicts.clear();
    }
    Ok(())
}

fn verdict(v: u32, id: u32) -> [u8; 8] {
    let mut out = [0u8; 8];
    out[..4].copy_from_slice(&v.to_be_bytes());
    out[4..].copy_from_slice(&id.to_be_bytes());
    out
}

/// The kernel's counters of the queue: packets dropped because the queue was full, and
/// because they could not be handed to user space.
fn kernel_queue_drops() -> Option<(u64, u64)> {
    let s = std::fs::read_to_string("/proc/net/netfilter/nfnetlink_queue").ok()?;
    let f: Vec<u64> = s
        .lines()
        .next()?
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    Some((*f.get(5)?, *f.get(6)?))
}

// ---- Self-check: the RTT two sockets of the namespace see ----

/// Round trips of one byte between two TCP sockets (no Nagle) on 127.0.0.1.
pub fn tcp_ping(rounds: usize) -> io::Result<Vec<Duration>> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    let addr = listener.local_addr()?;
    let echo = std::thread::spawn(move || -> io::Result<()> {
        let (mut s, _) = listener.accept()?;
        s.set_nodelay(true)?;
        let mut b = [0u8; 1];
        while s.read(&mut b)? == 1 {
            s.write_all(&b)?;
        }
        Ok(())
    });
    let mut c = TcpStream::connect(addr)?;
    c.set_nodelay(true)?;
    c.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut out = Vec::with_capacity(rounds);
    let mut b = [7u8; 1];
    for _ in 0..rounds {
        let t = Instant::now();
        c.write_all(&b)?;
        c.read_exact(&mut b)?;
        out.push(t.elapsed());
    }
    drop(c);
    let _ = echo.join();
    Ok(out)
}

/// Round trips of one datagram between two UDP sockets on 127.0.0.1 (a lost datagram is
/// retried after a second and not counted).
pub fn udp_ping(rounds: usize) -> io::Result<Vec<Duration>> {
    let a = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
    let b = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
    let b_addr = b.local_addr()?;
    b.set_read_timeout(Some(Duration::from_millis(200)))?;
    let done = Arc::new(AtomicBool::new(false));
    let echo = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            while !done.load(Ordering::Relaxed) {
                if let Ok((n, from)) = b.recv_from(&mut buf) {
                    let _ = b.send_to(&buf[..n], from);
                }
            }
        })
    };
    a.set_read_timeout(Some(Duration::from_secs(1)))?;
    let mut out = Vec::with_capacity(rounds);
    let mut buf = [0u8; 64];
    let mut tries = 0;
    while out.len() < rounds && tries < rounds * 3 {
        tries += 1;
        let seq = (tries as u32).to_be_bytes();
        let t = Instant::now();
        a.send_to(&seq, b_addr)?;
        loop {
            match a.recv_from(&mut buf) {
                Ok((4, _)) if buf[..4] == seq => {
                    out.push(t.elapsed());
                    break;
                }
                Ok(_) => continue,
                Err(_) => break,
            }
        }
    }
    done.store(true, Ordering::Relaxed);
    let _ = echo.join();
    Ok(out)
}

/// The link's self-check, measured before the testnets start.
#[derive(Debug, Clone, Copy)]
pub struct Check {
    pub tcp: Pcts,
    pub tcp_n: usize,
    pub udp: Pcts,
    pub udp_n: usize,
}

pub fn self_check(rounds: usize) -> anyhow::Result<Check> {
    let tcp = tcp_ping(rounds)?;
    let udp = udp_ping(rounds / 2)?;
    Ok(Check {
        tcp_n: tcp.len(),
        tcp: crate::pcts(tcp),
        udp_n: udp.len(),
        udp: crate::pcts(udp),
    })
}

/// One network size under the link: ours and mainline.
#[derive(Debug)]
pub struct Row {
    pub size: usize,
    pub ours: Figures,
    pub mainline: Option<Figures>,
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// Runs the testnets under the link. `emu` must have been entered before the runtime.
/// One item request over a warm connection between two nodes, timed `rounds` times: a
/// raw get of a held item, and a put of a new item (this node and the other replica).
/// What a request costs on the link, apart from routing.
async fn item_probe(rounds: usize) -> anyhow::Result<(Pcts, Pcts)> {
    use dht_core::{MutableItem, SigningKey};
    use dht_node::test_util::{request_proto, GetRequestProto, RequestProto};
    let net = dht_node::Testnet::builder(2).build().await?;
    net.wait_for_routing(1, Duration::from_secs(20)).await;
    let (a, b) = (&net.nodes[0], &net.nodes[1]);
    let key = SigningKey::generate_ed25519();
    let item = MutableItem::sign(&key, key.public_key(), "tp", 1, vec![0x42; 900]);
    let target = item.target();
    a.put(item).await?;
    let mut gets = Vec::with_capacity(rounds);
    let mut puts = Vec::with_capacity(rounds);
    for i in 0..=rounds {
        let request = RequestProto {
            kind: Some(request_proto::Kind::Get(GetRequestProto {
                target: bytes::Bytes::copy_from_slice(target.as_bytes()),
            })),
        };
        let t = Instant::now();
        a.request(b.peer_id(), request).await?;
        // The first warms the connection up.
        if i > 0 {
            gets.push(t.elapsed());
        }
        let k = SigningKey::generate_ed25519();
        let item = MutableItem::sign(&k, k.public_key(), "tp", 1, vec![0x42; 900]);
        let t = Instant::now();
        a.put(item).await?;
        if i > 0 {
            puts.push(t.elapsed());
        }
    }
    net.shutdown().await;
    Ok((crate::pcts(gets), crate::pcts(puts)))
}

pub async fn run(
    emu: &Emulation,
    sizes: &[usize],
    ops: usize,
    value_len: usize,
    no_mainline: bool,
) -> anyhow::Result<String> {
    let t0 = Instant::now();
    let load_before = load_average();
    eprintln!("== wan: self-check of the link");
    let check = tokio::task::spawn_blocking(|| self_check(100)).await??;
    eprintln!("{check:?}");
    let probe = item_probe(20).await?;
    eprintln!(
        "item protocol over a warm connection: get {:?}, put {:?}",
        probe.0, probe.1
    );
    let mut rows = Vec::new();
    for &size in sizes {
        eprintln!("== wan {size} nodes: ours");
        let ours = crate::ours(size, ops, value_len, false).await?;
        eprintln!("{ours:?}");
        let mainline = if no_mainline {
            None
        } else {
            eprintln!("== wan {size} nodes: mainline");
            let m =
                tokio::task::spawn_blocking(move || crate::mainline_figures(size, ops, value_len))
                    .await??;
            eprintln!("{m:?}");
            Some(m)
        };
        rows.push(Row {
            size,
            ours,
            mainline,
        });
    }
    let stats = emu.stats();
    if let Some(e) = &stats.error {
        anyhow::bail!("the delayer failed during the run: {e}");
    }
    Ok(markdown(
        emu.link,
        &check,
        &stats,
        kernel_queue_drops(),
        &rows,
        ops,
        value_len,
        &load_before,
        &load_average(),
        t0.elapsed(),
    ))
}

#[allow(clippy::too_many_arguments)]
fn markdown(
    link: Link,
    check: &Check,
    stats: &Stats,
    queue_drops: Option<(u64, u64)>,
    rows: &[Row],
    ops: usize,
    value_len: usize,
    load_before: &str,
    load_after: &str,
    took: Duration,
) -> String {
    let rtt = link.rtt_ms;
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| s.lines().next().map(|l| l.to_string()))
        .unwrap_or_default()
        .replace("MemTotal:", "memory")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let mut md = String::new();
    let _ = writeln!(
        md,
        "## Testnets over an emulated WAN link (`dht-bench --only-wan`)\n\n\
         Link: **RTT {rtt} ms** (every packet held {:.1} ms one way), jitter +/- {} ms per \
         packet (each flow kept in order), loss {}% per packet and direction. Emulation: a \
         network namespace of the run's own whose `lo` sends every packet through NFQUEUE to \
         a user-space delayer (this kernel has no netem), with TCP autocorking off (the \
         delayer holds packets inside the sender's stack, where autocorking would hold the \
         socket's next small write for RTT / 2; a real link sends it at once); ours over TCP \
         + noise + yamux and mainline over UDP cross the same link. Machine: {cores} cores, {mem}; load average \
         {load_before} before, {load_after} after (1, 5, 15 min; the machine is shared). \
         {ops} operations per figure, values of {value_len} bytes; the section took {:.0} s.\n",
        rtt / 2.0,
        link.jitter_ms,
        link.loss_pct,
        took.as_secs_f64()
    );
    let _ = writeln!(
        md,
        "Self-check of the link (before the testnets): TCP ping-pong of one byte, {} round \
         trips: p50 {:.1} ms, p99 {:.1} ms; UDP, {} round trips: p50 {:.1} ms, p99 {:.1} ms. \
         Delayer during the whole run: {} packets, {} dropped as loss, up to {} held at \
         once, released late by p50 {} us, p99 {} us, max {:.1} ms{}.\n",
        check.tcp_n,
        check.tcp.p50,
        check.tcp.p99,
        check.udp_n,
        check.udp.p50,
        check.udp.p99,
        stats.packets,
        stats.lost,
        stats.max_held,
        stats.late_pct(0.5).as_micros(),
        stats.late_pct(0.99).as_micros(),
        stats.late_max.as_secs_f64() * 1e3,
        match queue_drops {
            Some((full, user)) =>
                format!("; kernel queue drops: {full} (queue full), {user} (not delivered)"),
            None => String::new(),
        }
    );
    let _ = writeln!(
        md,
        "Latencies in ms and, in brackets, in RTTs (latency / {rtt} ms); with {ops} \
         operations, p99 is the {}slowest. Ratio = mainline / ours (above 1: ours is \
         faster). Bytes on the wire: everything sent on the namespace's `lo` during the \
         phase (the testnet's own background traffic included) divided by its operations.\n",
        match ops.saturating_sub(((ops.max(1) as f64 - 1.0) * 0.99).round() as usize) {
            1 => "",
            2 => "second ",
            3 => "third ",
            _ => "nth ",
        }
    );
    let _ = writeln!(
        md,
        "| nodes | figure | ours p50 | ours p99 | mainline p50 | mainline p99 | ratio p50 | ratio p99 |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|");
    let cell = |v: f64| {
        let digits = if v < 10.0 { 1 } else { 0 };
        format!("{v:.digits$} ({:.2} RTT)", v / rtt)
    };
    for r in rows {
        let m = r.mainline.as_ref();
        for (name, o, t) in [
            ("put confirmed", r.ours.put, m.map(|m| m.put)),
            ("get first valid", r.ours.get_first, m.map(|m| m.get_first)),
            (
                "get best-of-quorum / most recent",
                r.ours.get_quorum,
                m.map(|m| m.get_quorum),
            ),
        ] {
            let _ = writeln!(
                md,
                "| {} | {name} | {} | {} | {} | {} | {} | {} |",
                r.size,
                cell(o.p50),
                cell(o.p99),
                t.map_or("-".into(), |t| cell(t.p50)),
                t.map_or("-".into(), |t| cell(t.p99)),
                t.map_or("-".into(), |t| crate::ratio(o.p50, t.p50)),
                t.map_or("-".into(), |t| crate::ratio(o.p99, t.p99)),
            );
        }
    }
    let _ = writeln!(md, "\n| nodes | figure | ours | mainline | ratio |");
    let _ = writeln!(md, "|---|---|---|---|---|");
    for r in rows {
        let m = r.mainline.as_ref();
        for (name, o, t, lower) in [
            (
                "network formed (s)",
                r.ours.formation_s,
                m.map(|m| m.formation_s),
                true,
            ),
            (
                "puts/s from one node (32 in flight)",
                r.ours.puts_per_s,
                m.map(|m| m.puts_per_s),
                false,
            ),
            (
                "failed operations",
                r.ours.failures as f64,
                m.map(|m| m.failures as f64),
                true,
            ),
        ]
        .into_iter()
        .chain(
            ["put", "get first valid", "get best-of-quorum / most recent"]
                .into_iter()
                .enumerate()
                .flat_map(|(i, op)| {
                    [
                        (
                            leak(format!("{op}: requests sent per op (kad + item)")),
                            r.ours.wire[i].requests,
                            None,
                            true,
                        ),
                        (
                            leak(format!("{op}: bytes on the wire per op")),
                            r.ours.wire[i].bytes,
                            m.map(|m| m.wire[i].bytes),
                            true,
                        ),
                    ]
                }),
        ) {
            let _ = writeln!(
                md,
                "| {} | {name} | {o:.2} | {} | {} |",
                r.size,
                t.map_or("-".into(), |t| format!("{t:.2}")),
                match t {
                    Some(t) if lower => crate::ratio(o, t),
                    Some(t) => crate::ratio(t, o),
                    None => "-".into(),
                }
            );
        }
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_message_layout() {
        let mut m = Vec::new();
        nfnl_msg(
            &mut m,
            NFQNL_MSG_CONFIG,
            5,
            9,
            3,
            &[(NFQA_CFG_PARAMS, &[0, 0, 0, 64, 2])],
        );
        // 16 header + 4 nfgenmsg + 4 attribute header + 5 data padded to 8.
        assert_eq!(m.len(), 32);
        assert_eq!(u32::from_ne_bytes(m[..4].try_into().unwrap()), 32);
        assert_eq!(u16::from_ne_bytes(m[4..6].try_into().unwrap()), 0x0302);
        assert_eq!(&m[18..20], &3u16.to_be_bytes());
        assert_eq!(u16::from_ne_bytes(m[20..22].try_into().unwrap()), 9);
    }

    #[test]
    fn parses_packets_and_acks() {
        let mut buf = Vec::new();
        let mut hdr = 77u32.to_be_bytes().to_vec();
        hdr.extend_from_slice(&[8, 0, 3]);
        let ip = [
            0x45u8, 0, 0, 40, 0, 0, 0, 0, 64, 6, 0, 0, 127, 0, 0, 1, 127, 0, 0, 1, 0x1f, 0x90,
            0x30, 0x39,
        ];
        nfnl_msg(
            &mut buf,
            NFQNL_MSG_PACKET,
            0,
            0,
            0,
            &[(NFQA_PACKET_HDR, &hdr), (NFQA_PAYLOAD, &ip)],
        );
        // An acknowledgement: NLMSG_ERROR with error 0.
        buf.extend_from_slice(&36u32.to_ne_bytes());
        buf.extend_from_slice(&(libc::NLMSG_ERROR as u16).to_ne_bytes());
        buf.extend_from_slice(&[0; 10]);
        buf.extend_from_slice(&0i32.to_ne_bytes());
        buf.extend_from_slice(&[0; 16]);
        let (mut packets, mut acks) = (Vec::new(), Vec::new());
        parse(
            &buf,
            |p| packets.push((p.id, p.head.to_vec())),
            |e| acks.push(e),
        );
        assert_eq!(packets, vec![(77, ip.to_vec())]);
        assert_eq!(acks, vec![0]);
        let flow = flow_of(&ip).unwrap();
        assert_eq!(flow[8], 6);
        assert_eq!(&flow[9..], &[0x1f, 0x90, 0x30, 0x39]);
    }
}
