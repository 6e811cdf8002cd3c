//! Trust: cluster credentials and System V permissions, with real
//! processes under the shim.
//!
//! * `kdipc certs init` writes private keys `0600` in a `0700` directory.
//! * A node holding another cluster's credentials cannot read a page or
//!   operate a semaphore: its `shmget`/`semget` fail at once with `ENOMEM`
//!   (the shim's errno for "the runtime cannot start") and the nameserver
//!   logs the refused connection. The raw TLS refusals (no certificate, a
//!   self-signed one, another cluster's) are in `runtime/tests/hostile.rs`.
//! * Permissions across emulated hosts, for a process of another user:
//!   `c-tests/perm.c` runs its steps (owner as root on one host, another
//!   user on another host, root again) and every answer must equal the
//!   kernel's for the same steps.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{Cluster, Outcome};

const T: Duration = Duration::from_secs(30);

/// The uid of the other user, and the group the owner gives a segment to.
const OTHER: u32 = 1000;

/// The other user's supplementary groups: 70 (more than a 64-entry buffer
/// holds), `OTHER` the last, so that group access depends on all of them
/// reaching the nameserver. Its own gid is 2000.
fn other_groups() -> String {
    let mut g: Vec<String> = (3000..3069).map(|g| g.to_string()).collect();
    g.push(OTHER.to_string());
    g.join(",")
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn temp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kdipc-trust-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn certs_init(dir: &Path) {
    let out = Command::new(support::kdipc()).args(["certs", "init"]).arg(dir).output().unwrap();
    assert!(out.status.success(), "kdipc certs init: {}", String::from_utf8_lossy(&out.stderr));
}

fn wait(cmd: &mut Command) -> Outcome {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    support::wait_all(vec![cmd.spawn().unwrap()], T, Path::new("/dev/null")).pop().unwrap()
}

/// `KDIPC_CERT_DIR` as the harness sets it for the cluster's own nodes.
fn cluster_certs(c: &Cluster) -> PathBuf {
    let cmd = c.command(0, &support::prog("perm"));
    let dir = cmd.get_envs().find(|(k, _)| *k == "KDIPC_CERT_DIR").and_then(|(_, v)| v).unwrap();
    PathBuf::from(dir)
}

fn count(log: &str, what: &str) -> usize {
    log.lines().filter(|l| l.contains(what)).count()
}

#[test]
fn certs_init_writes_keys_0600_in_a_0700_directory() {
    let root = temp("modes");
    let dir = root.join("nested/certs");
    certs_init(&dir);
    assert_eq!(mode(&dir), 0o700, "{}", dir.display());
    for key in ["ca.key", "node.key"] {
        assert_eq!(mode(&dir.join(key)), 0o600, "{key}");
    }
    for cert in ["ca.pem", "node.pem"] {
        assert!(dir.join(cert).is_file(), "{cert}");
    }
    // A directory that exists with looser modes, with a left-over file.
    let open = root.join("open");
    std::fs::create_dir_all(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(open.join("node.tmp"), "left over").unwrap();
    std::fs::set_permissions(open.join("node.tmp"), std::fs::Permissions::from_mode(0o644)).unwrap();
    certs_init(&open);
    assert_eq!(mode(&open), 0o700);
    assert_eq!(mode(&open.join("node.key")), 0o600);
    std::fs::remove_dir_all(root).unwrap();
}

/// Test 1 of issue 6: a node with another cluster's credentials gets
/// nothing: no id, so no page and no semaphore operation; it fails within
/// a second (no wait for a time-out) and the nameserver logs the refusal.
#[test]
fn a_node_with_another_clusters_credentials_gets_nothing() {
    let c = Cluster::local();
    let key = support::fresh_key();
    c.run("perm", &["owner", &key], T).assert_ok("perm owner");

    let foreign = temp("foreign");
    certs_init(&foreign);
    let before = count(&c.ns_log(), "refused connection");
    let start = Instant::now();
    // Ids are no secret (the first segment and set of a nameserver are
    // ID_BIT | 1, then | 2, ...): using them without asking fails as well.
    let (public_seg, private_set) = ("0x40000002", "0x40000001");
    let mut cmd = c.command(0, &support::prog("perm"));
    cmd.args(["probe", &key, public_seg, private_set]).env("KDIPC_CERT_DIR", &foreign);
    let out = wait(&mut cmd);
    let took = start.elapsed();
    out.assert_ok("perm probe with foreign credentials");
    assert_eq!(
        out.stdout,
        "probe-get: ret=-1 errno=ENOMEM\nprobe-semget: ret=-1 errno=ENOMEM\n\
         probe-at-id: ret=-1 errno=ENOMEM\nprobe-semop-id: ret=-1 errno=ENOMEM\n",
        "stderr:\n{}",
        out.stderr
    );
    assert!(out.stderr.contains("kdipc: cannot start"), "no reason given:\n{}", out.stderr);
    assert!(took < Duration::from_secs(3), "refusal took {took:?}");
    // The refusal reaches the nameserver's log (its line is written when
    // the handshake fails, which may be just after the client gave up).
    let deadline = Instant::now() + Duration::from_secs(5);
    while count(&c.ns_log(), "refused connection") == before && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = c.ns_log();
    let refused: Vec<&str> = log.lines().filter(|l| l.contains("refused connection")).skip(before).collect();
    assert_eq!(refused.len(), 1, "want one refusal line:\n{log}");
    assert!(
        refused[0].contains("invalid peer certificate: UnknownIssuer") && refused[0].contains("127.0.0.1:"),
        "{}",
        refused[0]
    );

    // The same probe with the cluster's credentials reads the page and
    // operates the semaphore.
    let ok = c.run("perm", &["probe", &key, public_seg, private_set], T);
    ok.assert_ok("perm probe");
    assert_eq!(
        ok.stdout,
        "probe-get: ret=id errno=0\nprobe-at: ret=addr errno=0 content=public\n\
         probe-semget: ret=id errno=0\nprobe-semop: ret=0 errno=0\n\
         probe-at-id: ret=addr errno=0 content=public\nprobe-semop-id: ret=0 errno=0\n"
    );
    c.run("perm", &["remove", &key], T).assert_ok("perm remove");
    std::fs::remove_dir_all(&foreign).unwrap();
}

/// `perm STEP KEY` as root, or as the other user with `setpriv`.
fn perm_command(mut cmd: Command, step: &str, key: &str, as_other: bool) -> Command {
    if as_other {
        cmd.args([
            &format!("--reuid={OTHER}"),
            "--regid=2000",
            &format!("--groups={}", other_groups()),
            support::prog("perm").to_str().unwrap(),
        ]);
    }
    cmd.args([step, key]);
    cmd
}

fn steps(mut run: impl FnMut(&str, bool) -> Outcome) -> String {
    let mut all = String::new();
    for (step, as_other) in [("owner", false), ("other", true), ("remove", false)] {
        let out = run(step, as_other);
        out.assert_ok(step);
        all += &out.stdout;
    }
    all
}

/// Test 2 of issue 6: uid, gid, mode, `SHM_RDONLY`, `IPC_SET`/`IPC_RMID`
/// by owner or creator only, enforced by the cluster as one kernel
/// enforces them, for a process of another user on another host.
#[test]
fn permissions_across_hosts_match_the_kernel() {
    if !support::can_use_netns("permissions_across_hosts_match_the_kernel") {
        return;
    }
    let setpriv = PathBuf::from("/usr/bin/setpriv");
    assert!(setpriv.is_file(), "setpriv (util-linux) is needed");

    let key = support::fresh_key();
    let kernel = steps(|step, other| {
        let cmd = Command::new(if other { setpriv.clone() } else { support::prog("perm") });
        let mut cmd = perm_command(cmd, step, &key, other);
        cmd.env("KDIPC_NATIVE", "1").env_remove("LD_PRELOAD").env_remove("KDIPC_KEYS");
        wait(&mut cmd)
    });
    assert!(kernel.contains("other-at-private: ret=-1 errno=EACCES"), "{kernel}");

    let c = Cluster::hosts(2);
    // The other user's own readable copy of the cluster's credentials.
    let users = temp("user-certs");
    std::fs::create_dir_all(&users).unwrap();
    let mine = users.join("certs");
    let st = Command::new("cp").arg("-r").arg(cluster_certs(&c)).arg(&mine).status().unwrap();
    assert!(st.success());
    let st = Command::new("chown").args(["-R", &format!("{OTHER}:{OTHER}")]).arg(&users).status().unwrap();
    assert!(st.success());

    let key = support::fresh_key();
    let distributed = steps(|step, other| {
        // The owner and root on host 0, the other user on host 1.
        let host = usize::from(other);
        let cmd = c.command(host, &if other { setpriv.clone() } else { support::prog("perm") });
        let mut cmd = perm_command(cmd, step, &key, other);
        if other {
            cmd.env("KDIPC_CERT_DIR", &mine);
        }
        wait(&mut cmd)
    });
    assert_eq!(count(&c.ns_log(), "node joined"), 3, "{}", c.ns_log());
    let (k, d): (Vec<&str>, Vec<&str>) = (kernel.lines().collect(), distributed.lines().collect());
    let diffs: Vec<String> = (0..k.len().max(d.len()))
        .filter(|&i| k.get(i) != d.get(i))
        .map(|i| format!("kernel: {:?}\n   kdipc: {:?}", k.get(i), d.get(i)))
        .collect();
    assert!(diffs.is_empty(), "{} lines differ:\n{}\n\nkdipc:\n{distributed}", diffs.len(), diffs.join("\n"));
    std::fs::remove_dir_all(&users).unwrap();
}
