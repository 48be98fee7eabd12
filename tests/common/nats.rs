//! A real `nats-server` (the Debian package) for the cluster tests: one server, or two joined by a
//! route, on loopback ports chosen free at start; killed when dropped, and killable and
//! restartable on the same ports to play a NATS outage.
//!
//! Included by a test file with `#[path = "common/nats.rs"] mod nats;`. Where `nats-server` is not
//! installed, [`NatsServer::start`] and [`NatsServer::cluster_pair`] print `SKIPPED` and return
//! `None` — unless `CI` is set, where a missing server is a failure (`scripts/test` installs it).
#![allow(dead_code)]

/// The monitoring client, also for the hubs' own `/varz` (a test file must not load
/// `common/http.rs` a second time).
#[path = "http.rs"]
pub mod http;
/// Network namespaces, for a server started in one ([`NatsServer::start_in`]).
#[path = "netns.rs"]
pub mod netns;

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a server may take to accept connections (and a pair to join).
const STARTUP: Duration = Duration::from_secs(10);
/// How many times a start is retried with fresh ports when another process took one first.
const PORT_RACE_RETRIES: usize = 5;
/// The `--cluster_name` of [`NatsServer::cluster_pair`].
pub const CLUSTER_NAME: &str = "tejtest";

/// One `nats-server` process on `127.0.0.1` (or on every address of a network namespace), with
/// its monitoring port (`-m`).
pub struct NatsServer {
    child: Option<Child>,
    /// The client port (`nats://127.0.0.1:PORT`).
    pub port: u16,
    /// The monitoring (HTTP) port: `/varz`, `/routez`.
    pub monitor_port: u16,
    /// The route port, for a member of [`cluster_pair`](Self::cluster_pair).
    pub cluster_port: Option<u16>,
    /// Arguments beyond `-a 127.0.0.1 -p PORT -m MONITOR` (the cluster flags), kept for
    /// [`restart`](Self::restart).
    extra: Vec<String>,
    /// Its log lines (stderr), from every run.
    logs: Arc<Mutex<Vec<String>>>,
    /// The network namespace it runs in (listening on `0.0.0.0` there), if not the test's own.
    netns: Option<String>,
}

/// Whether `nats-server` runs here; if not, fails under `CI` and otherwise prints `SKIPPED`.
pub fn available(test: &str) -> bool {
    let installed = Command::new("nats-server")
        .arg("--version")
        .output()
        .is_ok_and(|output| output.status.success());
    if !installed {
        assert!(
            std::env::var_os("CI").is_none(),
            "nats-server is not installed; scripts/test installs it (apt-get install nats-server)"
        );
        eprintln!("SKIPPED {test}: nats-server is not installed (scripts/test installs it)");
    }
    installed
}

/// `n` distinct ports that were free a moment ago (all bound at once, then released).
fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0"))
        .collect();
    listeners
        .iter()
        .map(|listener| listener.local_addr().expect("local address").port())
        .collect()
}

impl NatsServer {
    /// A single server on free ports, accepting connections; `None` (after printing `SKIPPED`)
    /// when `nats-server` is not installed outside CI.
    pub fn start(test: &str) -> Option<NatsServer> {
        NatsServer::start_with(test, &[])
    }

    /// As [`start`](Self::start), with more `nats-server` flags (e.g. `--user`, `--pass`).
    pub fn start_with(test: &str, flags: &[&str]) -> Option<NatsServer> {
        if !available(test) {
            return None;
        }
        let flags: Vec<String> = flags.iter().map(|flag| (*flag).to_owned()).collect();
        for _ in 0..PORT_RACE_RETRIES {
            let ports = free_ports(2);
            let mut server = NatsServer::new(ports[0], ports[1], None, flags.clone());
            server.spawn();
            if server.wait_ready().is_ok() {
                return Some(server);
            }
            // Most likely another process took a port between our probe and the server's bind.
            server.kill();
        }
        panic!("nats-server did not start in {PORT_RACE_RETRIES} tries with fresh ports");
    }

    /// Two servers joined by a route (`--cluster_name tejtest`, each soliciting the other), both
    /// accepting connections and each with at least one route up (`/routez`).
    pub fn cluster_pair(test: &str) -> Option<(NatsServer, NatsServer)> {
        if !available(test) {
            return None;
        }
        let mut last = String::new();
        for _ in 0..PORT_RACE_RETRIES {
            let ports = free_ports(6);
            let flags = |own: u16, other: u16| {
                vec![
                    "--cluster".to_owned(),
                    format!("nats://127.0.0.1:{own}"),
                    "--cluster_name".to_owned(),
                    CLUSTER_NAME.to_owned(),
                    "--routes".to_owned(),
                    format!("nats://127.0.0.1:{other}"),
                ]
            };
            let mut one = NatsServer::new(
                ports[0],
                ports[1],
                Some(ports[2]),
                flags(ports[2], ports[5]),
            );
            let mut two = NatsServer::new(
                ports[3],
                ports[4],
                Some(ports[5]),
                flags(ports[5], ports[2]),
            );
            one.spawn();
            two.spawn();
            let ready = one
                .wait_ready()
                .and_then(|()| two.wait_ready())
                .and_then(|()| wait_routed(&one, &two));
            match ready {
                Ok(()) => return Some((one, two)),
                Err(error) => last = error,
            }
            one.kill();
            two.kill();
        }
        panic!("the nats-server pair did not start in {PORT_RACE_RETRIES} tries: {last}");
    }

    /// A server in the network namespace `ns`, listening on all its addresses on ports 4222
    /// (clients) and 8222 (monitoring) — the namespace is the test's own, so they are free — and
    /// accepting connections. Whether `nats-server` is installed is the caller's check
    /// ([`available`]).
    pub fn start_in(ns: &str) -> NatsServer {
        let mut server = NatsServer::new(4222, 8222, None, Vec::new());
        server.netns = Some(ns.to_owned());
        server.spawn();
        if let Err(error) = server.wait_ready() {
            panic!("nats-server in namespace {ns} did not start: {error}");
        }
        server
    }

    fn new(port: u16, monitor_port: u16, cluster_port: Option<u16>, extra: Vec<String>) -> Self {
        NatsServer {
            child: None,
            port,
            monitor_port,
            cluster_port,
            extra,
            logs: Arc::new(Mutex::new(Vec::new())),
            netns: None,
        }
    }

    /// `f`'s result, run inside the server's namespace (where its loopback addresses are).
    fn reach<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        match &self.netns {
            Some(ns) => netns::run_in(ns, f),
            None => f(),
        }
    }

    /// Starts the process on this server's ports (without waiting for it).
    fn spawn(&mut self) {
        let (mut command, host) = match &self.netns {
            Some(ns) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", ns, "nats-server"]);
                (command, "0.0.0.0")
            }
            None => (Command::new("nats-server"), "127.0.0.1"),
        };
        let mut child = command
            .args(["-a", host, "-p", &self.port.to_string()])
            .args(["-m", &self.monitor_port.to_string()])
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start nats-server");
        let stderr = child.stderr.take().expect("stderr is piped");
        let sink = self.logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().expect("log lock").push(line);
            }
        });
        self.child = Some(child);
    }

    /// Waits until the process accepts a client connection and greets it with its `INFO` line,
    /// and its monitoring port answers; `Err` if it exits or takes longer than [`STARTUP`].
    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + STARTUP;
        loop {
            if let Some(status) = self.exited() {
                return Err(format!(
                    "nats-server on port {} exited ({status}): {:?}",
                    self.port,
                    self.logs()
                ));
            }
            let (client, monitor) = (self.client_addr(), self.monitor_addr());
            if self.reach(|| greets(client) && answers(monitor)) {
                // A server of someone else's on one of our ports would pass the probes; ours
                // exits when a port is taken, so check that it still runs.
                std::thread::sleep(Duration::from_millis(20));
                if self.exited().is_none() {
                    return Ok(());
                }
                continue;
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "nats-server on port {} not ready after {STARTUP:?}: {:?}",
                    self.port,
                    self.logs()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The process's exit status, if it has exited (or was never started).
    fn exited(&mut self) -> Option<String> {
        match &mut self.child {
            None => Some("not running".to_owned()),
            Some(child) => child
                .try_wait()
                .expect("poll nats-server")
                .map(|status| status.to_string()),
        }
    }

    /// Where clients connect (inside its namespace, if it has one).
    pub fn client_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Where the monitoring endpoints answer.
    pub fn monitor_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.monitor_port))
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL) and waits for it; its ports stay this server's for
    /// [`restart`](Self::restart). Harmless when it is not running.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same ports (killing it first if it runs) and waits until it
    /// accepts connections. For a member of a pair, waiting for its route is up to the caller
    /// ([`routes`](Self::routes)).
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + STARTUP;
        loop {
            self.spawn();
            match self.wait_ready() {
                Ok(()) => return,
                // The old process's sockets may linger a moment; try again until the deadline.
                Err(error) if Instant::now() >= deadline => {
                    panic!("nats-server did not restart on port {}: {error}", self.port)
                }
                Err(_) => {
                    self.kill();
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }

    /// Whether the process is running.
    pub fn is_running(&mut self) -> bool {
        self.exited().is_none()
    }

    /// `/varz` from the monitoring port (`in_msgs`, `in_bytes`, `out_msgs`, `out_bytes`, ...).
    pub fn varz(&self) -> serde_json::Value {
        self.monitor("/varz")
    }

    /// `/routez` `num_routes`.
    pub fn routes(&self) -> u64 {
        self.monitor("/routez")["num_routes"]
            .as_u64()
            .expect("num_routes in /routez")
    }

    /// `GET path` from the monitoring port, as JSON (a blocking call, quick on loopback).
    pub fn monitor(&self, path: &str) -> serde_json::Value {
        let addr = self.monitor_addr();
        let answer = self.reach(|| http::get(addr, path));
        assert_eq!(answer.status, 200, "GET {path}: {answer:?}");
        answer.json()
    }

    /// The server's log lines so far (stderr of every run).
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().expect("log lock").clone()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let logs = self.logs();
            eprintln!("--- nats-server on port {}, last log lines:", self.port);
            for line in &logs[logs.len().saturating_sub(20)..] {
                eprintln!("{line}");
            }
        }
        self.kill();
    }
}

/// Whether a NATS server at `addr` accepts a connection and sends its `INFO` line.
fn greets(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let mut seen = Vec::new();
    let mut chunk = [0u8; 512];
    while !seen.contains(&b'\n') && seen.len() < 16 * 1024 {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return false,
            Ok(n) => seen.extend_from_slice(&chunk[..n]),
        }
    }
    seen.starts_with(b"INFO ")
}

/// Whether something accepts connections at `addr`.
fn answers(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
}

/// Waits until both members of a pair report a route (`/routez` `num_routes` ≥ 1).
fn wait_routed(one: &NatsServer, two: &NatsServer) -> Result<(), String> {
    let deadline = Instant::now() + STARTUP;
    loop {
        let (a, b) = (one.routes(), two.routes());
        if a >= 1 && b >= 1 {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "routes not up after {STARTUP:?} ({a} and {b}): {:?} {:?}",
                one.logs(),
                two.logs()
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
