//! `SEM_UNDO` across `exec`. Linux keeps a process's adjustments across
//! `execve` and applies them when the process exits. A node does not
//! survive `exec` (its thread and connection are gone), so before the
//! kernel replaces the image the node hands its adjustments to a *keeper*:
//! a small detached `kdipc undo-keeper PID` process, itself a node, which
//! watches the pid (a pidfd) and applies them (`SemCall::Exit`) when the
//! process finally exits, however it exits. If the keeper dies, the
//! nameserver applies them when its connection times out, as for any node.
//! A new image that uses IPC again starts a node that takes them back from
//! the keeper at start (found by the abstract unix socket
//! `kdipc-undo-PID` of the keeper, which checks the caller's pid), so that
//! its own `SEM_UNDO` operations add to the same adjustments, as on Linux;
//! the keeper then exits.
//!
//! Everything here runs inside `libkdipc.so` too: I/O is raw system calls
//! (the shim hooks `read` and `write`).

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::node::NodeHandle;
use crate::protocol::NodeId;

/// This process's node ran an operation with `SEM_UNDO` or took
/// adjustments over: `exec` hands them to a keeper (a process without any
/// spawns none).
pub static HAS_UNDO: AtomicBool = AtomicBool::new(false);

/// The keeper's listening address for process `pid` (abstract namespace).
fn keeper_addr(pid: i32) -> (libc::sockaddr_un, libc::socklen_t) {
    // SAFETY: sockaddr_un is plain data; all zeroes is a valid value.
    let mut a: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    a.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let name = format!("kdipc-undo-{pid}");
    for (i, b) in name.bytes().enumerate() {
        a.sun_path[1 + i] = b as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sa_family_t>() + 1 + name.len();
    (a, len as libc::socklen_t)
}

fn unix_socket() -> Option<OwnedFd> {
    // SAFETY: socket with valid arguments; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    // SAFETY: a fresh descriptor we own.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Writes all of `s` (raw system call).
fn send_line(fd: i32, s: &str) -> bool {
    let b = s.as_bytes();
    // SAFETY: writing our own bytes to a descriptor we hold.
    let n = unsafe { libc::syscall(libc::SYS_write, fd, b.as_ptr(), b.len()) };
    n == b.len() as i64
}

/// Reads one short line (raw system calls), waiting at most `timeout`.
fn recv_line(fd: i32, timeout: Duration) -> Option<String> {
    let deadline = std::time::Instant::now() + timeout;
    let mut out = Vec::new();
    while !out.ends_with(b"\n") && out.len() < 64 {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if !wait_readable(fd, left) {
            return None;
        }
        let mut b = [0u8; 64];
        // SAFETY: reading into our own buffer of 64 bytes.
        let n = unsafe { libc::syscall(libc::SYS_read, fd, b.as_mut_ptr(), b.len()) };
        if n <= 0 {
            return None;
        }
        out.extend_from_slice(&b[..n as usize]);
    }
    String::from_utf8(out).ok().map(|s| s.trim().to_string())
}

/// Whether `fd` becomes readable within `timeout` (EINTR: look again).
fn wait_readable(fd: i32, timeout: Duration) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let mut p = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        let t = libc::timespec { tv_sec: left.as_secs() as libc::time_t, tv_nsec: left.subsec_nanos() as _ };
        // SAFETY: one valid pollfd and timespec (the raw system call: the
        // shim hooks `poll`).
        let r = unsafe {
            libc::syscall(libc::SYS_ppoll, &mut p, 1, &t as *const libc::timespec, std::ptr::null::<u8>(), 8)
        };
        if r > 0 {
            return true;
        }
        if r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return false;
        }
    }
}

/// Before `exec` (the node still runs): hands this process's `SEM_UNDO`
/// adjustments to a keeper. Without a keeper (none could start), they
/// apply at `exec`, as before.
pub fn before_exec(n: &NodeHandle) {
    if HAS_UNDO.load(Ordering::Relaxed) {
        keeping_errno(|| hand_to_keeper(n))
    }
}

fn hand_to_keeper(n: &NodeHandle) {
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() };
    let Some((sock, keeper)) = spawn_keeper(pid) else {
        eprintln!("kdipc: no undo keeper could start; SEM_UNDO adjustments apply at exec");
        return;
    };
    let moved = n.hand_undo_over(keeper).unwrap_or(0);
    send_line(sock.as_raw_fd(), if moved > 0 { "1\n" } else { "0\n" });
}

/// Starts `kdipc undo-keeper PID` (detached: not our child once it runs)
/// and returns the connection to it and its node id.
fn spawn_keeper(pid: i32) -> Option<(OwnedFd, NodeId)> {
    let mut sv = [0i32; 2];
    // SAFETY: socketpair fills two descriptors; checked.
    if unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0, sv.as_mut_ptr()) }
        != 0
    {
        return None;
    }
    // SAFETY: fresh descriptors we own.
    let (ours, theirs) = unsafe { (OwnedFd::from_raw_fd(sv[0]), OwnedFd::from_raw_fd(sv[1])) };
    let bin = CString::new(crate::node::kdipc_binary().into_os_string().into_encoded_bytes()).ok()?;
    let args = [bin.clone(), CString::new("undo-keeper").ok()?, CString::new(pid.to_string()).ok()?];
    let env: Vec<CString> = std::env::vars_os()
        .filter(|(k, _)| k != "LD_PRELOAD")
        .filter_map(|(k, v)| {
            let mut e = k.into_encoded_bytes();
            e.push(b'=');
            e.extend(v.into_encoded_bytes());
            CString::new(e).ok()
        })
        .collect();
    let mut argv: Vec<*mut libc::c_char> = args.iter().map(|a| a.as_ptr() as *mut _).collect();
    argv.push(std::ptr::null_mut());
    let mut envp: Vec<*mut libc::c_char> = env.iter().map(|a| a.as_ptr() as *mut _).collect();
    envp.push(std::ptr::null_mut());
    let mut child: libc::pid_t = 0;
    // SAFETY: file actions initialised, used and destroyed here; posix_spawn
    // gets NUL-terminated argument and environment arrays that outlive the
    // call. glibc's posix_spawn clones and execs without our hooks.
    let r = unsafe {
        let mut fa: libc::posix_spawn_file_actions_t = std::mem::zeroed();
        libc::posix_spawn_file_actions_init(&mut fa);
        libc::posix_spawn_file_actions_adddup2(&mut fa, theirs.as_raw_fd(), 0);
        for fd in [1, 2] {
            libc::posix_spawn_file_actions_addopen(&mut fa, fd, c"/dev/null".as_ptr(), libc::O_WRONLY, 0);
        }
        let r =
            libc::posix_spawn(&mut child, bin.as_ptr(), &fa, std::ptr::null(), argv.as_ptr(), envp.as_ptr());
        libc::posix_spawn_file_actions_destroy(&mut fa);
        r
    };
    drop(theirs);
    if r != 0 {
        return None;
    }
    let line = recv_line(ours.as_raw_fd(), Duration::from_secs(10));
    // The keeper forks and its first process exits at once: reap it (the
    // new image must not find a child it did not make).
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(child, std::ptr::null_mut(), 0) };
    let keeper: NodeId = line?.parse().ok()?;
    Some((ours, keeper))
}

/// Runs `f` leaving the program's `errno` as it was (a successful call
/// must not show our failed `connect`).
fn keeping_errno<R>(f: impl FnOnce() -> R) -> R {
    // SAFETY: errno is thread-local and always valid.
    let e = unsafe { *libc::__errno_location() };
    let r = f();
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = e };
    r
}

/// At node start: takes back the adjustments a keeper holds for this
/// process (an earlier image of it had them).
pub fn adopt(n: &NodeHandle) {
    keeping_errno(|| adopt_inner(n))
}

fn adopt_inner(n: &NodeHandle) {
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() };
    let Some(s) = unix_socket() else { return };
    let (addr, len) = keeper_addr(pid);
    // SAFETY: connecting our socket to a valid address of `len` bytes.
    if unsafe { libc::connect(s.as_raw_fd(), &addr as *const _ as *const libc::sockaddr, len) } != 0 {
        return; // No keeper: the common case.
    }
    let Some(keeper) = recv_line(s.as_raw_fd(), Duration::from_secs(5)).and_then(|l| l.parse().ok()) else {
        return;
    };
    if let Ok(moved) = n.move_undo(keeper, n.id(), pid) {
        if moved > 0 {
            HAS_UNDO.store(true, Ordering::Relaxed);
        }
        send_line(s.as_raw_fd(), "done\n");
    }
}

/// `kdipc undo-keeper PID`: keeps process PID's `SEM_UNDO` adjustments
/// until it exits (see the module doc). Its standard input is the
/// connection to the process that started it. Returns the exit status.
pub fn keeper_main(pid: i32) -> i32 {
    // Nothing of the process that started us stays open here (a pipe's
    // reader would wait for us).
    // SAFETY: close_range on descriptors we do not use.
    unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    // SAFETY: pidfd_open of a pid; checked.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0u32) } as i32;
    if pidfd < 0 {
        return 1;
    }
    // Detach: the process we keep must not have us as a child.
    // SAFETY: no other thread exists yet in this process.
    match unsafe { libc::fork() } {
        0 => {}
        c if c > 0 => return 0,
        _ => return 1,
    }
    // SAFETY: setsid has no preconditions.
    unsafe { libc::setsid() };
    let mut cfg = match crate::config::Config::from_env() {
        Ok(c) => c,
        Err(_) => return 1,
    };
    cfg.auto = false;
    let Ok(h) = NodeHandle::connect(cfg) else { return 1 };
    let done = |h: NodeHandle| {
        h.shutdown(Duration::from_secs(10));
        0
    };
    // Listening before the process can exec: its new image may look for
    // us as soon as it starts.
    let listen = unix_socket().filter(|s| {
        let (addr, len) = keeper_addr(pid);
        // SAFETY: binding and listening on our own socket.
        unsafe {
            libc::bind(s.as_raw_fd(), &addr as *const _ as *const libc::sockaddr, len) == 0
                && libc::listen(s.as_raw_fd(), 4) == 0
        }
    });
    if !send_line(0, &format!("{}\n", h.id())) {
        return done(h);
    }
    if recv_line(0, Duration::from_secs(30)).as_deref() != Some("1") {
        return done(h);
    }
    // SAFETY: closing our standard input, which we no longer need.
    unsafe { libc::close(0) };
    loop {
        let mut fds = [
            libc::pollfd { fd: pidfd, events: libc::POLLIN, revents: 0 },
            libc::pollfd {
                fd: listen.as_ref().map_or(-1, |s| s.as_raw_fd()),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: two valid pollfds.
        if unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) } < 0 {
            continue;
        }
        if fds[0].revents != 0 {
            // The process exited: its adjustments apply now.
            let _ = h.sem_exit(pid);
            return done(h);
        }
        if fds[1].revents != 0
            && handed_to_new_image(listen.as_ref().map_or(-1, |s| s.as_raw_fd()), pid, h.id())
        {
            return done(h);
        }
    }
}

/// Serves one connection on the keeper's socket: the process's new image
/// takes the adjustments. Whether it did.
fn handed_to_new_image(listen: i32, pid: i32, me: NodeId) -> bool {
    // SAFETY: accepting on our listening socket; checked.
    let c = unsafe { libc::accept4(listen, std::ptr::null_mut(), std::ptr::null_mut(), libc::SOCK_CLOEXEC) };
    if c < 0 {
        return false;
    }
    // SAFETY: a fresh descriptor we own.
    let c = unsafe { OwnedFd::from_raw_fd(c) };
    // SAFETY: ucred is plain data; SO_PEERCRED fills it.
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: as above.
    let r = unsafe {
        libc::getsockopt(
            c.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            &mut cred as *mut _ as *mut _,
            &mut len,
        )
    };
    if r != 0 || cred.pid != pid {
        return false;
    }
    send_line(c.as_raw_fd(), &format!("{me}\n"))
        && recv_line(c.as_raw_fd(), Duration::from_secs(10)).as_deref() == Some("done")
}
