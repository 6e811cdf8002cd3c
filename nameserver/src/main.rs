//! `kdipc`: the nameserver and the command line.

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use kdipc_runtime::{certs, config, nameserver, node};

const USAGE: &str = "\
usage: kdipc COMMAND [ARGS]

commands:
  nameserver [--listen ADDR] [--cert-dir DIR] [--daemon]
                     run a nameserver (default 127.0.0.1:7350, credentials in
                     KDIPC_CERT_DIR or /tmp/kdipc-UID, made if missing)
  run -n N [--tag-output] -- PROG ARGS...
                     start N copies of PROG under the shim with an embedded
                     nameserver and ephemeral credentials; each copy gets
                     KDIPC_RANK and KDIPC_NPROCS, and {rank} in ARGS is
                     replaced by its rank
  ipcs               list distributed segments (util-linux ipcs layout)
  certs init DIR     make a cluster CA and node credentials in DIR
  help               this text
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
        Some("certs") => cmd_certs(&args[1..]),
        Some("help") | Some("--help") | Some("-h") => {
            print!("{USAGE}");
            Ok(ExitCode::SUCCESS)
        }
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

fn wants_help(args: &[String]) -> bool {
    args.iter().any(|a| a == "--help" || a == "-h")
}

fn value<'a>(args: &'a [String], i: &mut usize, flag: &str) -> Result<&'a str, String> {
    *i += 1;
    args.get(*i).map(String::as_str).ok_or_else(|| format!("{flag} needs a value"))
}

fn cmd_certs(args: &[String]) -> Result<ExitCode, String> {
    match args {
        [init, dir] if init == "init" => {
            certs::init(Path::new(dir)).map_err(|e| e.to_string())?;
            println!("cluster credentials written to {dir}");
            Ok(ExitCode::SUCCESS)
        }
        _ if wants_help(args) => {
            println!("usage: kdipc certs init DIR");
            Ok(ExitCode::SUCCESS)
        }
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
        println!("usage: kdipc nameserver [--listen ADDR] [--cert-dir DIR] [--daemon]");
        return Ok(ExitCode::SUCCESS);
    }
    let mut listen: SocketAddr = config::DEFAULT_NAMESERVER.parse().expect("literal");
    let mut cert_dir =
        std::env::var_os("KDIPC_CERT_DIR").map(PathBuf::from).unwrap_or_else(config::auto_cert_dir);
    let mut daemon = false;
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "--listen" => {
                let v = value(args, &mut i, "--listen")?;
                listen = v.parse().map_err(|_| format!("--listen: not an address:port: {v:?}"))?;
            }
            "--cert-dir" => cert_dir = value(args, &mut i, "--cert-dir")?.into(),
            "--daemon" => daemon = true,
            other => return Err(format!("nameserver: unknown argument {other:?}")),
        }
        i += 1;
    }
    ensure_certs(&cert_dir)?;
    if daemon {
        return daemonize(listen, &cert_dir);
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    rt.block_on(nameserver::serve(listen, &cert_dir, |a| eprintln!("kdipc nameserver listening on {a}")))?;
    Ok(ExitCode::SUCCESS)
}

/// Starts a detached nameserver unless one already listens; returns once it
/// does.
fn daemonize(listen: SocketAddr, cert_dir: &Path) -> Result<ExitCode, String> {
    if node::udp_port_in_use(listen) {
        return Ok(ExitCode::SUCCESS);
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
        .stdin(std::process::Stdio::null())
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
            return Ok(ExitCode::SUCCESS);
        }
        if let Ok(Some(status)) = child.try_wait() {
            // Lost a race with another starter: fine if someone listens.
            if node::udp_port_in_use(listen) {
                return Ok(ExitCode::SUCCESS);
            }
            return Err(format!("the nameserver exited at start ({status}); see {}", cert_dir.display()));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Err("the nameserver did not start listening in time".into())
}

fn cmd_ipcs(args: &[String]) -> Result<ExitCode, String> {
    if wants_help(args) {
        println!("usage: kdipc ipcs   (uses KDIPC_NAMESERVER / KDIPC_CERT_DIR)");
        return Ok(ExitCode::SUCCESS);
    }
    let n = node::node().map_err(|e| format!("cannot reach the nameserver (errno {})", e.0))?;
    let list = n.list().map_err(|e| format!("errno {}", e.0))?;
    println!("\n------ Shared Memory Segments (KDIPC) --------");
    println!(
        "{:<10} {:<10} {:<10} {:<10} {:<10} {:<6} {:<12}",
        "key", "shmid", "owner", "perms", "bytes", "nattch", "status"
    );
    for (id, s) in list {
        let dest = if s.mode & kdipc_runtime::registry::SHM_DEST != 0 { "dest" } else { "" };
        println!(
            "0x{:08x} {:<10} {:<10} {:<10o} {:<10} {:<6} {:<12}",
            s.key as u32,
            id,
            s.uid,
            s.mode & 0o777,
            s.size,
            s.nattch,
            dest
        );
    }
    println!();
    Ok(ExitCode::SUCCESS)
}

fn cmd_run(args: &[String]) -> Result<ExitCode, String> {
    let mut n: Option<usize> = None;
    let mut tag = false;
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "-n" | "--np" => {
                let v = value(args, &mut i, "-n")?;
                n = Some(v.parse().ok().filter(|&k| k > 0).ok_or_else(|| format!("-n: bad count {v:?}"))?);
            }
            "--tag-output" => tag = true,
            "--help" | "-h" => {
                println!("usage: kdipc run -n N [--tag-output] -- PROG ARGS...");
                return Ok(ExitCode::SUCCESS);
            }
            "--" => {
                i += 1;
                break;
            }
            other => return Err(format!("run: unknown argument {other:?}")),
        }
        i += 1;
    }
    let n = n.ok_or("run: -n N is required")?;
    let prog = &args[i..];
    if prog.is_empty() {
        return Err("run: no program given (kdipc run -n N -- PROG ARGS)".into());
    }
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let lib = exe.with_file_name("libkdipc.so");
    if !lib.is_file() {
        return Err(format!("{} not found (cargo build --release)", lib.display()));
    }
    let dir = private_temp_dir()?;
    let res = run_with(n, tag, prog, &lib, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    res
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

static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_stop(_: libc::c_int) {
    STOP.store(true, std::sync::atomic::Ordering::SeqCst);
}

fn run_with(n: usize, tag: bool, prog: &[String], lib: &Path, dir: &Path) -> Result<ExitCode, String> {
    certs::init(dir).map_err(|e| e.to_string())?;
    let (tx, rx) = std::sync::mpsc::channel();
    let cdir = dir.to_path_buf();
    std::thread::spawn(move || {
        let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => return tx.send(Err(e.to_string())).unwrap_or(()),
        };
        let tx2 = tx.clone();
        if let Err(e) =
            rt.block_on(nameserver::serve("127.0.0.1:0".parse().expect("literal"), &cdir, move |a| {
                let _ = tx2.send(Ok(a));
            }))
        {
            let _ = tx.send(Err(e));
        }
    });
    let addr =
        rx.recv_timeout(Duration::from_secs(10)).map_err(|_| "embedded nameserver did not start")??;
    // SAFETY: installing a handler that only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_stop as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_stop as *const () as libc::sighandler_t);
    }
    let mut children = Vec::new();
    for rank in 0..n {
        let argv: Vec<String> = prog.iter().map(|a| a.replace("{rank}", &rank.to_string())).collect();
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .env("LD_PRELOAD", lib)
            .env("KDIPC_NAMESERVER", addr.to_string())
            .env("KDIPC_CERT_DIR", dir)
            .env("KDIPC_RANK", rank.to_string())
            .env("KDIPC_NPROCS", n.to_string())
            .process_group(0);
        if tag {
            cmd.stdout(std::process::Stdio::piped());
        }
        let mut child = cmd.spawn().map_err(|e| format!("{}: {e}", argv[0]))?;
        if let Some(out) = child.stdout.take() {
            std::thread::spawn(move || {
                use std::io::BufRead;
                for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                    println!("[{rank}] {line}");
                }
            });
        }
        children.push(child);
    }
    let mut worst = 0i32;
    let mut left = children.len();
    let mut done = vec![false; children.len()];
    while left > 0 {
        if STOP.load(std::sync::atomic::Ordering::SeqCst) {
            for (c, d) in children.iter().zip(&done) {
                if !d {
                    // SAFETY: signalling the process group of our own child.
                    unsafe { libc::kill(-(c.id() as i32), libc::SIGTERM) };
                }
            }
            STOP.store(false, std::sync::atomic::Ordering::SeqCst);
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
                if code != 0 {
                    eprintln!("kdipc run: rank {k} exited with {st}");
                }
                worst = worst.max(code);
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(ExitCode::from(worst.clamp(0, 255) as u8))
}
