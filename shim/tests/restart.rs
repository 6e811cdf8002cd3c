//! Issue 6, nameserver restart: `kdipc nameserver --state DIR` keeps the
//! registry, the semaphore sets, the home copies of pages and the members
//! on disk. A nameserver killed with SIGKILL and started again on the same
//! directory and address carries on: objects outlive it between runs, and
//! a run in progress completes with exact results (the nodes rejoin, the
//! manager rebuilds who owns each page from their reports, calls left
//! unanswered are asked again and answered once).

mod support;

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use support::{can_use_netns, Cluster, Outcome};

const T: Duration = Duration::from_secs(90);

/// How long the nameserver stays dead in these tests.
const DOWN: Duration = Duration::from_millis(300);

fn spawn_ranks(c: &Cluster, name: &str, nprocs: usize, args: impl Fn(usize) -> Vec<String>) -> Vec<Child> {
    (0..nprocs)
        .map(|rank| {
            let mut cmd = c.command(rank, &support::prog(name));
            cmd.args(args(rank)).stdout(Stdio::piped()).stderr(Stdio::piped());
            cmd.spawn().unwrap()
        })
        .collect()
}

/// Runs `name` on `nprocs` ranks, kills the nameserver `after` into the
/// run and starts it again; every rank must succeed, and must have seen
/// the restart (it happened mid-run).
fn run_across_restart(
    c: &mut Cluster,
    name: &str,
    nprocs: usize,
    args: impl Fn(usize) -> Vec<String>,
    after: Duration,
) -> Vec<Outcome> {
    let children = spawn_ranks(c, name, nprocs, args);
    std::thread::sleep(after);
    let t0 = Instant::now();
    c.restart_nameserver(DOWN);
    let outs = support::wait_all(children, T, &c.ns_log_path());
    let done = t0.elapsed();
    for (rank, o) in outs.iter().enumerate() {
        o.assert_ok(&format!("{name} rank {rank}"));
        assert!(
            o.stderr.contains("the nameserver restarted: rejoining"),
            "{name} rank {rank} finished before the restart (make the run longer): {o:#?}"
        );
    }
    let log = support::plain(&c.ns_log());
    let rebuilt = log.lines().find(|l| l.contains("rebuilding page ownership")).unwrap_or_default();
    assert!(rebuilt.contains("gone=[]"), "a node did not rejoin: {rebuilt}\n{log}");
    println!(
        "{name}: nameserver killed {:.1} s into the run, down {} ms; run done {:.2} s after the kill",
        after.as_secs_f64(),
        DOWN.as_millis(),
        done.as_secs_f64()
    );
    outs
}

#[test]
fn segments_outlive_a_nameserver_restart_between_runs() {
    let mut c = Cluster::with_state(0, &[]);
    let key = support::fresh_key();
    c.run("persist", &["write", &key, "40"], T).assert_ok("persist write");
    c.restart_nameserver(DOWN);
    let ipcs = c.kdipc_command().args(["ipcs", "-m"]).output().unwrap();
    let listing = String::from_utf8_lossy(&ipcs.stdout);
    let hex = format!("{:#010x}", u32::from_str_radix(key.trim_start_matches("0x"), 16).unwrap());
    assert!(listing.contains(&hex), "segment {hex} not listed after the restart:\n{listing}");
    let o = c.run("persist", &["read", &key, "40"], T);
    o.assert_ok("persist read after the restart");
    assert!(o.stdout.contains("bad_bytes=0"), "{o:#?}");
}

fn prodcons_across_a_restart(c: &mut Cluster) {
    let key = support::fresh_key();
    let items = 3000;
    let outs = run_across_restart(
        c,
        "prodcons",
        4,
        |rank| vec![rank.to_string(), "4".into(), key.clone(), items.to_string()],
        Duration::from_millis(1500),
    );
    let line = outs[0].stdout.lines().find(|l| l.starts_with("prodcons:")).expect("rank 0's result line");
    println!("{line}");
    for want in [
        format!("consumed={items} "),
        "duplicates=0 ".into(),
        "missing=0 ".into(),
        "out_of_order=0 ".into(),
        "torn=0 ".into(),
        "final_sems=64,0,1 ".into(),
    ] {
        assert!(line.contains(&want), "prodcons across a restart: want {want:?} in {line}");
    }
}

#[test]
fn prodcons_completes_across_a_nameserver_restart() {
    let mut c = Cluster::with_state(0, &[]);
    prodcons_across_a_restart(&mut c);
}

#[test]
fn prodcons_completes_across_a_restart_of_a_syncing_nameserver() {
    let mut c = Cluster::with_synced_state();
    prodcons_across_a_restart(&mut c);
}

#[test]
fn prodcons_across_emulated_hosts_completes_across_a_nameserver_restart() {
    if !can_use_netns("prodcons_across_emulated_hosts_completes_across_a_nameserver_restart") {
        return;
    }
    let mut c = Cluster::with_state(2, &[]);
    prodcons_across_a_restart(&mut c);
}

/// `checksum=… center=… bits=…` of a heat result line.
fn heat_result(line: &str) -> String {
    line.split_whitespace()
        .filter(|f| ["checksum=", "center=", "bits="].iter().any(|p| f.starts_with(p)))
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn heat_computes_the_same_field_across_a_nameserver_restart() {
    let size = ["-n", "256", "-s", "1500"];
    let reference =
        std::process::Command::new(support::prog("heat_threads")).args(size).arg("1").output().unwrap();
    let reference =
        heat_result(String::from_utf8_lossy(&reference.stdout).lines().next().unwrap_or_default());
    assert!(reference.contains("checksum="), "heat_threads printed no result");
    for wait in ["poll", "sem"] {
        let mut c = Cluster::with_state(0, &[]);
        let key = support::fresh_key();
        let args = |rank: usize| -> Vec<String> {
            let mut a: Vec<String> = size.iter().map(|s| s.to_string()).collect();
            a.extend(["-w".into(), wait.into(), rank.to_string(), "3".into(), key.clone()]);
            a
        };
        let outs = run_across_restart(&mut c, "heat", 3, args, Duration::from_millis(1000));
        let line = outs[0].stdout.lines().find(|l| l.starts_with("heat rank 0:")).expect("rank 0's result");
        println!("heat -w {wait}: {line}");
        assert_eq!(heat_result(line), reference, "heat -w {wait} across a restart differs from one thread");
    }
}
