//! Linux network namespaces for the fault tests: a namespace per process, veth links between
//! them, and faults made on those links with `tc` — silent drops (an ingress `clsact` filter
//! redirecting every packet, or a random share of them, into a veth that is down), and rate
//! limits (`tbf`). The kernel here has no `sch_netem` and no `act_gact`: a drop is a `mirred`
//! redirect into a downed device, random loss a classic-BPF `ld rand` classifier in front of it.
//!
//! Nothing is done in the root namespace but creating and deleting the test's own namespaces:
//! every address, link and qdisc lives inside them. Names carry the test process's id and a
//! counter (`tejf<pid>x<n><role>`), so the tests of one binary can run side by side, and
//! namespaces left by a killed run are deleted by the next one ([`sweep_stale`]). A [`Netns`]
//! deletes itself when dropped (its links with it), even while a test panics.
//!
//! The test process reaches a process inside a namespace through sockets made in it
//! ([`Netns::run_in`]: a thread that has entered the namespace creates the socket; the socket stays
//! in that namespace wherever it is used afterwards).
//!
//! Needs root and `ip`/`tc` (iproute2). [`available`] says whether they work here; outside CI it
//! prints `SKIPPED` when they do not, under `CI` it fails.
#![allow(dead_code)]

use std::fs::File;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// The prefix of every namespace these tests make (`ip netns list` shows them while they run).
const PREFIX: &str = "tejf";

/// The veth end in each namespace that is kept down: redirecting a packet into it drops it.
const SINK: &str = "sink0";

/// Runs `ip ARGS`; `Err` carries its stderr.
pub fn ip(args: &[&str]) -> Result<(), String> {
    run("ip", args)
}

/// Runs `tc -n NS ARGS`; `Err` carries its stderr.
pub fn tc(ns: &str, args: &[&str]) -> Result<(), String> {
    let mut all = vec!["-n", ns];
    all.extend_from_slice(args);
    run("tc", &all)
}

fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|error| format!("{program} {args:?}: {error}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {args:?}: {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// Whether namespaces can be made here (root, iproute2, veth). When they cannot: under `CI` a
/// failure, elsewhere `SKIPPED <test>` on stderr and `false`.
pub fn available(test: &str) -> bool {
    let probe = format!("{PREFIX}{}probe{}", std::process::id(), next_counter());
    let works = ip(&["netns", "add", &probe]).and_then(|()| {
        let veth = ip(&[
            "-n", &probe, "link", "add", "p0", "type", "veth", "peer", "name", "p1",
        ]);
        let _ = ip(&["netns", "del", &probe]);
        veth
    });
    match works {
        Ok(()) => true,
        Err(error) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "network namespaces are not available under CI (run as root with iproute2): {error}"
            );
            eprintln!(
                "SKIPPED {test}: network namespaces are not available (needs root and iproute2): \
                 {error}"
            );
            false
        }
    }
}

fn next_counter() -> u32 {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

/// A fresh tag for one test's namespaces: `tejf<pid>x<n>`.
pub fn unique_tag() -> String {
    format!("{PREFIX}{}x{}", std::process::id(), next_counter())
}

/// Deletes the namespaces of earlier test processes that are gone (a run killed before its
/// `Drop`s ran).
pub fn sweep_stale() {
    let Ok(entries) = std::fs::read_dir("/var/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let pid: String = rest.chars().take_while(char::is_ascii_digit).collect();
        let gone = pid
            .parse::<u32>()
            .is_ok_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists());
        if gone {
            let _ = ip(&["netns", "del", &name]);
        }
    }
}

/// `f`'s result, run on a thread that has entered the namespace `ns`. Sockets `f` creates stay
/// in the namespace after the thread ends.
pub fn run_in<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                enter(ns);
                f()
            })
            .join()
            .expect("the thread inside the namespace panicked")
    })
}

/// Moves the calling thread into the namespace `ns` for good (for threads of the harness's own,
/// such as a relay's: every socket they make is then in `ns`).
pub fn enter(ns: &str) {
    let path = format!("/var/run/netns/{ns}");
    let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
    rustix::thread::move_into_link_name_space(
        std::os::fd::AsFd::as_fd(&file),
        Some(rustix::thread::LinkNameSpaceType::Network),
    )
    .unwrap_or_else(|e| panic!("setns into {path}: {e}"));
}

/// One network namespace, deleted when dropped. Its loopback is up, and it holds a downed veth
/// pair ([`SINK`]) that drop faults redirect packets into.
pub struct Netns {
    name: String,
}

impl Netns {
    /// Makes the namespace `name` (see [`unique_tag`]).
    pub fn create(name: &str) -> Netns {
        ip(&["netns", "add", name]).unwrap_or_else(|error| panic!("{error}"));
        let ns = Netns {
            name: name.to_owned(),
        };
        ns.ip(&["link", "set", "lo", "up"]);
        ns.ip(&["link", "add", SINK, "type", "veth", "peer", "name", "sink1"]);
        ns
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip -n NAME ARGS`, panicking on failure.
    pub fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all).unwrap_or_else(|error| panic!("{error}"));
    }

    /// Runs `tc -n NAME ARGS`, panicking on failure.
    pub fn tc(&self, args: &[&str]) {
        tc(&self.name, args).unwrap_or_else(|error| panic!("{error}"));
    }

    /// `ip netns exec NAME program`: a command whose process runs in the namespace (`ip` execs
    /// the program, so the child's process id is the program's).
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name, program]);
        command
    }

    /// `f`'s result, run on a thread that has entered this namespace (see [`run_in`]).
    pub fn run_in<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        run_in(&self.name, f)
    }

    /// A TCP connection from inside this namespace to `addr`, within `limit`.
    pub fn tcp_connect(&self, addr: SocketAddr, limit: Duration) -> io::Result<TcpStream> {
        self.run_in(|| TcpStream::connect_timeout(&addr, limit))
    }

    /// A listener bound inside this namespace.
    pub fn tcp_listen(&self, addr: SocketAddr) -> io::Result<TcpListener> {
        self.run_in(|| TcpListener::bind(addr))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace deletes its veth ends (and so their peers).
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// A direction on a [`Link`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    /// Both ways.
    Both,
    /// From the left end's namespace to the right end's.
    LeftToRight,
    /// From the right end's namespace to the left end's.
    RightToLeft,
}

/// One end of a [`Link`]: the namespace's name, the interface, its address.
#[derive(Clone, Debug)]
pub struct End {
    /// The namespace holding this end.
    pub ns: String,
    /// The interface's name inside it.
    pub dev: String,
    /// Its address (a /30 shared with the other end).
    pub addr: Ipv4Addr,
}

/// A veth pair between two namespaces, addressed `10.77.<subnet>.1` (left) and `.2` (right),
/// with a `clsact` qdisc on both ends for faults. Goes away with its namespaces.
pub struct Link {
    /// The left end.
    pub left: End,
    /// The right end.
    pub right: End,
}

/// The classic BPF program (`tc ... bpf bytecode`) matching a random share of packets:
/// `A = random; if A >= threshold: no match; else match`. `SKF_AD_OFF + SKF_AD_RANDOM` is
/// `-0x1000 + 56`.
fn random_match_bytecode(share: f64) -> String {
    let threshold = (share.clamp(0.0, 1.0) * f64::from(u32::MAX)) as u32;
    format!("4,32 0 0 4294963256,53 1 0 {threshold},6 0 0 4294967295,6 0 0 0")
}

impl Link {
    /// A veth pair: `left_dev` in `left`, `right_dev` in `right`, on subnet `10.77.<subnet>.0/30`.
    pub fn new(left: &Netns, left_dev: &str, right: &Netns, right_dev: &str, subnet: u8) -> Link {
        ip(&[
            "link",
            "add",
            left_dev,
            "netns",
            left.name(),
            "type",
            "veth",
            "peer",
            "name",
            right_dev,
            "netns",
            right.name(),
        ])
        .unwrap_or_else(|error| panic!("{error}"));
        let link = Link {
            left: End {
                ns: left.name().to_owned(),
                dev: left_dev.to_owned(),
                addr: Ipv4Addr::new(10, 77, subnet, 1),
            },
            right: End {
                ns: right.name().to_owned(),
                dev: right_dev.to_owned(),
                addr: Ipv4Addr::new(10, 77, subnet, 2),
            },
        };
        for end in [&link.left, &link.right] {
            let cidr = format!("{}/30", end.addr);
            ip(&["-n", &end.ns, "addr", "add", &cidr, "dev", &end.dev])
                .and_then(|()| ip(&["-n", &end.ns, "link", "set", &end.dev, "up"]))
                .and_then(|()| tc(&end.ns, &["qdisc", "add", "dev", &end.dev, "clsact"]))
                .unwrap_or_else(|error| panic!("{error}"));
        }
        link
    }

    /// The ends receiving traffic in `dir` (a drop is made at the receiver's ingress, so the
    /// sender's stack sees a packet that left and was lost on the way — nothing local fails).
    fn receivers(&self, dir: Dir) -> Vec<&End> {
        match dir {
            Dir::Both => vec![&self.left, &self.right],
            Dir::LeftToRight => vec![&self.right],
            Dir::RightToLeft => vec![&self.left],
        }
    }

    /// Silently drops every packet going `dir`, until [`heal`](Self::heal).
    pub fn drop_all(&self, dir: Dir) {
        for end in self.receivers(dir) {
            tc(
                &end.ns,
                &[
                    "filter", "add", "dev", &end.dev, "ingress", "u32", "match", "u32", "0", "0",
                    "action", "mirred", "egress", "redirect", "dev", SINK,
                ],
            )
            .unwrap_or_else(|error| panic!("{error}"));
        }
    }

    /// Silently drops a random `share` (0.0–1.0) of the packets going `dir`, until
    /// [`heal`](Self::heal).
    pub fn lose(&self, dir: Dir, share: f64) {
        let program = random_match_bytecode(share);
        for end in self.receivers(dir) {
            tc(
                &end.ns,
                &[
                    "filter", "add", "dev", &end.dev, "ingress", "bpf", "bytecode", &program,
                    "action", "mirred", "egress", "redirect", "dev", SINK,
                ],
            )
            .unwrap_or_else(|error| panic!("{error}"));
        }
    }

    /// Limits traffic going `dir` (one direction: `LeftToRight` or `RightToLeft`) to
    /// `bytes_per_sec` with a `tbf` on the sender's egress (burst 32 KiB, 1 s of queue), until
    /// [`heal`](Self::heal).
    pub fn rate_limit(&self, dir: Dir, bytes_per_sec: u64) {
        let sender = match dir {
            Dir::LeftToRight => &self.left,
            Dir::RightToLeft => &self.right,
            Dir::Both => panic!("rate_limit takes one direction"),
        };
        let rate = format!("{}bit", bytes_per_sec * 8);
        tc(
            &sender.ns,
            &[
                "qdisc",
                "add",
                "dev",
                &sender.dev,
                "root",
                "tbf",
                "rate",
                &rate,
                "burst",
                "32kb",
                "latency",
                "1s",
            ],
        )
        .unwrap_or_else(|error| panic!("{error}"));
    }

    /// Removes every fault from both ends: the ingress filters and any rate limit.
    pub fn heal(&self) {
        for end in [&self.left, &self.right] {
            // Either may be absent; what matters is that neither is left.
            let _ = tc(&end.ns, &["filter", "del", "dev", &end.dev, "ingress"]);
            let _ = tc(&end.ns, &["qdisc", "del", "dev", &end.dev, "root"]);
        }
    }
}
