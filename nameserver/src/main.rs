//! `kdipc`: the nameserver and the command line.
//!
//! Exit status: 0 success; 1 the command failed (an object could not be
//! removed, no nameserver to ask); 2 bad arguments (one `kdipc: ...` line
//! on stderr). `kdipc run` exits with the status of its worst rank.

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use kdipc_runtime::config::Config;
use kdipc_runtime::node::NodeHandle;
use kdipc_runtime::registry::{Errno, SHM_DEST};
use kdipc_runtime::semaphores::SemctlArg;
use kdipc_runtime::{certs, config, nameserver, node};

const USAGE: &str = "\
usage: kdipc COMMAND [ARGS]

commands:
  nameserver [--listen ADDR] [--cert-dir DIR] [--state DIR [--fsync]] [--daemon]
                     run a nameserver (default 127.0.0.1:7350, credentials in
                     KDIPC_CERT_DIR or /tmp/kdipc-UID, made if missing)
  run -n N [--hosts NS,...] [--listen ADDR] [--tag-output] [--] PROG ARGS...
                     start N copies of PROG under the shim with an embedded
                     nameserver and ephemeral credentials; each copy gets
                     KDIPC_RANK and KDIPC_NPROCS, and {rank} in ARGS is
                     replaced by its rank
  ipcs [-m|-s|-a]    list distributed segments and semaphore sets
                     (util-linux ipcs layout, plus where their pages are)
  ipcrm [-m ID] [-s ID] [-M KEY] [-S KEY] [-a] ...
                     remove distributed segments and semaphore sets
  stats [--json]     faults, pages, bytes, invalidations, semaphore
                     operations and latencies, per node and per object
  certs init DIR     make a cluster CA and node credentials in DIR
  help [COMMAND]     this text, or a command's

`kdipc COMMAND --help` describes a command.
";

const NAMESERVER_USAGE: &str = "\
usage: kdipc nameserver [--listen ADDR] [--cert-dir DIR] [--state DIR [--fsync]] [--daemon]

Runs a nameserver: the registry of distributed segments and semaphore sets,
their owner and the home of every page.
  --listen ADDR    UDP address:port to listen on (default 127.0.0.1:7350)
  --cert-dir DIR   cluster credentials (default KDIPC_CERT_DIR, else
                   /tmp/kdipc-UID); made if missing
  --state DIR      keep the registry, the semaphore sets, the home copies of
                   pages and the members in DIR (made 0700 if missing), and
                   carry on from what is there: a nameserver restarted on
                   the same DIR and ADDR within the lease (KDIPC_LEASE_MS)
                   lets the running nodes rejoin and their run complete.
                   Semaphore sets then always run at the nameserver
  --fsync          with --state: put every change on the disk (fdatasync)
                   before the answers that depend on it leave, so that the
                   state also survives a crash of the machine (slower)
  --daemon         start a detached nameserver unless one listens on ADDR,
                   log to DIR/nameserver.log, and return once it listens
";

const RUN_USAGE: &str = "\
usage: kdipc run -n N [--hosts NS,...] [--listen ADDR] [--tag-output] [--] PROG ARGS...

Starts N copies of PROG under the shim (LD_PRELOAD=libkdipc.so beside kdipc)
with an embedded nameserver and ephemeral credentials in a private directory,
like mpirun. Each copy gets KDIPC_RANK, KDIPC_NPROCS, KDIPC_NAMESERVER and
KDIPC_CERT_DIR (KDIPC_BIND is unset), and `{rank}` in PROG and ARGS is
replaced by its rank.
  -n, --np N         number of copies
  --hosts NS,...     run copy RANK in the named network namespace
                     NS[RANK % count] (`ip netns` names; needs root)
  --listen ADDR      the embedded nameserver's UDP address (default
                     127.0.0.1:0); with --hosts, an address of this
                     namespace that the hosts reach, e.g. 10.0.0.1:0
  --tag-output       prefix every line of output with `[RANK] `

Exit status: the worst copy's (128+SIG for one killed by signal SIG).
Ctrl-C (SIGINT), SIGTERM or SIGHUP are passed on to every copy (SIGKILL
after 5 s); nothing is left behind: no process, no directory, no object.
";

const IPCS_USAGE: &str = "\
usage: kdipc ipcs [-m|-s|-a]

Lists the distributed objects of the nameserver (KDIPC_NAMESERVER and
KDIPC_CERT_DIR, else the one on 127.0.0.1:7350; none is started), in
util-linux ipcs layout plus columns:
  -m, --shmems       shared memory segments, plus
                       away    pages of the segment that a node other than
                               the nameserver (their home) owns
                       copies  nodes (processes) that hold at least one
                               page of the segment, readable or writable,
                               as each node answers when asked (a node that
                               does not answer within 1 s is not counted;
                               the nameserver's home copy never is)
  -s, --semaphores   semaphore sets, plus `node`: where the set's values
                     live, `nameserver` (its home) or the number of the
                     node it is lent to (a node that used it alone)
  -a, --all          both (the default)
";

const STATS_USAGE: &str = "\
usage: kdipc stats [--json]

Prints what every node of the nameserver's cluster (KDIPC_NAMESERVER and
KDIPC_CERT_DIR, else the one on 127.0.0.1:7350; none is started) did, as
it last reported (every second while it changes, and at exit): one line
per node, then a table with one row per object (segment or semaphore set)
whose figures are summed over the nodes (objects removed since are
`removed`; existing objects nobody used show zeros).

Node fields: read_faults, write_faults (faults a program thread waited
for), pages_in, pages_out, bytes_in, bytes_out (a page travels up to its
last non-zero byte, a zero page without bytes), invalidations (copies this node dropped for a writer),
semops_local (run on a set lent to the node), semops_remote (sent to the
set's home), fault_p50_us, fault_p99_us, semop_p50_us, semop_p99_us
(upper bounds of power-of-two buckets).

Object columns: key, id, kind (shm or sem), the same counts for the
object (semops: local + remote), p50_us and p99_us (fault latency of a
segment, latency of the operations on a set sent to its home), status.
A process counts up to 256 objects of each kind on its own (the rest
only in its node's figures).

--json prints {\"nodes\":[...],\"objects\":[...]} with the same fields
(objects: kind, key (null when unknown), id, removed, the counts with
semops_local and semops_remote apart, p50_us, p99_us).

A node prints its own line and one line per object on stderr at exit when
KDIPC_STATS=1.
";

const IPCRM_USAGE: &str = "\
usage: kdipc ipcrm [-m ID] [-s ID] [-M KEY] [-S KEY] [-a] ...

Removes distributed objects (IPC_RMID), as util-linux ipcrm; IDs and KEYs
are decimal or 0x hexadecimal, and options may be repeated.
  -m, --shmem-id ID         the segment with id ID
  -s, --semaphore-id ID     the semaphore set with id ID
  -M, --shmem-key KEY       the segment with key KEY
  -S, --semaphore-key KEY   the semaphore set with key KEY
  -a, --all[=shm|sem|msg]   every segment and set (or every one of a kind;
                            there are no distributed message queues)

A segment goes when its last process detaches. Exit status 1 if any
removal failed.
";

const CERTS_USAGE: &str = "\
usage: kdipc certs init DIR

Makes a cluster CA and node credentials in DIR (copy DIR to every host and
point KDIPC_CERT_DIR at it).
";

fn main() -> ExitCode {
    // Started by a node's runtime thread, we inherit its blocked signals:
    // start from an empty mask, as a command should.
    // SAFETY: sigemptyset on a local set; setting this thread's mask.
    unsafe {
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::pthread_sigmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
    }
    config::init_logging();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let res = match args.first().map(String::as_str) {
        Some("nameserver") => cmd_nameserver(&args[1..]),
        Some("run") => cmd_run(&args[1..]),
        Some("ipcs") => cmd_ipcs(&args[1..]),
        Some("ipcrm") => cmd_ipcrm(&args[1..]),
        Some("certs") => cmd_certs(&args[1..]),
        Some("stats") => cmd_stats(&args[1..]),
        // Internal: started by a node before `exec` (kdipc_runtime::undo).
        Some("undo-keeper") => match args.get(1).and_then(|p| p.parse().ok()) {
            Some(pid) => Ok(ExitCode::from(kdipc_runtime::undo::keeper_main(pid) as u8)),
            None => Err("undo-keeper PID".into()),
        },
        Some("help") | Some("--help") | Some("-h") => cmd_help(&args[1..]),
        Some(other) => Err(format!("unknown command {other:?} (try kdipc --help)")),
        None => Err("missing command (try kdipc --help)".into()),
    };
    match res {
        Ok(code) => code,
        Err(e) => {
            eprintln!("kdipc: {e}");
            ExitCode::from(2)
        }
    }
}

fn cmd_help(args: &[String]) -> Result<ExitCode, String> {
    let text = match args.first().map(String::as_str) {
        None => USAGE,
        Some("nameserver") => NAMESERVER_USAGE,
        Some("run") => RUN_USAGE,
        Some("ipcs") => IPCS_USAGE,
        Some("ipcrm") => IPCRM_USAGE,
        Some("certs") => CERTS_USAGE,
        Some("stats") => STATS_USAGE,
        Some(other) => return Err(format!("help: unknown command {other:?}")),
    };
    print!("{text}");
    Ok(ExitCode::SUCCESS)
}

fn wants_help(args: &[String]) -> bool {
    args.iter().any(|a| a == "--help" || a == "-h")
}

fn help(text: &str) -> Result<ExitCode, String> {
    print!("{text}");
    Ok(ExitCode::SUCCESS)
}

/// The command failed (not a usage error): one line, exit 1.
fn failure(msg: &str) -> Result<ExitCode, String> {
    eprintln!("kdipc: {msg}");
    Ok(ExitCode::FAILURE)
}

fn value<'a>(args: &'a [String], i: &mut usize, flag: &str) -> Result<&'a str, String> {
    *i += 1;
    args.get(*i).map(String::as_str).ok_or_else(|| format!("{flag} needs a value"))
}

fn cmd_certs(args: &[String]) -> Result<ExitCode, String> {
    if wants_help(args) {
        return help(CERTS_USAGE);
    }
    match args {
        [init, dir] if init == "init" => match certs::init(Path::new(dir)) {
            Ok(()) => {
                println!("cluster credentials written to {dir}");
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => failure(&format!("certs init {dir}: {e}")),
        },
        _ => Err("usage: kdipc certs init DIR".into()),
    }
}

/// Makes `dir` (0700, ours) and credentials in it unless they exist; safe
/// against concurrent callers.
fn ensure_certs(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    let meta = std::fs::metadata(dir).map_err(|e| e.to_string())?;
    // SAFETY: geteuid has no preconditions.
    if meta.uid() != unsafe { libc::geteuid() } {
        return Err(format!("{} belongs to another user", dir.display()));
    }
    let lock = std::fs::File::create(dir.join(".lock")).map_err(|e| e.to_string())?;
    // SAFETY: flock on a descriptor we own; released when `lock` drops.
    unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) };
    if !certs::exists(dir) {
        certs::init(dir).map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn cmd_nameserver(args: &[String]) -> Result<ExitCode, String> {
    if wants_help(args) {
        return help(NAMESERVER_USAGE);
    }
    let mut listen: SocketAddr = config::DEFAULT_NAMESERVER.parse().expect("literal");
    let mut cert_dir =
        std::env::var_os("KDIPC_CERT_DIR").map(PathBuf::from).unwrap_or_else(config::auto_cert_dir);
    let mut daemon = false;
    let mut state: Option<PathBuf> = None;
    let mut fsync = false;
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "--state" => state = Some(value(args, &mut i, "nameserver: --state")?.into()),
            "--fsync" => fsync = true,
            "--listen" => {
                let v = value(args, &mut i, "nameserver: --listen")?;
                listen =
                    v.parse().map_err(|_| format!("nameserver: --listen: not an address:port: {v:?}"))?;
            }
            "--cert-dir" => cert_dir = value(args, &mut i, "nameserver: --cert-dir")?.into(),
            "--daemon" => daemon = true,
            other => return Err(format!("nameserver: unknown argument {other:?}")),
        }
        i += 1;
    }
    if let Err(e) = ensure_certs(&cert_dir) {
        return failure(&e);
    }
    if fsync && state.is_none() {
        return failure("nameserver: --fsync needs --state DIR");
    }
    let res = if daemon {
        if state.is_some() {
            return failure("nameserver: --state and --daemon do not go together");
        }
        daemonize(listen, &cert_dir)
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())
            .and_then(|rt| {
                rt.block_on(nameserver::serve(listen, &cert_dir, state.as_deref(), fsync, |a| {
                    eprintln!("kdipc nameserver listening on {a}")
                }))
            })
    };
    match res {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) => failure(&e),
    }
}

/// Starts a detached nameserver unless one already listens; returns once it
/// does.
fn daemonize(listen: SocketAddr, cert_dir: &Path) -> Result<(), String> {
    if node::udp_port_in_use(listen) {
        return Ok(());
    }
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(cert_dir.join("nameserver.log"))
        .map_err(|e| e.to_string())?;
    let mut cmd = Command::new(exe);
    cmd.args(["nameserver", "--listen", &listen.to_string(), "--cert-dir"])
        .arg(cert_dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log)
        .env_remove("LD_PRELOAD");
    // SAFETY: setsid is async-signal-safe and the only call after fork.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|e| format!("starting the nameserver: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if node::udp_port_in_use(listen) {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            // Lost a race with another starter: fine if someone listens.
            if node::udp_port_in_use(listen) {
                return Ok(());
            }
            return Err(format!("the nameserver exited at start ({status}); see {}", cert_dir.display()));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Err("the nameserver did not start listening in time".into())
}

/// A node of this process for `ipcs`/`ipcrm`, connected to the configured
/// nameserver; never starts one.
fn connect() -> Result<NodeHandle, String> {
    let mut cfg = Config::from_env()?;
    let local = cfg.nameserver.ip().is_loopback();
    if (cfg.auto && !certs::exists(&cfg.cert_dir)) || (local && !node::udp_port_in_use(cfg.nameserver)) {
        let hint =
            if cfg.auto { " (kdipc starts none; set KDIPC_NAMESERVER and KDIPC_CERT_DIR)" } else { "" };
        return Err(format!("no nameserver at {}{hint}", cfg.nameserver));
    }
    cfg.auto = false;
    NodeHandle::connect(cfg.clone())
        .map_err(|e| format!("cannot reach the nameserver at {}: {e}", cfg.nameserver))
}

/// Runs `f` with a node connected to the nameserver, then shuts the node
/// down; gives up after a while (a nameserver that lost our connection
/// never answers).
fn with_node<T: Send + 'static>(f: impl FnOnce(&NodeHandle) -> T + Send + 'static) -> Result<T, String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let r = connect().map(|n| {
            let r = f(&n);
            n.shutdown(Duration::from_secs(2));
            r
        });
        let _ = tx.send(r);
    });
    rx.recv_timeout(Duration::from_secs(20))
        .map_err(|_| "no answer from the nameserver (another KDIPC version? see its log)".to_string())?
}

/// `getpwuid`'s name for `uid`.
fn user_name(uid: u32) -> Option<String> {
    // SAFETY: a zeroed passwd is a valid out-parameter.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16384];
    let mut res: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is to a live local of the given size.
    let r = unsafe { libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr(), buf.len(), &mut res) };
    if r != 0 || res.is_null() || pw.pw_name.is_null() {
        return None;
    }
    // SAFETY: getpwuid_r succeeded: pw_name points into `buf`, NUL-terminated.
    Some(unsafe { std::ffi::CStr::from_ptr(pw.pw_name) }.to_string_lossy().into_owned())
}

/// The owner column of util-linux `ipcs`: `%-10.10s` name or `%-10u` uid.
fn owner(uid: u32) -> String {
    match user_name(uid) {
        Some(n) => format!("{:<10.10}", n),
        None => format!("{uid:<10}"),
    }
}

fn cmd_stats(args: &[String]) -> Result<ExitCode, String> {
    let mut json = false;
    for a in args {
        match a.as_str() {
            "-h" | "--help" => return help(STATS_USAGE),
            "--json" => json = true,
            other => return Err(format!("stats: unknown argument {other:?} (try kdipc stats --help)")),
        }
    }
    let (nodes, objects) = match with_node(|n| n.stats()) {
        Ok(Ok(l)) => l,
        Ok(Err(Errno(e))) => return failure(&format!("stats: {}", std::io::Error::from_raw_os_error(e))),
        Err(e) => return failure(&format!("stats: {e}")),
    };
    if json {
        let items: Vec<String> = nodes
            .iter()
            .map(|(node, pid, alive, s)| {
                let fields: Vec<String> = s.fields().iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
                format!("{{\"node\":{node},\"pid\":{pid},\"alive\":{alive},{}}}", fields.join(","))
            })
            .collect();
        let objs: Vec<String> = objects
            .iter()
            .map(|o| {
                let s = &o.stats;
                let key = o.key.map_or("null".to_string(), |k| (k as u32).to_string());
                format!(
                    "{{\"kind\":\"{}\",\"key\":{key},\"id\":{},\"removed\":{},\"read_faults\":{},\
                     \"write_faults\":{},\"pages_in\":{},\"pages_out\":{},\"bytes_in\":{},\"bytes_out\":{},\
                     \"invalidations\":{},\"semops_local\":{},\"semops_remote\":{},\"p50_us\":{},\"p99_us\":{}}}",
                    s.kind.name(),
                    s.id,
                    o.removed,
                    s.read_faults,
                    s.write_faults,
                    s.pages_in,
                    s.pages_out,
                    s.bytes_in,
                    s.bytes_out,
                    s.invalidations,
                    s.semops_local,
                    s.semops_remote,
                    s.p50_us(),
                    s.p99_us()
                )
            })
            .collect();
        println!("{{\"nodes\":[{}],\"objects\":[{}]}}", items.join(","), objs.join(","));
    } else {
        for (node, pid, alive, s) in &nodes {
            let fields: Vec<String> = s.fields().iter().map(|(k, v)| format!("{k}={v}")).collect();
            let state = if *alive { "running" } else { "gone" };
            println!("node={node} pid={pid} {state} {}", fields.join(" "));
        }
        print!("\n------ Objects --------\n");
        println!(
            "{:<10} {:<10} {:<4} {:<11} {:<12} {:<9} {:<9} {:<11} {:<11} {:<13} {:<8} {:<8} {:<8} status",
            "key",
            "id",
            "kind",
            "read_faults",
            "write_faults",
            "pages_in",
            "pages_out",
            "bytes_in",
            "bytes_out",
            "invalidations",
            "semops",
            "p50_us",
            "p99_us"
        );
        for o in &objects {
            let s = &o.stats;
            let key = o.key.map_or("-".to_string(), |k| format!("0x{:08x}", k as u32));
            println!(
                "{:<10} {:<10} {:<4} {:<11} {:<12} {:<9} {:<9} {:<11} {:<11} {:<13} {:<8} {:<8} {:<8} {}",
                key,
                s.id,
                s.kind.name(),
                s.read_faults,
                s.write_faults,
                s.pages_in,
                s.pages_out,
                s.bytes_in,
                s.bytes_out,
                s.invalidations,
                s.semops_local + s.semops_remote,
                s.p50_us(),
                s.p99_us(),
                if o.removed { "removed" } else { "live" }
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn cmd_ipcs(args: &[String]) -> Result<ExitCode, String> {
    let (mut shm, mut sem) = (false, false);
    for a in args {
        match a.as_str() {
            "-h" | "--help" => return help(IPCS_USAGE),
            "-m" | "--shmems" => shm = true,
            "-s" | "--semaphores" => sem = true,
            "-a" | "--all" => (shm, sem) = (true, true),
            other => return Err(format!("ipcs: unknown argument {other:?} (try kdipc ipcs --help)")),
        }
    }
    if !shm && !sem {
        (shm, sem) = (true, true);
    }
    let (segs, sets) = match with_node(|n| n.ipc_list()) {
        Ok(Ok(l)) => l,
        Ok(Err(Errno(e))) => return failure(&format!("ipcs: {}", std::io::Error::from_raw_os_error(e))),
        Err(e) => return failure(&format!("ipcs: {e}")),
    };
    if shm {
        print!("\n------ Shared Memory Segments --------\n");
        println!(
            "{:<10} {:<10} {:<10} {:<10} {:<10} {:<10} {:<13} {:<6} copies",
            "key", "shmid", "owner", "perms", "bytes", "nattch", "status", "away"
        );
        for (id, s, away, copies) in segs {
            let dest = if s.mode & SHM_DEST != 0 { "dest" } else { " " };
            println!(
                "0x{:08x} {:<10} {} {:<10o} {:<10} {:<10} {:<6} {:<6} {:<6} {}",
                s.key as u32,
                id,
                owner(s.uid),
                s.mode & 0o777,
                s.size,
                s.nattch,
                dest,
                " ",
                away,
                copies
            );
        }
    }
    if sem {
        print!("\n------ Semaphore Arrays --------\n");
        println!("{:<10} {:<10} {:<10} {:<10} {:<10} node", "key", "semid", "owner", "perms", "nsems");
        for (id, s, holder) in sets {
            let node = if holder == 0 { "nameserver".to_string() } else { holder.to_string() };
            println!(
                "0x{:08x} {:<10} {} {:<10o} {:<10} {node}",
                s.key as u32,
                id,
                owner(s.uid),
                s.mode & 0o777,
                s.nsems
            );
        }
    }
    println!();
    Ok(ExitCode::SUCCESS)
}

/// A number as util-linux reads keys: decimal or `0x` hexadecimal.
fn parse_num(s: &str) -> Option<i64> {
    let (neg, t) = match s.strip_prefix('-') {
        Some(t) => (true, t),
        None => (false, s),
    };
    let v = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(h) => i64::from_str_radix(h, 16).ok()?,
        None => t.parse::<i64>().ok()?,
    };
    Some(if neg { -v } else { v })
}

#[derive(Clone, Copy, PartialEq)]
enum Target {
    ShmId,
    SemId,
    ShmKey,
    SemKey,
}

fn cmd_ipcrm(args: &[String]) -> Result<ExitCode, String> {
    if wants_help(args) {
        return help(IPCRM_USAGE);
    }
    let mut todo: Vec<(Target, i32, String)> = Vec::new();
    // -a: every segment, every set (after the named objects).
    let (mut all, mut all_shm, mut all_sem) = (false, false, false);
    let mut i = 0;
    while i < args.len() {
        let a = args[i].as_str();
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v)),
            _ if a.len() > 2 && a.starts_with('-') && !a.starts_with("--") => (&a[..2], Some(&a[2..])),
            _ => (a, None),
        };
        let target = match flag {
            "-m" | "--shmem-id" => Target::ShmId,
            "-s" | "--semaphore-id" => Target::SemId,
            "-M" | "--shmem-key" => Target::ShmKey,
            "-S" | "--semaphore-key" => Target::SemKey,
            "-a" | "--all" => {
                // util-linux: --all[=shm|msg|sem] (no distributed message
                // queues exist: msg removes nothing).
                all = true;
                match inline {
                    None => (all_shm, all_sem) = (true, true),
                    Some("shm") => all_shm = true,
                    Some("sem") => all_sem = true,
                    Some("msg") => {}
                    Some(v) => return Err(format!("ipcrm: {flag}: unknown resource type {v:?}")),
                }
                i += 1;
                continue;
            }
            _ => return Err(format!("ipcrm: unknown argument {a:?} (try kdipc ipcrm --help)")),
        };
        let v = match inline {
            Some(v) => v,
            None => value(args, &mut i, &format!("ipcrm: {flag}"))?,
        };
        let n = parse_num(v);
        let num = match target {
            Target::ShmId | Target::SemId => {
                n.filter(|n| (0..=i32::MAX as i64).contains(n)).map(|n| n as i32)
            }
            _ => n.filter(|n| (i32::MIN as i64..=u32::MAX as i64).contains(n)).map(|n| n as u32 as i32),
        };
        let what = if matches!(target, Target::ShmId | Target::SemId) { "id" } else { "key" };
        let num = num.ok_or_else(|| format!("ipcrm: {flag}: bad {what} {v:?}"))?;
        todo.push((target, num, v.to_string()));
        i += 1;
    }
    if todo.is_empty() && !all {
        return Err("ipcrm: nothing to remove (try kdipc ipcrm --help)".into());
    }
    let res = with_node(move |n| {
        if all_shm || all_sem {
            match n.ipc_list() {
                Ok((segs, sets)) => {
                    let segs = segs.into_iter().filter(|_| all_shm).map(|(id, _, _, _)| (Target::ShmId, id));
                    let sets = sets.into_iter().filter(|_| all_sem).map(|(id, _, _)| (Target::SemId, id));
                    todo.extend(segs.chain(sets).map(|(t, id)| (t, id, id.to_string())));
                }
                Err(Errno(e)) => {
                    eprintln!("ipcrm: {}", std::io::Error::from_raw_os_error(e));
                    return true;
                }
            }
        }
        let mut failed = false;
        for (target, num, text) in todo {
            if let Err(msg) = remove(n, target, num) {
                eprintln!("ipcrm: {msg} ({text})");
                failed = true;
            }
        }
        failed
    });
    match res {
        Ok(false) => Ok(ExitCode::SUCCESS),
        Ok(true) => Ok(ExitCode::FAILURE),
        Err(e) => failure(&format!("ipcrm: {e}")),
    }
}

/// Removes one object; the error is util-linux's message.
fn remove(n: &NodeHandle, target: Target, num: i32) -> Result<(), String> {
    let iskey = matches!(target, Target::ShmKey | Target::SemKey);
    let what = if iskey { "key" } else { "id" };
    let id = if iskey {
        if num == libc::IPC_PRIVATE {
            return Err("illegal key".into());
        }
        let found = if target == Target::ShmKey { n.shmget(num, 0, 0) } else { n.semget(num, 0, 0) };
        found.map_err(|Errno(e)| match e {
            libc::EACCES => "permission denied for key".to_string(),
            libc::EIDRM => "already removed key".into(),
            libc::ENOENT => "invalid key".into(),
            e => format!("key failed: {}", std::io::Error::from_raw_os_error(e)),
        })?
    } else {
        num
    };
    let res = match target {
        Target::ShmId | Target::ShmKey => n.remove(id),
        Target::SemId | Target::SemKey => n.semctl(id, 0, libc::IPC_RMID, SemctlArg::None).map(|_| ()),
    };
    res.map_err(|Errno(e)| match e {
        libc::EACCES | libc::EPERM => format!("permission denied for {what}"),
        libc::EINVAL => format!("invalid {what}"),
        libc::EIDRM => format!("already removed {what}"),
        e => format!("{what} failed: {}", std::io::Error::from_raw_os_error(e)),
    })
}

fn cmd_run(args: &[String]) -> Result<ExitCode, String> {
    let mut n: Option<usize> = None;
    let mut tag = false;
    let mut hosts: Vec<String> = Vec::new();
    let mut listen: SocketAddr = "127.0.0.1:0".parse().expect("literal");
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "-n" | "--np" | "-np" => {
                let v = value(args, &mut i, "run: -n")?;
                n = Some(
                    v.parse().ok().filter(|&k| k > 0).ok_or_else(|| format!("run: -n: bad count {v:?}"))?,
                );
            }
            "--hosts" => {
                let v = value(args, &mut i, "run: --hosts")?;
                hosts = v.split(',').map(str::to_string).collect();
                if hosts.iter().any(|h| h.is_empty() || h.contains('/') || h == "." || h == "..") {
                    return Err(format!("run: --hosts: bad namespace list {v:?}"));
                }
            }
            "--listen" => {
                let v = value(args, &mut i, "run: --listen")?;
                listen = v
                    .parse()
                    .ok()
                    .filter(|a: &SocketAddr| !a.ip().is_unspecified())
                    .ok_or_else(|| format!("run: --listen: not a specific address:port: {v:?}"))?;
            }
            "--tag-output" => tag = true,
            "--help" | "-h" => return help(RUN_USAGE),
            "--" => {
                i += 1;
                break;
            }
            other if other.starts_with('-') => return Err(format!("run: unknown argument {other:?}")),
            _ => break,
        }
        i += 1;
    }
    let n = n.ok_or("run: -n N is required (try kdipc run --help)")?;
    let prog = &args[i..];
    if prog.is_empty() {
        return Err("run: no program given (kdipc run -n N -- PROG ARGS)".into());
    }
    if !hosts.is_empty() && listen.ip().is_loopback() {
        return Err("run: --hosts needs --listen ADDR, an address the hosts reach".into());
    }
    // The namespaces, opened now so that a wrong name is reported before
    // anything starts.
    let mut netns = Vec::new();
    for h in &hosts {
        match std::fs::File::open(Path::new("/run/netns").join(h)) {
            Ok(f) => netns.push((h.clone(), f)),
            Err(e) => return failure(&format!("run: --hosts: network namespace {h}: {e}")),
        }
    }
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let lib = exe.with_file_name("libkdipc.so");
    if !lib.is_file() {
        return failure(&format!("run: {} not found (cargo build --release)", lib.display()));
    }
    // From here on a stop request is remembered, not fatal: what was made
    // is cleaned up.
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: installing a handler that only stores to an atomic.
        unsafe { libc::signal(sig, on_stop as *const () as libc::sighandler_t) };
    }
    let dir = match private_temp_dir() {
        Ok(d) => d,
        Err(e) => return failure(&format!("run: {e}")),
    };
    let res = run_with(Launch { n, tag, prog, lib: &lib, dir: &dir, listen, netns: &netns });
    let _ = std::fs::remove_dir_all(&dir);
    match res {
        Ok(code) => Ok(code),
        Err(e) => failure(&format!("run: {e}")),
    }
}

fn private_temp_dir() -> Result<PathBuf, String> {
    let mut tmpl = std::env::temp_dir().join("kdipc-run-XXXXXX").into_os_string().into_encoded_bytes();
    tmpl.push(0);
    // SAFETY: mkdtemp writes into the NUL-terminated template we own.
    let p = unsafe { libc::mkdtemp(tmpl.as_mut_ptr() as *mut libc::c_char) };
    if p.is_null() {
        return Err(format!("mkdtemp: {}", std::io::Error::last_os_error()));
    }
    tmpl.pop();
    // SAFETY: the bytes came from an OsString plus the template.
    Ok(PathBuf::from(unsafe { std::ffi::OsString::from_encoded_bytes_unchecked(tmpl) }))
}

/// The stop signal received (0: none), passed on to every rank.
static STOP: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_stop(sig: libc::c_int) {
    STOP.store(sig, Ordering::SeqCst);
}

/// Signals the process group of every rank still running.
fn signal_ranks(children: &[Child], done: &[bool], sig: i32) {
    for (c, d) in children.iter().zip(done) {
        if !d {
            // SAFETY: signalling the process group of our own child (its
            // pid: the child is not reaped yet, so the id is still ours).
            unsafe { libc::kill(-(c.id() as i32), sig) };
        }
    }
}

/// Copies `src` line by line to stdout or stderr, prefixed with `[rank] `.
fn tag_lines(
    src: impl std::io::Read + Send + 'static,
    rank: usize,
    to_stderr: bool,
    done: std::sync::mpsc::Sender<()>,
) {
    std::thread::spawn(move || {
        use std::io::{BufRead, Write};
        let mut r = std::io::BufReader::new(src);
        let mut line = Vec::new();
        while matches!(r.read_until(b'\n', &mut line), Ok(k) if k > 0) {
            if line.last() != Some(&b'\n') {
                line.push(b'\n');
            }
            let mut out = Vec::with_capacity(line.len() + 8);
            out.extend_from_slice(format!("[{rank}] ").as_bytes());
            out.extend_from_slice(&line);
            let _ = if to_stderr {
                std::io::stderr().lock().write_all(&out)
            } else {
                let mut o = std::io::stdout().lock();
                o.write_all(&out).and_then(|_| o.flush())
            };
            line.clear();
        }
        let _ = done.send(());
    });
}

/// What `kdipc run` starts.
struct Launch<'a> {
    n: usize,
    tag: bool,
    prog: &'a [String],
    lib: &'a Path,
    /// The private directory: credentials.
    dir: &'a Path,
    /// The embedded nameserver's address.
    listen: SocketAddr,
    /// The network namespaces of `--hosts` (name, open `/run/netns` file).
    netns: &'a [(String, std::fs::File)],
}

fn run_with(l: Launch) -> Result<ExitCode, String> {
    let Launch { n, tag, prog, lib, dir, listen, netns } = l;
    certs::init(dir).map_err(|e| e.to_string())?;
    let (tx, rx) = std::sync::mpsc::channel();
    let cdir = dir.to_path_buf();
    std::thread::spawn(move || {
        let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => return tx.send(Err(e.to_string())).unwrap_or(()),
        };
        let tx2 = tx.clone();
        if let Err(e) = rt.block_on(nameserver::serve(listen, &cdir, None, false, move |a| {
            let _ = tx2.send(Ok(a));
        })) {
            let _ = tx.send(Err(e));
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(10))
        .map_err(|_| "embedded nameserver did not start".to_string())?
        .map_err(|e| format!("embedded nameserver: {e}"))?;
    // SAFETY: getpid has no preconditions.
    let me = unsafe { libc::getpid() };
    let (out_tx, out_rx) = std::sync::mpsc::channel();
    let mut children: Vec<Child> = Vec::new();
    let mut readers = 0;
    for rank in 0..n {
        if STOP.load(Ordering::SeqCst) != 0 {
            break;
        }
        let argv: Vec<String> = prog.iter().map(|a| a.replace("{rank}", &rank.to_string())).collect();
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .env("LD_PRELOAD", lib)
            .env("KDIPC_NAMESERVER", addr.to_string())
            .env("KDIPC_CERT_DIR", dir)
            .env("KDIPC_RANK", rank.to_string())
            .env("KDIPC_NPROCS", n.to_string())
            .env_remove("KDIPC_BIND")
            .process_group(0);
        let host = (!netns.is_empty()).then(|| &netns[rank % netns.len()]);
        let ns_fd = host.map(|(_, f)| std::os::fd::AsRawFd::as_raw_fd(f));
        // SAFETY: prctl, getppid, setns and _exit are async-signal-safe;
        // `ns_fd` stays open until after the spawn.
        unsafe {
            cmd.pre_exec(move || {
                // If kdipc run dies (even by SIGKILL), so does the rank.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                if libc::getppid() != me {
                    libc::_exit(137);
                }
                if let Some(fd) = ns_fd {
                    if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        if tag {
            cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        }
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                let done = vec![false; children.len()];
                signal_ranks(&children, &done, libc::SIGKILL);
                for c in &mut children {
                    let _ = c.wait();
                }
                return Err(match host {
                    Some((h, _)) => format!("{} in network namespace {h}: {e}", argv[0]),
                    None => format!("{}: {e}", argv[0]),
                });
            }
        };
        if let Some(out) = child.stdout.take() {
            tag_lines(out, rank, false, out_tx.clone());
            readers += 1;
        }
        if let Some(err) = child.stderr.take() {
            tag_lines(err, rank, true, out_tx.clone());
            readers += 1;
        }
        children.push(child);
    }
    let mut worst = 0i32;
    let mut done = vec![false; children.len()];
    let mut left = children.len();
    let mut stopped: Option<(i32, Instant)> = None;
    let mut killed = false;
    loop {
        let sig = STOP.swap(0, Ordering::SeqCst);
        if sig != 0 {
            signal_ranks(&children, &done, sig);
            stopped.get_or_insert((sig, Instant::now()));
        }
        if let Some((_, t)) = stopped {
            if !killed && t.elapsed() > Duration::from_secs(5) {
                signal_ranks(&children, &done, libc::SIGKILL);
                killed = true;
            }
        }
        for (k, c) in children.iter_mut().enumerate() {
            if done[k] {
                continue;
            }
            if let Ok(Some(st)) = c.try_wait() {
                use std::os::unix::process::ExitStatusExt;
                done[k] = true;
                left -= 1;
                let code = st.code().unwrap_or_else(|| 128 + st.signal().unwrap_or(0));
                if code != 0 && stopped.is_none() {
                    eprintln!("kdipc run: rank {k} exited with {st}");
                }
                worst = worst.max(code);
            }
        }
        if left == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    // The last lines of tagged output (a rank's left-over background
    // process may hold its pipe: do not wait for that forever).
    let deadline = Instant::now() + Duration::from_secs(2);
    for _ in 0..readers {
        if out_rx.recv_timeout(deadline.saturating_duration_since(Instant::now())).is_err() {
            break;
        }
    }
    if let Some((sig, _)) = stopped {
        if children.len() < n {
            // Stopped while starting: report the signal.
            worst = worst.max(128 + sig);
        }
    }
    Ok(ExitCode::from(worst.clamp(0, 255) as u8))
}
