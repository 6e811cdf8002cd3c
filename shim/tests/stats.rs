//! `kdipc stats` and `KDIPC_STATS=1`: after a real run of C programs under
//! the shim, the figures the nodes report add up to what the run did.

mod support;

use std::time::Duration;

use support::Cluster;

fn field(line: &str, key: &str) -> u64 {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {line:?}"))
}

/// The objects of `kdipc stats --json` (`{"nodes":[...],"objects":[...]}`),
/// each as its `{...}` text.
fn json_objects(json: &str) -> Vec<String> {
    let list = json.split_once("\"objects\":[").unwrap_or_else(|| panic!("no objects in {json}")).1;
    let list = list.trim_end().strip_suffix("]}").unwrap_or_else(|| panic!("bad end: {json}"));
    if list.is_empty() {
        return Vec::new();
    }
    list.split("},{").map(|o| o.trim_matches(|c| c == '{' || c == '}').to_string()).collect()
}

/// A field of one JSON object's text.
fn jfield<'a>(obj: &'a str, key: &str) -> &'a str {
    obj.split(',')
        .find_map(|kv| kv.strip_prefix(&format!("\"{key}\":")))
        .unwrap_or_else(|| panic!("no {key} in {obj}"))
}

fn jnum(obj: &str, key: &str) -> u64 {
    jfield(obj, key).parse().unwrap_or_else(|_| panic!("{key} not a number in {obj}"))
}

/// The object of kind `kind` with id `id`, if listed.
fn json_object(json: &str, kind: &str, id: &str) -> Option<String> {
    json_objects(json)
        .into_iter()
        .find(|o| jfield(o, "kind") == format!("\"{kind}\"") && jfield(o, "id") == id)
}

/// `key=ID` in a C program's output.
fn id_of(out: &str, key: &str) -> String {
    out.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= in {out:?}"))
        .into()
}

/// Runs `prog` with `KDIPC_STATS=1` on the cluster's host 0 and checks it
/// succeeded.
fn run_with_stats(c: &Cluster, prog: &str, args: &[String]) -> support::Outcome {
    let child = c
        .command(0, &support::prog(prog))
        .args(args)
        .env("KDIPC_STATS", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let o =
        support::wait_all(vec![child], Duration::from_secs(60), std::path::Path::new("/dev/null")).remove(0);
    o.assert_ok(prog);
    o
}

/// The `KDIPC_STATS=1` line of object `kind=id`, if printed.
fn object_line<'a>(stderr: &'a str, kind: &str, id: &str) -> Option<&'a str> {
    let tag = format!(" {kind}={id} ");
    stderr.lines().find(|l| l.starts_with("kdipc stats: ") && l.contains(&tag))
}

#[test]
fn stats_count_what_a_run_did() {
    let c = Cluster::local();
    // pagestream: rank 0 writes 256 pages, rank 1 reads them (bytes come
    // from rank 0), writes them, rank 0 reads them back.
    let key = support::fresh_key();
    let children: Vec<_> = (0..2)
        .map(|rank: u32| {
            c.command(0, &support::prog("pagestream"))
                .args([rank.to_string(), "2".into(), key.clone(), "256".into()])
                .env("KDIPC_STATS", "1")
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outs = support::wait_all(children, Duration::from_secs(120), std::path::Path::new("/dev/null"));
    let mut printed = Vec::new();
    for o in &outs {
        o.assert_ok("pagestream");
        let line = o.stderr.lines().find(|l| l.starts_with("kdipc stats: ")).unwrap_or_else(|| {
            panic!("KDIPC_STATS=1 printed nothing on stderr:\n{}", o.stderr);
        });
        printed.push(line.to_string());
    }
    // Rank 1 read every page from rank 0, with bytes: at least 256 pages
    // in, each up to its last non-zero byte (the low byte of the page's
    // last word, its 4 089th); rank 0 sent them.
    let (r0, r1) = (&printed[0], &printed[1]);
    assert!(field(r1, "pages_in") >= 256 && field(r1, "bytes_in") >= 256 * 4089, "{r1}");
    assert!(field(r0, "pages_out") >= 256 && field(r0, "bytes_out") >= 256 * 4089, "{r0}");
    assert!(field(r1, "read_faults") >= 1 && field(r1, "write_faults") >= 1, "{r1}");
    assert!(field(r1, "fault_p50_us") >= 1, "{r1}");

    // The nameserver heard the same figures.
    let out = c.kdipc_command().args(["stats", "--json"]).output().unwrap();
    assert!(out.status.success(), "kdipc stats: {}", String::from_utf8_lossy(&out.stderr));
    let json = String::from_utf8_lossy(&out.stdout);
    assert!(json.trim_start().starts_with("{\"nodes\":[") && json.trim_end().ends_with("]}"), "{json}");
    for line in &printed {
        let pid = field(line, "pid");
        let pages_in = field(line, "pages_in");
        assert!(
            json.contains(&format!("\"pid\":{pid},\"alive\":false,"))
                && json.contains(&format!("\"pages_in\":{pages_in},")),
            "kdipc stats --json lacks pid {pid} with pages_in {pages_in}:\n{json}"
        );
    }
    // Per object: both ranks used one segment; the nameserver's row for it
    // is the sum of what each printed for it.
    let seg_lines: Vec<&str> = outs
        .iter()
        .map(|o| {
            let l: Vec<&str> =
                o.stderr.lines().filter(|l| l.starts_with("kdipc stats: ") && l.contains(" shm=")).collect();
            assert_eq!(l.len(), 1, "one segment per rank: {}", o.stderr);
            l[0]
        })
        .collect();
    let seg = id_of(seg_lines[0], "shm");
    assert_eq!(seg, id_of(seg_lines[1], "shm"), "{seg_lines:?}");
    let row = json_object(&json, "shm", &seg).unwrap_or_else(|| panic!("segment {seg} not in {json}"));
    for k in
        ["read_faults", "write_faults", "pages_in", "pages_out", "bytes_in", "bytes_out", "invalidations"]
    {
        let sum: u64 = seg_lines.iter().map(|l| field(l, k)).sum();
        assert_eq!(jnum(&row, k), sum, "{k}: {row} vs {seg_lines:?}");
    }
    assert!(jnum(&row, "pages_in") >= 256 && jnum(&row, "p99_us") >= jnum(&row, "p50_us"), "{row}");
    let out = c.kdipc_command().arg("stats").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().filter(|l| l.contains(" gone ")).count(), 2, "{text}");
    assert!(text.contains("\n------ Objects --------\nkey        id         kind read_faults"), "{text}");
    let bad = c.kdipc_command().args(["stats", "--bogus"]).output().unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert_eq!(String::from_utf8_lossy(&bad.stderr).lines().count(), 1);
}

#[test]
fn stats_per_object_match_what_a_program_did() {
    let c = Cluster::local();
    // objstats: writes N pages of segment A, none on B; M operations on set
    // S, none on T; all four removed at the end.
    const N: u64 = 24;
    const M: u64 = 9;
    let keys: Vec<String> = (0..4).map(|_| support::fresh_key()).collect();
    let args: Vec<String> = keys.iter().cloned().chain([N.to_string(), M.to_string()]).collect();
    let o = run_with_stats(&c, "objstats", &args);
    let (a, b, s, t) =
        (id_of(&o.stdout, "a"), id_of(&o.stdout, "b"), id_of(&o.stdout, "s"), id_of(&o.stdout, "t"));

    // KDIPC_STATS=1: the node's line, then one line per object it used.
    let la =
        object_line(&o.stderr, "shm", &a).unwrap_or_else(|| panic!("no line for segment A: {}", o.stderr));
    // Writing N pages in order takes between 1 fault (the rest claimed
    // ahead, see docs/design.md) and N; every page comes in.
    assert!((1..=N).contains(&field(la, "write_faults")) && field(la, "pages_in") >= N, "{la}");
    assert!(field(la, "fault_p99_us") >= field(la, "fault_p50_us") && field(la, "fault_p50_us") >= 1, "{la}");
    let ls = object_line(&o.stderr, "sem", &s).unwrap_or_else(|| panic!("no line for set S: {}", o.stderr));
    assert_eq!(field(ls, "semops_local") + field(ls, "semops_remote"), M, "{ls}");
    if let Some(lb) = object_line(&o.stderr, "shm", &b) {
        assert!(lb.split_whitespace().skip(4).all(|w| w.ends_with("=0")), "B was never touched: {lb}");
    }
    if let Some(lt) = object_line(&o.stderr, "sem", &t) {
        assert!(lt.split_whitespace().skip(4).all(|w| w.ends_with("=0")), "T was never used: {lt}");
    }

    // The nameserver: the same figures per object, with keys, removed.
    let out = c.kdipc_command().args(["stats", "--json"]).output().unwrap();
    assert!(out.status.success(), "kdipc stats: {}", String::from_utf8_lossy(&out.stderr));
    let json = String::from_utf8_lossy(&out.stdout);
    let key_num = |k: &str| u32::from_str_radix(k.trim_start_matches("0x"), 16).unwrap().to_string();
    let ja = json_object(&json, "shm", &a).unwrap_or_else(|| panic!("segment A not in {json}"));
    assert_eq!(jfield(&ja, "key"), key_num(&keys[0]), "{ja}");
    assert_eq!(jfield(&ja, "removed"), "true", "{ja}");
    for k in ["read_faults", "write_faults", "pages_in", "bytes_out"] {
        assert_eq!(jnum(&ja, k), field(la, k), "{k}: {ja} vs {la}");
    }
    assert_eq!(jnum(&ja, "semops_local") + jnum(&ja, "semops_remote"), 0, "{ja}");
    let js = json_object(&json, "sem", &s).unwrap_or_else(|| panic!("set S not in {json}"));
    assert_eq!(jfield(&js, "key"), key_num(&keys[2]), "{js}");
    assert_eq!(jnum(&js, "semops_local") + jnum(&js, "semops_remote"), M, "{js}");
    assert_eq!(jnum(&js, "write_faults") + jnum(&js, "read_faults"), 0, "{js}");
    for (kind, id) in [("shm", &b), ("sem", &t)] {
        if let Some(j) = json_object(&json, kind, id) {
            for k in ["read_faults", "write_faults", "pages_in", "pages_out", "semops_local", "semops_remote"]
            {
                assert_eq!(jnum(&j, k), 0, "{kind} {id} was never used: {j}");
            }
        }
    }

    // The table: key id kind read_faults write_faults pages_in pages_out
    // bytes_in bytes_out invalidations semops p50_us p99_us status.
    let out = c.kdipc_command().arg("stats").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let row = |key: &str| -> Vec<String> {
        let k = format!("0x{:08x}", u32::from_str_radix(key.trim_start_matches("0x"), 16).unwrap());
        text.lines()
            .find(|l| l.starts_with(&k))
            .unwrap_or_else(|| panic!("no row for {key}: {text}"))
            .split_whitespace()
            .map(str::to_string)
            .collect()
    };
    let ra = row(&keys[0]);
    assert_eq!((ra[1].as_str(), ra[2].as_str(), ra[13].as_str()), (a.as_str(), "shm", "removed"), "{text}");
    assert_eq!(ra[4].parse::<u64>().unwrap(), field(la, "write_faults"), "{text}");
    let rs = row(&keys[2]);
    assert_eq!(
        (rs[1].as_str(), rs[2].as_str(), rs[10].as_str()),
        (s.as_str(), "sem", M.to_string().as_str()),
        "{text}"
    );
}

/// A program that removes its segment and then exits (matmul's rank 0) is
/// the segment's last user: the segment goes with its detach, and the
/// pages it wrote are not sent back to the nameserver first.
#[test]
fn a_removed_segment_goes_at_exit_without_its_pages_travelling() {
    let c = Cluster::local();
    let key = support::fresh_key();
    let o = run_with_stats(&c, "matmul", &["-n".into(), "200".into(), "0".into(), "1".into(), key]);
    assert!(o.stdout.contains("matmul rank 0: n=200 nprocs=1"), "{o:?}");
    let node = o
        .stderr
        .lines()
        .find(|l| l.starts_with("kdipc stats: node=") && !l.contains(" shm=") && !l.contains(" sem="))
        .unwrap_or_else(|| panic!("no node line: {}", o.stderr));
    // A, B and C: 3 × 79 pages written here.
    assert!(field(node, "pages_in") >= 3 * 79, "{node}");
    assert_eq!((field(node, "pages_out"), field(node, "bytes_out")), (0, 0), "{node}");
    // Gone from the nameserver too.
    let ipcs = c.kdipc_command().args(["ipcs", "-m"]).output().unwrap();
    let listing = String::from_utf8_lossy(&ipcs.stdout);
    assert!(
        ipcs.status.success() && listing.lines().filter(|l| l.starts_with("0x")).count() == 0,
        "{listing}"
    );
}
