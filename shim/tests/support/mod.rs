//! Test support: a real nameserver, real C programs under the real shim,
//! on one machine or on emulated hosts (network namespaces joined by a
//! bridge).
//!
//! Needs `cargo build --release` (for `target/release/libkdipc.so` and
//! `target/release/kdipc`) and `c-tests/build.sh` (for `c-tests/bin/*`);
//! `scripts/test` does both.

#![allow(dead_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root().join("target"))
}

pub fn lib() -> PathBuf {
    let p = target_dir().join("release/libkdipc.so");
    assert!(p.is_file(), "{} missing: run `cargo build --release` (scripts/test does)", p.display());
    p
}

pub fn kdipc() -> PathBuf {
    let p = target_dir().join("release/kdipc");
    assert!(p.is_file(), "{} missing: run `cargo build --release` (scripts/test does)", p.display());
    p
}

pub fn prog(name: &str) -> PathBuf {
    let p = root().join("c-tests/bin").join(name);
    assert!(p.is_file(), "{} missing: run c-tests/build.sh (scripts/test does)", p.display());
    p
}

/// Iterations: the default, or `long` when `KDIPC_LONG=1`.
pub fn iters(default: u32, long: u32) -> u32 {
    if std::env::var("KDIPC_LONG").is_ok_and(|v| v == "1") {
        long
    } else {
        default
    }
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

static KEYS: AtomicU32 = AtomicU32::new(0);

/// A fresh System V key for one test run. Keys are 64 apart: a program may
/// use the keys just above its own (heat publishes each rank's step at
/// `key + rank + 1`), and tests running in parallel threads of one binary
/// must not collide on those (a heat run's step segment once took the key
/// of the matmul run that started next, and its larger `shmget` got
/// `EINVAL`).
pub fn fresh_key() -> String {
    let n = KEYS.fetch_add(1, Ordering::SeqCst);
    format!("{:#x}", 0x4b00_0000u32 | ((std::process::id() & 0xfff) << 12) | ((n & 0x3f) << 6))
}

fn temp_dir(tag: &str) -> PathBuf {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let d = std::env::temp_dir().join(format!("kdipc-test-{}-{tag}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The log without its colours (escape sequences).
pub fn plain(log: &str) -> String {
    let mut out = String::with_capacity(log.len());
    let mut esc = false;
    for ch in log.chars() {
        match (esc, ch) {
            (false, '\x1b') => esc = true,
            (false, _) => out.push(ch),
            (true, 'm') => esc = false,
            (true, _) => {}
        }
    }
    out
}

/// The result of one process.
#[derive(Debug)]
pub struct Outcome {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Outcome {
    pub fn signal(&self) -> Option<i32> {
        use std::os::unix::process::ExitStatusExt;
        self.status.signal()
    }

    pub fn assert_ok(&self, what: &str) {
        assert!(
            self.status.success(),
            "{what} failed ({}):\nstdout:\n{}\nstderr:\n{}",
            self.status,
            self.stdout,
            self.stderr
        );
    }
}

/// Emulated hosts: network namespaces on one bridge.
struct Hosts {
    tag: String,
    /// 10.X.Y.0/24
    prefix: String,
    n: usize,
}

/// Serializes the emulated-host tests (they share `ip` state).
static NETNS: Mutex<()> = Mutex::new(());

fn sh(cmd: &str) {
    let st = Command::new("sh").arg("-c").arg(cmd).status().expect("sh");
    assert!(st.success(), "`{cmd}` failed");
}

impl Hosts {
    /// Host 0 runs the nameserver; hosts 1..=n the ranks.
    fn new(n: usize) -> Hosts {
        let id = (std::process::id() % 200) as usize;
        let tag = format!("kd{id}");
        let prefix = format!("10.213.{id}");
        let h = Hosts { tag, prefix, n };
        h.cleanup();
        let br = format!("{}-br", h.tag);
        sh(&format!(
            "ip netns add {br} && ip -n {br} link add br0 type bridge && ip -n {br} link set br0 up"
        ));
        for i in 0..=n {
            let ns = h.ns(i);
            sh(&format!(
                "ip netns add {ns} && ip link add {t}v{i} netns {br} type veth peer name eth0 netns {ns} && \
                 ip -n {br} link set {t}v{i} master br0 up && ip -n {ns} addr add {ip}/24 dev eth0 && \
                 ip -n {ns} link set eth0 up && ip -n {ns} link set lo up",
                t = h.tag,
                ip = h.ip(i)
            ));
        }
        h
    }

    fn ns(&self, i: usize) -> String {
        format!("{}-h{i}", self.tag)
    }

    fn ip(&self, i: usize) -> String {
        format!("{}.{}", self.prefix, i + 1)
    }

    fn cleanup(&self) {
        for i in 0..=self.n.max(8) {
            let _ = Command::new("ip").args(["netns", "del", &self.ns(i)]).stderr(Stdio::null()).status();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &format!("{}-br", self.tag)])
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// A nameserver and the processes of one test.
pub struct Cluster {
    ns: Child,
    dir: PathBuf,
    addr: String,
    hosts: Option<Hosts>,
    /// Environment of the nameserver and of every command (e.g. the lease).
    env: Vec<(String, String)>,
    /// `kdipc nameserver --state` directory, if any (and `--fsync`).
    state: Option<PathBuf>,
    fsync: bool,
    _netns: Option<std::sync::MutexGuard<'static, ()>>,
}

/// Whether tests that need root can run; they must not be skipped in CI.
pub fn can_use_netns(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{test}: needs root, and CI=true forbids skipping"
        );
        eprintln!("SKIPPED {test}: emulated hosts need root (network namespaces)");
    }
    root
}

impl Cluster {
    /// A nameserver on loopback.
    pub fn local() -> Cluster {
        Self::start(None, None, &[])
    }

    /// A nameserver on host 0 and `n` emulated hosts for the ranks.
    pub fn hosts(n: usize) -> Cluster {
        Self::hosts_env(n, &[])
    }

    /// `local` with these variables for the nameserver and every process.
    pub fn local_env(env: &[(&str, &str)]) -> Cluster {
        Self::start(None, None, env)
    }

    /// `local_env`, `hosts_env` (`hosts` > 0) with a nameserver that
    /// keeps its state on disk (`--state`), so that it can be restarted.
    pub fn with_state(hosts: usize, env: &[(&str, &str)]) -> Cluster {
        let (h, guard) = if hosts > 0 {
            (Some(Hosts::new(hosts)), Some(NETNS.lock().unwrap_or_else(|e| e.into_inner())))
        } else {
            (None, None)
        };
        Self::launch(h, guard, env, true)
    }

    /// `with_state` on loopback, the nameserver syncing its writes
    /// (`--fsync`).
    pub fn with_synced_state() -> Cluster {
        let mut c = Self::launch(None, None, &[], true);
        c.fsync = true;
        c.restart_nameserver(Duration::ZERO);
        c
    }

    /// Kills the nameserver (SIGKILL), waits `down`, and starts it again
    /// on the same address and state directory; returns once it listens.
    pub fn restart_nameserver(&mut self, down: Duration) {
        assert!(self.state.is_some(), "restart_nameserver: a cluster made with_state");
        let _ = self.ns.kill();
        let _ = self.ns.wait();
        std::thread::sleep(down);
        let before = self.ns_log().matches("listening on").count();
        self.ns = spawn_ns(
            self.hosts.as_ref(),
            &self.addr,
            &self.dir,
            &self.env,
            self.state.as_deref(),
            self.fsync,
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.ns_log().matches("listening on").count() == before {
            assert!(Instant::now() < deadline, "nameserver did not restart:\n{}", self.ns_log());
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// `hosts` with these variables for the nameserver and every process.
    pub fn hosts_env(n: usize, env: &[(&str, &str)]) -> Cluster {
        let guard = NETNS.lock().unwrap_or_else(|e| e.into_inner());
        let hosts = Hosts::new(n);
        Self::start(Some(hosts), Some(guard), env)
    }

    /// Takes emulated host `host`'s (as in [`Self::command`]) network link
    /// down (`up == false`) or up again.
    pub fn set_link(&self, host: usize, up: bool) {
        let h = self.hosts.as_ref().expect("set_link: emulated hosts only");
        sh(&format!("ip -n {} link set eth0 {}", h.ns(1 + host % h.n), if up { "up" } else { "down" }));
    }

    fn start(
        hosts: Option<Hosts>,
        guard: Option<std::sync::MutexGuard<'static, ()>>,
        env: &[(&str, &str)],
    ) -> Cluster {
        Self::launch(hosts, guard, env, false)
    }

    fn launch(
        hosts: Option<Hosts>,
        guard: Option<std::sync::MutexGuard<'static, ()>>,
        env: &[(&str, &str)],
        state: bool,
    ) -> Cluster {
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let dir = temp_dir("cluster");
        let certs = dir.join("certs");
        let st =
            Command::new(kdipc()).args(["certs", "init"]).arg(&certs).stdout(Stdio::null()).status().unwrap();
        assert!(st.success());
        let listen = match &hosts {
            Some(h) => format!("{}:7350", h.ip(0)),
            None => {
                // A free UDP port on loopback.
                let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
                s.local_addr().unwrap().to_string()
            }
        };
        std::fs::File::create(dir.join("nameserver.log")).unwrap();
        let state = state.then(|| dir.join("state"));
        let ns = spawn_ns(hosts.as_ref(), &listen, &dir, &env, state.as_deref(), false);
        let c = Cluster { ns, dir, addr: listen, hosts, env, state, fsync: false, _netns: guard };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !c.ns_log().contains("listening on") {
            assert!(Instant::now() < deadline, "nameserver did not start:\n{}", c.ns_log());
            std::thread::sleep(Duration::from_millis(10));
        }
        c
    }

    pub fn ns_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("nameserver.log")).unwrap_or_default()
    }

    /// Number of emulated hosts for ranks (0: loopback).
    pub fn nhosts(&self) -> usize {
        self.hosts.as_ref().map_or(0, |h| h.n)
    }

    /// A command for `prog` under the shim, on host `host` (ranks are
    /// spread over hosts round-robin by the caller).
    pub fn command(&self, host: usize, prog: &Path) -> Command {
        let mut cmd = match &self.hosts {
            Some(h) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", &h.ns(1 + host % h.n)]).arg(prog);
                c.env("KDIPC_BIND", format!("{}:0", h.ip(1 + host % h.n)));
                c
            }
            None => Command::new(prog),
        };
        cmd.env("LD_PRELOAD", lib())
            .env("KDIPC_NAMESERVER", &self.addr)
            .env("KDIPC_CERT_DIR", self.dir.join("certs"))
            .env_remove("KDIPC_KEYS")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null());
        cmd
    }

    /// A `kdipc` command (not under the shim) talking to this cluster's
    /// nameserver (a loopback cluster's).
    pub fn kdipc_command(&self) -> Command {
        assert!(self.hosts.is_none(), "kdipc_command: loopback clusters only");
        let mut cmd = Command::new(kdipc());
        cmd.env("KDIPC_NAMESERVER", &self.addr)
            .env("KDIPC_CERT_DIR", self.dir.join("certs"))
            .env_remove("LD_PRELOAD");
        cmd
    }

    /// Runs `prog RANK NPROCS ARGS...` for every rank at once; waits for all
    /// (killing them after `timeout`).
    pub fn run_ranks(&self, name: &str, nprocs: usize, args: &[String], timeout: Duration) -> Vec<Outcome> {
        let children: Vec<Child> = (0..nprocs)
            .map(|rank| {
                let mut c = self.command(rank, &prog(name));
                c.arg(rank.to_string()).arg(nprocs.to_string()).args(args);
                c.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()
            })
            .collect();
        wait_all(children, timeout, &self.ns_log_path())
    }

    /// Runs one process with `args`.
    pub fn run(&self, name: &str, args: &[&str], timeout: Duration) -> Outcome {
        let mut c = self.command(0, &prog(name));
        c.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
        wait_all(vec![c.spawn().unwrap()], timeout, &self.ns_log_path()).pop().unwrap()
    }

    pub fn ns_log_path(&self) -> PathBuf {
        self.dir.join("nameserver.log")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.ns.kill();
        let _ = self.ns.wait();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Starts `kdipc nameserver` for a cluster (in host 0's namespace when
/// there are emulated hosts), its log appended to `dir/nameserver.log`.
fn spawn_ns(
    hosts: Option<&Hosts>,
    addr: &str,
    dir: &Path,
    env: &[(String, String)],
    state: Option<&Path>,
    fsync: bool,
) -> Child {
    let log = std::fs::OpenOptions::new().append(true).open(dir.join("nameserver.log")).unwrap();
    let mut cmd = match hosts {
        Some(h) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", &h.ns(0)]).arg(kdipc());
            c
        }
        None => Command::new(kdipc()),
    };
    cmd.args(["nameserver", "--listen", addr, "--cert-dir"]).arg(dir.join("certs"));
    if let Some(st) = state {
        cmd.arg("--state").arg(st);
        if fsync {
            cmd.arg("--fsync");
        }
    }
    cmd.env("KDIPC_LOG", std::env::var("KDIPC_LOG").unwrap_or_else(|_| "info".into()))
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::null())
        .stderr(log);
    cmd.spawn().unwrap()
}

/// Waits for every child; after `timeout` kills the rest and fails.
pub fn wait_all(mut children: Vec<Child>, timeout: Duration, ns_log: &Path) -> Vec<Outcome> {
    let deadline = Instant::now() + timeout;
    // Drain pipes in threads so that no child blocks on a full pipe.
    let readers: Vec<_> = children
        .iter_mut()
        .map(|c| {
            let mut out = c.stdout.take().unwrap();
            let mut err = c.stderr.take().unwrap();
            std::thread::spawn(move || {
                let (mut o, mut e) = (String::new(), String::new());
                let t = std::thread::spawn(move || {
                    let _ = err.read_to_string(&mut e);
                    e
                });
                let _ = out.read_to_string(&mut o);
                (o, t.join().unwrap_or_default())
            })
        })
        .collect();
    let mut statuses: Vec<Option<ExitStatus>> = vec![None; children.len()];
    let mut timed_out = false;
    while statuses.iter().any(Option::is_none) {
        for (c, s) in children.iter_mut().zip(statuses.iter_mut()) {
            if s.is_none() {
                *s = c.try_wait().unwrap();
            }
        }
        if Instant::now() > deadline && statuses.iter().any(Option::is_none) {
            timed_out = true;
            for c in children.iter_mut() {
                let _ = c.kill();
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let outs: Vec<Outcome> = readers
        .into_iter()
        .zip(statuses)
        .map(|(r, s)| {
            let (stdout, stderr) = r.join().unwrap();
            Outcome { status: s.unwrap(), stdout, stderr }
        })
        .collect();
    if timed_out {
        panic!(
            "timed out after {timeout:?}; outputs: {outs:#?}\nnameserver log:\n{}",
            std::fs::read_to_string(ns_log).unwrap_or_default()
        );
    }
    outs
}
