//! The `kdipc` command line, end to end: the real binary, real C programs
//! under the real shim, a real nameserver.
//!
//! Needs `cargo build --release` and `c-tests/build.sh` (scripts/test does
//! both); run with `cargo test --release -p kdipc-nameserver`.

#[path = "../../shim/tests/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{Cluster, Outcome};

const TIMEOUT: Duration = Duration::from_secs(60);

fn kdipc() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_kdipc"))
}

/// Runs `cmd` to completion (stdin closed, outputs captured).
fn outcome(mut cmd: Command) -> Outcome {
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    support::wait_all(vec![cmd.spawn().unwrap()], TIMEOUT, Path::new("/dev/null")).pop().unwrap()
}

/// `kdipc ARGS` with no KDIPC configuration from the environment.
fn kdipc_cmd(args: &[&str]) -> Command {
    let mut c = Command::new(kdipc());
    c.args(args).env_remove("LD_PRELOAD").env_remove("KDIPC_NAMESERVER").env_remove("KDIPC_CERT_DIR");
    c
}

fn run(args: &[&str]) -> Outcome {
    outcome(kdipc_cmd(args))
}

/// `kdipc ARGS` against the cluster's nameserver.
fn on(cluster: &Cluster, args: &[&str]) -> Outcome {
    let mut c = cluster.command(0, &kdipc());
    c.args(args).env_remove("LD_PRELOAD");
    outcome(c)
}

fn code(o: &Outcome) -> i32 {
    o.status.code().unwrap_or_else(|| panic!("killed: {o:?}"))
}

/// The one-line `kdipc: ...` error of a usage mistake, exit 2.
fn assert_usage_error(args: &[&str]) {
    let o = run(args);
    assert_eq!(code(&o), 2, "kdipc {args:?}: {o:?}");
    assert_eq!(o.stderr.lines().count(), 1, "kdipc {args:?}: one line expected: {o:?}");
    assert!(o.stderr.starts_with("kdipc: "), "kdipc {args:?}: {o:?}");
    assert!(o.stdout.is_empty(), "kdipc {args:?}: {o:?}");
}

#[test]
fn every_command_has_help_and_refuses_bad_arguments() {
    for args in [
        &["--help"][..],
        &["-h"],
        &["help"],
        &["help", "run"],
        &["nameserver", "--help"],
        &["run", "--help"],
        &["run", "-n", "2", "--help"],
        &["ipcs", "--help"],
        &["ipcs", "-m", "-h"],
        &["ipcrm", "--help"],
        &["ipcrm", "-m", "5", "--help"],
        &["certs", "--help"],
        &["certs", "init", "--help"],
    ] {
        let o = run(args);
        assert_eq!(code(&o), 0, "kdipc {args:?}: {o:?}");
        assert!(o.stdout.starts_with("usage: kdipc"), "kdipc {args:?}: {o:?}");
        assert!(o.stderr.is_empty(), "kdipc {args:?}: {o:?}");
    }
    assert!(!Path::new("--help").exists(), "certs init --help made a directory");
    for args in [
        &[][..],
        &["bogus"],
        &["help", "bogus"],
        &["nameserver", "--bogus"],
        &["nameserver", "--listen"],
        &["nameserver", "--listen", "not-an-address"],
        &["run"],
        &["run", "-n"],
        &["run", "-n", "0", "--", "true"],
        &["run", "-n", "x", "--", "true"],
        &["run", "-n", "2"],
        &["run", "-n", "2", "--"],
        &["run", "--bogus", "-n", "2", "--", "true"],
        &["run", "-n", "2", "--hosts"],
        &["run", "-n", "2", "--hosts", "", "--listen", "10.0.0.1:0", "--", "true"],
        &["run", "-n", "2", "--hosts", "a,,b", "--listen", "10.0.0.1:0", "--", "true"],
        &["run", "-n", "2", "--hosts", "../etc", "--listen", "10.0.0.1:0", "--", "true"],
        &["run", "-n", "2", "--hosts", "a", "--", "true"],
        &["run", "-n", "2", "--hosts", "a", "--listen", "127.0.0.1:0", "--", "true"],
        &["run", "-n", "2", "--listen", "0.0.0.0:0", "--", "true"],
        &["run", "-n", "2", "--listen", "somewhere", "--", "true"],
        &["ipcs", "-x"],
        &["ipcs", "extra"],
        &["ipcrm"],
        &["ipcrm", "-m"],
        &["ipcrm", "-m", "abc"],
        &["ipcrm", "-M", "0xzz"],
        &["ipcrm", "-s", "-1"],
        &["ipcrm", "-x", "5"],
        &["ipcrm", "5"],
        &["ipcrm", "--all=queues"],
        &["ipcrm", "-ax"],
        &["certs"],
        &["certs", "init"],
        &["certs", "bogus", "dir"],
    ] {
        assert_usage_error(args);
    }
}

#[test]
fn run_exit_status_is_the_worst_ranks() {
    let sh = |script: &str| run(&["run", "-n", "3", "--", "sh", "-c", script]);
    let o = sh("exit 0");
    assert_eq!(code(&o), 0, "{o:?}");
    let o = sh("exit $(( {rank} == 1 ? 3 : 0 ))");
    assert_eq!(code(&o), 3, "{o:?}");
    assert!(o.stderr.contains("rank 1 exited"), "{o:?}");
    let o = sh("[ {rank} = 2 ] && kill -9 $$; exit 1");
    assert_eq!(code(&o), 128 + 9, "a rank killed by SIGKILL: {o:?}");
    let o = run(&["run", "-n", "2", "--", "/nonexistent/program"]);
    assert_eq!(code(&o), 1, "{o:?}");
    assert!(o.stderr.starts_with("kdipc: run: /nonexistent/program"), "{o:?}");
    let o = run(&["run", "-n", "2", "--hosts", "kdipc-no-such-ns", "--listen", "10.0.0.1:0", "--", "true"]);
    assert_eq!(code(&o), 1, "{o:?}");
    assert_eq!(o.stderr.lines().count(), 1, "{o:?}");
    assert!(o.stderr.starts_with("kdipc: run: --hosts: network namespace kdipc-no-such-ns: "), "{o:?}");
}

#[test]
fn run_substitutes_the_rank_and_sets_the_environment() {
    let o = run(&["run", "-n", "3", "sh", "-c", "echo rank={rank} env=$KDIPC_RANK/$KDIPC_NPROCS"]);
    o.assert_ok("kdipc run sh");
    let mut lines: Vec<&str> = o.stdout.lines().collect();
    lines.sort();
    assert_eq!(lines, ["rank=0 env=0/3", "rank=1 env=1/3", "rank=2 env=2/3"], "{o:?}");
}

#[test]
fn run_runs_a_c_program_on_distributed_memory() {
    let key = support::fresh_key();
    let sb = support::prog("sb");
    let o = run(&["run", "-n", "2", "--", sb.to_str().unwrap(), "{rank}", "2", &key, "500"]);
    o.assert_ok("kdipc run sb");
    assert!(o.stdout.contains("sb rank 0: iters=500 forbidden=0"), "{o:?}");
    assert!(o.stdout.contains("sb rank 1: iters=500"), "{o:?}");
}

#[test]
fn run_tag_output_prefixes_every_line_with_the_rank() {
    let key = support::fresh_key();
    let sb = support::prog("sb");
    let o = run(&["run", "--tag-output", "-n", "2", "--", sb.to_str().unwrap(), "{rank}", "2", &key, "200"]);
    o.assert_ok("kdipc run --tag-output sb");
    assert!(o.stdout.lines().any(|l| l.starts_with("[0] sb rank 0: iters=200 forbidden=0")), "{o:?}");
    assert!(o.stdout.lines().any(|l| l.starts_with("[1] sb rank 1: iters=200")), "{o:?}");
    assert!(o.stdout.lines().all(|l| l.starts_with("[0] ") || l.starts_with("[1] ")), "{o:?}");

    let o = run(&["run", "--tag-output", "-n", "2", "--", "sh", "-c", "echo out; echo err >&2; printf tail"]);
    o.assert_ok("kdipc run --tag-output sh");
    let mut out: Vec<&str> = o.stdout.lines().collect();
    out.sort();
    assert_eq!(out, ["[0] out", "[0] tail", "[1] out", "[1] tail"], "{o:?}");
    let mut err: Vec<&str> = o.stderr.lines().collect();
    err.sort();
    assert_eq!(err, ["[0] err", "[1] err"], "{o:?}");
}

/// Processes whose parent is `pid`.
fn children_of(pid: u32) -> Vec<u32> {
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else { continue };
        // pid (comm) state ppid ...: comm may contain spaces and parens.
        let Some(rest) = stat.rsplit_once(')').map(|r| r.1) else { continue };
        if rest.split_whitespace().nth(1).and_then(|s| s.parse::<u32>().ok()) == Some(pid) {
            v.push(p);
        }
    }
    v
}

fn environ_var(pid: u32, name: &str) -> Option<String> {
    let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    env.split(|&b| b == 0).find_map(|kv| {
        let kv = String::from_utf8_lossy(kv);
        kv.strip_prefix(&format!("{name}=")).map(str::to_string)
    })
}

/// Whether process `pid` runs a KDIPC node (its runtime thread exists).
fn is_node(pid: u32) -> bool {
    std::fs::read_dir(format!("/proc/{pid}/task")).is_ok_and(|d| {
        d.flatten().any(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == "kdipc-runtime")
        })
    })
}

#[test]
fn ctrl_c_stops_every_rank_and_leaves_nothing_behind() {
    stop_leaves_nothing_behind(libc::SIGINT);
}

#[test]
fn sigterm_stops_every_rank_and_leaves_nothing_behind() {
    stop_leaves_nothing_behind(libc::SIGTERM);
}

/// `kdipc run` of two ranks busy on distributed memory, stopped by `sig`.
fn stop_leaves_nothing_behind(sig: i32) {
    let tmp = std::env::temp_dir().join(format!("kdipc-cli-test-{}-{sig}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).unwrap();
    // Two ranks busy on a distributed segment (pages moving) when stopped.
    let key = support::fresh_key();
    let sb = support::prog("sb");
    let sb = sb.to_str().unwrap();
    let mut cmd = kdipc_cmd(&["run", "-n", "2", "--", sb, "{rank}", "2", &key, "1000000"]);
    cmd.env("TMPDIR", &tmp).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    let mut child = cmd.spawn().unwrap();
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(20);
    let ranks = loop {
        let c = children_of(pid);
        if c.len() == 2 && c.iter().all(|&p| is_node(p)) {
            break c;
        }
        assert!(Instant::now() < deadline, "the ranks did not start: {c:?}");
        std::thread::sleep(Duration::from_millis(10));
    };
    let run_dirs: Vec<_> = std::fs::read_dir(&tmp).unwrap().flatten().map(|e| e.path()).collect();
    assert_eq!(run_dirs.len(), 1, "one private directory: {run_dirs:?}");
    assert!(run_dirs[0].file_name().unwrap().to_str().unwrap().starts_with("kdipc-run-"));
    let ns: std::net::SocketAddr = environ_var(ranks[0], "KDIPC_NAMESERVER").unwrap().parse().unwrap();
    assert!(std::net::UdpSocket::bind(ns).is_err(), "the embedded nameserver listens on {ns}");

    // SAFETY: signalling the child we spawned (not yet reaped).
    unsafe { libc::kill(pid as i32, sig) };
    let t = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if t.elapsed() > Duration::from_secs(5) {
            let _ = child.kill();
            panic!("kdipc run still running 5 s after signal {sig}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(status.code(), Some(128 + sig), "{status}");
    for r in &ranks {
        let alive = std::fs::read_to_string(format!("/proc/{r}/cmdline")).is_ok_and(|s| s.starts_with(sb));
        assert!(!alive, "rank process {r} survived");
    }
    // The segment never was a kernel object (`ipcs` shows nothing).
    let kernel = std::fs::read_to_string("/proc/sysvipc/shm").unwrap();
    let k = i64::from_str_radix(&key[2..], 16).unwrap().to_string();
    assert!(!kernel.lines().any(|l| l.split_whitespace().next() == Some(&k)), "kernel segment {key}");
    let left: Vec<_> = std::fs::read_dir(&tmp).unwrap().flatten().map(|e| e.path()).collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    assert!(std::net::UdpSocket::bind(ns).is_ok(), "the embedded nameserver still listens on {ns}");
    std::fs::remove_dir_all(&tmp).unwrap();
}

/// The row of `ipcs` output for `key`.
fn row<'a>(out: &'a str, key: &str) -> Option<Vec<&'a str>> {
    let k = format!("0x{:08x}", u32::from_str_radix(key.trim_start_matches("0x"), 16).unwrap());
    out.lines().find(|l| l.starts_with(&k)).map(|l| l.split_whitespace().collect())
}

/// `id=N` in a C program's output.
fn id_in(out: &str) -> String {
    out.split_whitespace()
        .find_map(|w| w.strip_prefix("id="))
        .unwrap_or_else(|| panic!("no id in {out:?}"))
        .into()
}

#[test]
fn ipcs_and_ipcrm_against_a_live_nameserver() {
    let c = Cluster::local();
    let o = on(&c, &["ipcs"]);
    o.assert_ok("ipcs, empty");
    assert_eq!(
        o.stdout,
        "\n------ Shared Memory Segments --------\n\
         key        shmid      owner      perms      bytes      nattch     status        away   copies\n\
         \n------ Semaphore Arrays --------\n\
         key        semid      owner      perms      nsems      node\n\n"
    );

    let (shm_key, sem_key, shm_key2, sem_key2) =
        (support::fresh_key(), support::fresh_key(), support::fresh_key(), support::fresh_key());
    c.run("persist", &["write", &shm_key, "4"], TIMEOUT).assert_ok("persist write");
    c.run("mksem", &[&sem_key, "3"], TIMEOUT).assert_ok("mksem");
    let shm_id2 = id_in(&c.run("persist", &["write", &shm_key2, "1"], TIMEOUT).stdout);
    let sem_id2 = id_in(&c.run("mksem", &[&sem_key2, "1"], TIMEOUT).stdout);

    let o = on(&c, &["ipcs"]);
    o.assert_ok("ipcs");
    // SAFETY: getpwuid in a test; the name is copied at once.
    let me = unsafe {
        let pw = libc::getpwuid(libc::geteuid());
        (!pw.is_null()).then(|| std::ffi::CStr::from_ptr((*pw).pw_name).to_string_lossy().into_owned())
    };
    let shm = row(&o.stdout, &shm_key).unwrap_or_else(|| panic!("segment not listed: {}", o.stdout));
    assert_eq!(&shm[3..], ["600", "16384", "0", "0", "0"], "perms bytes nattch away copies: {}", o.stdout);
    if let Some(me) = &me {
        assert_eq!(shm[2], &me[..me.len().min(10)], "{}", o.stdout);
    }
    let sem = row(&o.stdout, &sem_key).unwrap_or_else(|| panic!("set not listed: {}", o.stdout));
    assert_eq!(&sem[3..], ["600", "3", "nameserver"], "perms nsems node: {}", o.stdout);
    assert!(o.stdout.find("Shared Memory").unwrap() < o.stdout.find(&shm_key[2..]).unwrap());
    assert!(o.stdout.find("Semaphore Arrays").unwrap() < o.stdout.rfind(&sem_key[2..]).unwrap());
    assert_eq!(row(&o.stdout, &shm_key2).unwrap()[1], shm_id2);

    let m = on(&c, &["ipcs", "-m"]);
    assert!(row(&m.stdout, &shm_key).is_some() && !m.stdout.contains("Semaphore"), "{m:?}");
    let s = on(&c, &["ipcs", "-s"]);
    assert!(row(&s.stdout, &sem_key).is_some() && !s.stdout.contains("Shared Memory"), "{s:?}");

    // A segment a running process holds: its pages are away from home.
    let sb_key = support::fresh_key();
    let mut rank0 = c.command(0, &support::prog("sb"));
    rank0.args(["0", "2", &sb_key, "16"]).stdout(Stdio::piped()).stderr(Stdio::piped());
    let rank0 = rank0.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let o = on(&c, &["ipcs", "-m"]);
        if let Some(r) = row(&o.stdout, &sb_key) {
            if r[5] == "1" && r[6] != "0" {
                break;
            }
        }
        assert!(Instant::now() < deadline, "sb's segment never showed attached with pages away: {o:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let rank1 = c.run("sb", &["1", "2", &sb_key, "16"], TIMEOUT);
    rank1.assert_ok("sb rank 1");
    support::wait_all(vec![rank0], TIMEOUT, Path::new("/dev/null"))[0].assert_ok("sb rank 0");

    // Removal by key and by id (hexadecimal too), several at once.
    let sem_id2_hex = format!("{:#x}", sem_id2.parse::<u32>().unwrap());
    let o =
        on(&c, &["ipcrm", "-M", &shm_key, "-S", &sem_key, "-m", &shm_id2, "--semaphore-id", &sem_id2_hex]);
    o.assert_ok("ipcrm");
    assert!(o.stdout.is_empty() && o.stderr.is_empty(), "{o:?}");
    let o = on(&c, &["ipcs"]);
    for k in [&shm_key, &sem_key, &shm_key2, &sem_key2, &sb_key] {
        assert!(row(&o.stdout, k).is_none(), "{k} still listed: {}", o.stdout);
    }
    assert_eq!(o.stdout.lines().count(), 7, "nothing left: {}", o.stdout);

    // Errors per object, like util-linux; the others are still removed.
    c.run("mksem", &[&sem_key, "2"], TIMEOUT).assert_ok("mksem again");
    let o = on(&c, &["ipcrm", "-m", "12345", "-M", &shm_key, "-S", &sem_key, "-s", &sem_id2]);
    assert_eq!(code(&o), 1, "{o:?}");
    let errs: Vec<&str> = o.stderr.lines().collect();
    assert_eq!(
        errs,
        [
            "ipcrm: invalid id (12345)".to_string(),
            format!("ipcrm: invalid key ({shm_key})"),
            format!("ipcrm: invalid id ({sem_id2})"),
        ],
        "{o:?}"
    );
    assert!(row(&on(&c, &["ipcs", "-s"]).stdout, &sem_key).is_none(), "-S in a failing ipcrm still removes");
    let o = on(&c, &["ipcrm", "-M", "0"]);
    assert_eq!((code(&o), o.stderr.trim()), (1, "ipcrm: illegal key (0)"), "{o:?}");

    // -a: everything, or every object of one kind.
    let keys: Vec<String> = (0..4).map(|_| support::fresh_key()).collect();
    c.run("persist", &["write", &keys[0], "1"], TIMEOUT).assert_ok("persist write");
    c.run("persist", &["write", &keys[1], "1"], TIMEOUT).assert_ok("persist write");
    c.run("mksem", &[&keys[2], "1"], TIMEOUT).assert_ok("mksem");
    c.run("mksem", &[&keys[3], "1"], TIMEOUT).assert_ok("mksem");
    on(&c, &["ipcrm", "--all=sem"]).assert_ok("ipcrm --all=sem");
    let o = on(&c, &["ipcs"]);
    assert!(row(&o.stdout, &keys[0]).is_some() && row(&o.stdout, &keys[1]).is_some(), "{}", o.stdout);
    assert_eq!(o.stdout.lines().count(), 9, "two segments left: {}", o.stdout);
    c.run("mksem", &[&keys[2], "1"], TIMEOUT).assert_ok("mksem");
    on(&c, &["ipcrm", "--all=msg"]).assert_ok("ipcrm --all=msg");
    assert_eq!(on(&c, &["ipcs"]).stdout.lines().count(), 10, "--all=msg removes nothing");
    let o = on(&c, &["ipcrm", "-a"]);
    o.assert_ok("ipcrm -a");
    assert!(o.stdout.is_empty() && o.stderr.is_empty(), "{o:?}");
    assert_eq!(on(&c, &["ipcs"]).stdout.lines().count(), 7, "nothing left after ipcrm -a");
}

/// A process that read a segment and holds it until its stdin closes.
struct Holder {
    child: std::process::Child,
}

impl Holder {
    fn start(c: &Cluster, args: &[&str]) -> Holder {
        use std::io::BufRead;
        let mut cmd = c.command(0, &support::prog("holdread"));
        cmd.args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::inherit());
        let mut child = cmd.spawn().unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = std::io::BufReader::new(out).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(TIMEOUT).unwrap_or_else(|_| {
            let _ = child.kill();
            panic!("holdread printed nothing in time")
        });
        assert!(line.starts_with("holdread: "), "holdread: {line:?}");
        Holder { child }
    }

    /// Closes its stdin and waits for it to exit (successfully).
    fn stop(mut self) {
        drop(self.child.stdin.take());
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                assert!(st.success(), "holdread: {st}");
                return;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("holdread did not exit after its stdin closed");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn ipcs_copies_counts_the_nodes_holding_pages() {
    let c = Cluster::local();
    let key = support::fresh_key();
    // The writer exits: its pages go home, and home copies are not counted.
    c.run("persist", &["write", &key, "4"], TIMEOUT).assert_ok("persist write");
    let copies = |what: &str| {
        let o = on(&c, &["ipcs", "-m"]);
        o.assert_ok("ipcs -m");
        let r = row(&o.stdout, &key).unwrap_or_else(|| panic!("{what}: segment not listed: {}", o.stdout));
        assert_eq!(r.len(), 8, "{what}: key shmid owner perms bytes nattch away copies: {}", o.stdout);
        (r[5].to_string(), r[7].to_string())
    };
    assert_eq!(copies("after the writer"), ("0".into(), "0".into()), "nattch, copies");
    // Read by two nodes, which keep their copies.
    let a = Holder::start(&c, &[&key, "4"]);
    assert_eq!(copies("one reader"), ("1".into(), "1".into()), "nattch, copies");
    let sem_key = support::fresh_key();
    c.run("mksem", &[&sem_key, "1"], TIMEOUT).assert_ok("mksem");
    let sem_node = |what: &str| {
        let o = on(&c, &["ipcs", "-s"]);
        row(&o.stdout, &sem_key).unwrap_or_else(|| panic!("{what}: set not listed: {}", o.stdout))[5]
            .to_string()
    };
    assert_eq!(sem_node("unused set"), "nameserver");
    // The second reader also uses the set alone: it is lent to that node.
    let b = Holder::start(&c, &[&key, "4", &sem_key]);
    let lent = sem_node("set used by one node");
    assert!(lent.parse::<u32>().is_ok_and(|n| n > 0), "node column of a lent set: {lent:?}");
    assert_eq!(copies("two readers"), ("2".into(), "2".into()), "nattch, copies");
    // A reader that detached holds nothing.
    a.stop();
    assert_eq!(copies("one reader left"), ("1".into(), "1".into()), "nattch, copies");
    b.stop();
    assert_eq!(copies("no reader left"), ("0".into(), "0".into()), "nattch, copies");
    assert_eq!(sem_node("its user exited"), "nameserver", "a set goes home when its node exits");
    on(&c, &["ipcrm", "-M", &key, "-S", &sem_key]).assert_ok("ipcrm");
    let help = run(&["ipcs", "--help"]);
    assert!(help.stdout.contains("copies") && help.stdout.contains("at least one"), "{help:?}");
}

#[test]
fn ipcs_does_not_start_a_nameserver() {
    // Configured, but nothing listens: one line, exit 1, quickly.
    let free = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let certs = std::env::temp_dir().join(format!("kdipc-cli-none-{}", std::process::id()));
    for cmd in [&["ipcs"][..], &["ipcrm", "-m", "5"]] {
        let mut c = kdipc_cmd(cmd);
        c.env("KDIPC_NAMESERVER", free.to_string()).env("KDIPC_CERT_DIR", &certs);
        let t = Instant::now();
        let o = outcome(c);
        assert_eq!(code(&o), 1, "{o:?}");
        assert_eq!(o.stderr.lines().count(), 1, "{o:?}");
        assert!(o.stderr.starts_with(&format!("kdipc: {}: no nameserver at {free}", cmd[0])), "{o:?}");
        assert!(t.elapsed() < Duration::from_secs(5), "took {:?}", t.elapsed());
        assert!(std::net::UdpSocket::bind(free).is_ok(), "something listens on {free} now");
    }
    assert!(!certs.exists(), "credentials were made");
    // Nothing configured: the default nameserver is not started either.
    let default: std::net::SocketAddr = "127.0.0.1:7350".parse().unwrap();
    if std::net::UdpSocket::bind(default).is_err() {
        eprintln!("SKIPPED the unconfigured case: a nameserver runs on {default}");
        return;
    }
    let o = run(&["ipcs"]);
    assert_eq!(code(&o), 1, "{o:?}");
    assert!(o.stderr.starts_with("kdipc: ipcs: no nameserver at 127.0.0.1:7350"), "{o:?}");
    assert!(std::net::UdpSocket::bind(default).is_ok(), "kdipc ipcs started a nameserver");
}

/// The network namespace and address of emulated host `host`, as the
/// harness runs commands there (`ip netns exec NS ...`, `KDIPC_BIND=IP:0`).
fn netns(c: &Cluster, host: usize) -> (String, String) {
    let cmd = c.command(host, Path::new("true"));
    let args: Vec<_> = cmd.get_args().map(|a| a.to_str().unwrap().to_string()).collect();
    assert_eq!(&args[..2], ["netns", "exec"], "{args:?}");
    let bind = cmd.get_envs().find(|(k, _)| *k == "KDIPC_BIND").and_then(|(_, v)| v).unwrap();
    let ip = bind.to_str().unwrap().rsplit_once(':').unwrap().0.to_string();
    (args[2].clone(), ip)
}

#[test]
fn run_places_ranks_in_network_namespaces() {
    if !support::can_use_netns("run_places_ranks_in_network_namespaces") {
        return;
    }
    let c = Cluster::hosts(2);
    let (ns1, ip1) = netns(&c, 0);
    let (ns2, ip2) = netns(&c, 1);
    let hosts = format!("{ns1},{ns2}");
    let listen = format!("{ip1}:0");
    // kdipc run on host 1, its ranks round-robin on hosts 1 and 2.
    let on_host1 = |args: &[&str]| {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &ns1]).arg(kdipc()).args(["run", "--hosts", &hosts, "--listen", &listen]);
        cmd.args(args).env_remove("LD_PRELOAD").env_remove("KDIPC_NAMESERVER").env_remove("KDIPC_CERT_DIR");
        outcome(cmd)
    };
    let o =
        on_host1(&["-n", "4", "--", "sh", "-c", "echo {rank} $(ip -4 -o addr show eth0) $KDIPC_NAMESERVER"]);
    o.assert_ok("kdipc run --hosts sh");
    let mut lines: Vec<Vec<&str>> = o.stdout.lines().map(|l| l.split_whitespace().collect()).collect();
    lines.sort();
    assert_eq!(lines.len(), 4, "{o:?}");
    for (rank, l) in lines.iter().enumerate() {
        let ip = if rank % 2 == 0 { &ip1 } else { &ip2 };
        assert_eq!(l[0], rank.to_string(), "{o:?}");
        assert!(l.contains(&format!("{ip}/24").as_str()), "rank {rank} not on {ip}: {o:?}");
        assert!(l.last().unwrap().starts_with(&format!("{ip1}:")), "nameserver on host 1: {o:?}");
    }
    // A C program across the two hosts: pages and semaphores over the bridge.
    let key = support::fresh_key();
    let sb = support::prog("sb");
    let o = on_host1(&["-n", "2", "--", sb.to_str().unwrap(), "{rank}", "2", &key, "300"]);
    o.assert_ok("kdipc run --hosts sb");
    assert!(o.stdout.contains("sb rank 0: iters=300 forbidden=0"), "{o:?}");
    let hello = example_program();
    let o = on_host1(&["-n", "3", "--", hello.to_str().unwrap(), &support::fresh_key()]);
    o.assert_ok("kdipc run --hosts hello");
    assert_eq!(o.stdout, "hello: 3 ranks, total 6 (expected 6)\n", "{o:?}");
}

/// `examples/hello.c`, compiled against `c-tests/kdipc.h` (once).
fn example_program() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let out = std::env::temp_dir().join(format!("kdipc-cli-hello-{}", std::process::id()));
            let root = support::root();
            let st = Command::new("cc")
                .args(["-std=gnu11", "-O2", "-Wall", "-Wextra", "-Werror", "-I"])
                .arg(root.join("c-tests"))
                .arg("-o")
                .arg(&out)
                .arg(root.join("examples/hello.c"))
                .status()
                .unwrap();
            assert!(st.success(), "compiling examples/hello.c");
            out
        })
        .clone()
}

#[test]
fn mpirun_launches_a_c_program_under_the_shim() {
    if Command::new("mpirun").arg("--version").stdout(Stdio::null()).status().is_err() {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "mpirun (openmpi-bin) missing, CI=true");
        eprintln!(
            "SKIPPED mpirun_launches_a_c_program_under_the_shim: no mpirun (apt-get install openmpi-bin)"
        );
        return;
    }
    let c = Cluster::local();
    let hello = example_program();
    let key = support::fresh_key();
    // The README's line: the shim and KDIPC_KEYS=all given to the ranks
    // only (-x NAME=VALUE), not to mpirun, whose own System V probe would
    // otherwise be distributed too. The program never calls MPI: its rank
    // comes from OMPI_COMM_WORLD_RANK (kdipc_rank() in kdipc.h).
    let mut cmd = c.command(0, Path::new("mpirun"));
    let preload = format!("LD_PRELOAD={}", support::lib().display());
    cmd.args(["--allow-run-as-root", "--oversubscribe", "-np", "3"])
        .args(["-x", &preload, "-x", "KDIPC_NAMESERVER", "-x", "KDIPC_CERT_DIR", "-x", "KDIPC_KEYS=all"])
        .arg(&hello)
        .arg(&key)
        .env_remove("LD_PRELOAD")
        .env_remove("KDIPC_RANK")
        .env_remove("KDIPC_NPROCS");
    let o = outcome(cmd);
    o.assert_ok("mpirun hello");
    assert_eq!(o.stdout, "hello: 3 ranks, total 6 (expected 6)\n", "{o:?}");
    // Three nodes joined: the ranks, not mpirun or its daemons.
    let log = c.ns_log();
    assert_eq!(log.matches("node joined").count(), 3, "{log}");
}

#[test]
fn install_then_build_the_example_with_pkg_config() {
    let root = support::root();
    let tmp = std::env::temp_dir().join(format!("kdipc-cli-install-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let prefix = tmp.join("prefix");
    let install = |args: &[&Path]| {
        let mut cmd = Command::new(root.join("scripts/install"));
        cmd.args(args).env("CARGO_TARGET_DIR", support::kdipc().parent().unwrap().parent().unwrap());
        outcome(cmd)
    };
    let o = install(&[&prefix, &prefix]);
    assert_eq!((code(&o), o.stderr.as_str()), (2, "usage: scripts/install [PREFIX]\n"), "{o:?}");
    install(&[&prefix]).assert_ok("scripts/install");
    for f in ["bin/kdipc", "lib/kdipc/kdipc", "lib/kdipc/libkdipc.so", "include/kdipc.h"] {
        assert!(prefix.join(f).is_file(), "{f} not installed");
    }
    let pkg = |args: &[&str]| {
        let mut cmd = Command::new("pkg-config");
        cmd.args(args).arg("kdipc").env("PKG_CONFIG_PATH", prefix.join("lib/pkgconfig"));
        let o = outcome(cmd);
        o.assert_ok(&format!("pkg-config {args:?}"));
        o.stdout.trim().to_string()
    };
    assert_eq!(pkg(&["--cflags"]), format!("-I{}", prefix.join("include").display()));
    assert_eq!(pkg(&["--variable=preload"]), prefix.join("lib/kdipc/libkdipc.so").to_str().unwrap());
    // The example's Makefile, in a copy of examples/, with the installed
    // kdipc (found through the .pc file) running it: `make run`.
    let ex = tmp.join("examples");
    std::fs::create_dir_all(&ex).unwrap();
    for f in ["Makefile", "hello.c"] {
        std::fs::copy(root.join("examples").join(f), ex.join(f)).unwrap();
    }
    let mut make = Command::new("make");
    make.arg("-C")
        .arg(&ex)
        .arg("run")
        .env("PKG_CONFIG_PATH", prefix.join("lib/pkgconfig"))
        .env("CFLAGS", "-O2 -Wall -Wextra -Werror")
        .env_remove("LD_PRELOAD")
        .env_remove("KDIPC_NAMESERVER")
        .env_remove("KDIPC_CERT_DIR");
    let o = outcome(make);
    o.assert_ok("make run");
    assert!(o.stdout.contains("hello: 4 ranks, total 10 (expected 10)"), "{o:?}");
    assert!(o.stdout.contains(&format!("-I{}", prefix.join("include").display())), "{o:?}");
    std::fs::remove_dir_all(&tmp).unwrap();
}
