//! Distributed shared memory, end to end: real C programs (c-tests/) under
//! the real shim, a real nameserver, real QUIC between real processes; on
//! loopback and on emulated hosts (network namespaces, root only).

mod support;

use std::time::Duration;

use support::{can_use_netns, iters, Cluster, Outcome};

const T: Duration = Duration::from_secs(240);

fn all_ok(outs: &[Outcome], what: &str) {
    for (rank, o) in outs.iter().enumerate() {
        o.assert_ok(&format!("{what} rank {rank}"));
    }
}

/// Every rank's summary line must report zero forbidden outcomes; the
/// checking ranks print `forbidden=N`.
fn no_forbidden(outs: &[Outcome], what: &str) {
    all_ok(outs, what);
    let lines: Vec<&str> =
        outs.iter().flat_map(|o| o.stdout.lines()).filter(|l| l.contains("forbidden=")).collect();
    assert!(!lines.is_empty(), "{what}: no rank reported its outcomes: {outs:#?}");
    for l in lines {
        assert!(l.contains("forbidden=0 "), "{what}: {l}");
    }
    for o in outs {
        print!("{}", o.stdout);
    }
}

fn pattern(c: &Cluster, nprocs: usize) {
    let key = support::fresh_key();
    let outs = c.run_ranks("pattern", nprocs, &[key, "64".into(), nprocs.to_string()], T);
    all_ok(&outs, "pattern");
    for o in &outs {
        assert!(o.stdout.contains("bad_bytes=0 "), "{}", o.stdout);
    }
}

fn litmus(c: &Cluster, name: &str, nprocs: usize, n: u32) {
    let outs = c.run_ranks(name, nprocs, &[support::fresh_key(), n.to_string()], T);
    no_forbidden(&outs, name);
}

fn peterson(c: &Cluster, n: u32) {
    let outs = c.run_ranks("peterson", 2, &[support::fresh_key(), n.to_string()], T);
    all_ok(&outs, "peterson");
    let expected = format!("counter={} expected={}", 2 * n as u64, 2 * n as u64);
    assert!(outs[0].stdout.contains(&expected), "peterson: {}", outs[0].stdout);
    print!("{}", outs[0].stdout);
}

/// 1. One process writes a multi-page pattern, the others read it; the
///    writer's role moves to every rank in turn.
#[test]
fn pattern_written_by_one_read_by_all_roles_swap() {
    pattern(&Cluster::local(), 3);
}

/// 2. Store buffering (thesis Fig. 2.1): `0 0` never appears.
#[test]
fn litmus_store_buffering() {
    litmus(&Cluster::local(), "sb", 2, iters(20_000, 100_000));
}

/// 2. Message passing: a reader that sees the flag sees the data.
#[test]
fn litmus_message_passing() {
    litmus(&Cluster::local(), "mp", 2, iters(20_000, 100_000));
}

/// 2. IRIW with 4 processes: readers agree on the order of two writes.
#[test]
fn litmus_iriw() {
    litmus(&Cluster::local(), "iriw", 4, iters(20_000, 100_000));
}

/// 3. Peterson's mutual exclusion with plain loads and stores: exact count.
#[test]
fn peterson_mutual_exclusion_counts_exactly() {
    peterson(&Cluster::local(), iters(20_000, 100_000));
}

/// 4. A segment outlives its processes: written, writer exits, read later.
#[test]
fn persistence_after_the_writer_exits() {
    let c = Cluster::local();
    let key = support::fresh_key();
    c.run("persist", &["write", &key, "16"], T).assert_ok("persist write");
    let r = c.run("persist", &["read", &key, "16"], T);
    r.assert_ok("persist read");
    assert!(r.stdout.contains("bad_bytes=0"), "{}", r.stdout);
}

/// 4b. Processes that come and go (`c-tests/churn.c`): short-lived workers,
///     several at a time, each adding to every page a few times (the pages
///     move between the workers running at once) and exiting while the
///     others' requests for its pages are on their way. Every count must be exact,
///     and every exit a clean one: the nameserver declares no node lost and
///     recovers nothing.
fn churn(c: &Cluster, workers: usize, at_once: usize) {
    use std::process::Stdio;
    let key = support::fresh_key();
    let pages = "16";
    c.run("churn", &[&key, "init", pages], T).assert_ok("churn init");
    let mut running: Vec<std::process::Child> = Vec::new();
    let mut started = 0;
    let deadline = std::time::Instant::now() + T;
    while started < workers || !running.is_empty() {
        assert!(std::time::Instant::now() < deadline, "churn: workers still running after {T:?}");
        let mut i = 0;
        while i < running.len() {
            if let Some(st) = running[i].try_wait().unwrap() {
                let out = running.swap_remove(i).wait_with_output().unwrap();
                assert!(
                    st.success(),
                    "churn worker failed ({st}): {}\nnameserver log:\n{}",
                    String::from_utf8_lossy(&out.stderr),
                    c.ns_log()
                );
            } else {
                i += 1;
            }
        }
        while started < workers && running.len() < at_once {
            let mut cmd = c.command(started % c.nhosts().max(1), &support::prog("churn"));
            cmd.args([&key, "work", pages, &started.to_string()])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            running.push(cmd.spawn().unwrap());
            started += 1;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let check = c.run("churn", &[&key, "check", pages, &workers.to_string()], T);
    check.assert_ok("churn check");
    print!("{}", check.stdout);
    let log = support::plain(&c.ns_log());
    assert!(log.matches("node left").count() >= workers, "{log}");
    for bad in ["node lost", "without giving", "lost:", "pages lost", "left=false"] {
        assert!(!log.contains(bad), "nameserver log has {bad:?}:\n{log}");
    }
}

#[test]
fn processes_that_come_and_go_lose_nothing() {
    churn(&Cluster::local(), iters(48, 200) as usize, 6);
}

#[test]
fn processes_that_come_and_go_across_emulated_hosts() {
    if !can_use_netns("processes_that_come_and_go_across_emulated_hosts") {
        return;
    }
    churn(&Cluster::hosts(2), iters(32, 200) as usize, 4);
}

/// 5. Threads of one process fault on the same and different pages at once
///    while another process writes them.
#[test]
fn threads_fault_concurrently_while_another_process_writes() {
    let c = Cluster::local();
    let outs = c.run_ranks("threads", 2, &[support::fresh_key(), "300".into()], T);
    all_ok(&outs, "threads");
    print!("{}{}", outs[0].stdout, outs[1].stdout);
}

/// 6. A write through an `SHM_RDONLY` attach is a SIGSEGV, as natively; a
///    genuine bad pointer still crashes the program.
#[test]
fn readonly_write_and_bad_pointer_crash_with_sigsegv() {
    let c = Cluster::local();
    let key = support::fresh_key();
    let ro = c.run("rdonly", &["read-ro", &key], T);
    ro.assert_ok("read-ro");
    let w = c.run("rdonly", &["write-ro", &key], T);
    assert_eq!(w.signal(), Some(libc::SIGSEGV), "write-ro: {w:#?}");
    let b = c.run("rdonly", &["badptr", &support::fresh_key()], T);
    assert_eq!(b.signal(), Some(libc::SIGSEGV), "badptr: {b:#?}");
}

/// Ordinary keys go to the kernel unchanged and start nothing: the
/// nameserver address is unreachable, and the program still works.
#[test]
fn ordinary_keys_pass_through_without_contacting_anyone() {
    let c = Cluster::local();
    let key = support::fresh_key();
    let children: Vec<_> = (0..2)
        .map(|rank| {
            let mut cmd = c.command(0, &support::prog("pattern"));
            cmd.env("KDIPC_NATIVE", "1")
                .env("KDIPC_NAMESERVER", "127.0.0.1:1")
                .env("KDIPC_LOG", "debug")
                .args([rank.to_string(), "2".into(), key.clone(), "8".into(), "2".into()])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped());
            cmd.spawn().unwrap()
        })
        .collect();
    let outs = support::wait_all(children, T, std::path::Path::new("/dev/null"));
    all_ok(&outs, "native pattern under the shim");
    for o in &outs {
        assert!(o.stderr.is_empty(), "the shim said something: {}", o.stderr);
    }
}

/// 7. Tests 1–3 across emulated hosts: each process in its own network
///    namespace with its own address, the nameserver in another.
#[test]
fn emulated_hosts_pattern_litmus_peterson() {
    if !can_use_netns("emulated_hosts_pattern_litmus_peterson") {
        return;
    }
    let c = Cluster::hosts(4);
    pattern(&c, 3);
    litmus(&c, "sb", 2, iters(20_000, 100_000));
    litmus(&c, "mp", 2, iters(20_000, 100_000));
    litmus(&c, "iriw", 4, iters(20_000, 100_000));
    peterson(&c, iters(20_000, 100_000));
}

/// A program with its own `SIGSEGV` handler (installed after attaching)
/// recovers from its own faults, and a program that blocks `SIGSEGV` still
/// gets its distributed pages.
#[test]
fn own_sigsegv_handler_and_blocked_sigsegv_keep_working() {
    let c = Cluster::local();
    let outs = c.run_ranks("ownhandler", 2, &[support::fresh_key(), "200".into()], T);
    all_ok(&outs, "ownhandler");
    for o in &outs {
        assert!(o.stdout.contains("handled=200"), "{}", o.stdout);
    }
}

/// A shell under the shim (it installs handlers and masks signals) works:
/// users export LD_PRELOAD in their shell.
#[test]
fn a_shell_under_the_shim_runs_unchanged() {
    let out = std::process::Command::new("sh")
        .args(["-c", "trap 'echo trapped' USR1; kill -USR1 $$; echo done"])
        .env("LD_PRELOAD", support::lib())
        .env("KDIPC_KEYS", "all")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "trapped\ndone\n");
}

/// `read`, `write`, `readv`, `recv`, `send` on buffers in distributed pages
/// that are not present, or held by another process: right bytes, no
/// `EFAULT`.
#[test]
fn system_calls_copy_to_and_from_distributed_pages() {
    let c = Cluster::local();
    let outs = c.run_ranks("syscalls", 2, &[support::fresh_key(), "8".into()], T);
    all_ok(&outs, "syscalls");
}

/// The classic pattern: a parent creates a segment and a semaphore set,
/// forks workers that fill a share each and post (then `_exit`), waits,
/// checks every byte; children then `exec` a checker that attaches by key
/// and by the id passed in argv.
#[test]
fn fork_workers_then_exec_checkers() {
    let c = Cluster::local();
    let key = support::fresh_key();
    let o = c.run("forkers", &[&key, "4", "16"], T);
    o.assert_ok("forkers");
    assert!(o.stdout.contains("checkers ok"), "{}", o.stdout);
}
