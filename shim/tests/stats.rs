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
    // and 256 × 4 KiB in; rank 0 sent them.
    let (r0, r1) = (&printed[0], &printed[1]);
    assert!(field(r1, "pages_in") >= 256 && field(r1, "bytes_in") >= 256 * 4096, "{r1}");
    assert!(field(r0, "pages_out") >= 256 && field(r0, "bytes_out") >= 256 * 4096, "{r0}");
    assert!(field(r1, "read_faults") >= 1 && field(r1, "write_faults") >= 1, "{r1}");
    assert!(field(r1, "fault_p50_us") >= 1, "{r1}");

    // The nameserver heard the same figures.
    let out = c.kdipc_command().args(["stats", "--json"]).output().unwrap();
    assert!(out.status.success(), "kdipc stats: {}", String::from_utf8_lossy(&out.stderr));
    let json = String::from_utf8_lossy(&out.stdout);
    assert!(json.trim_start().starts_with('[') && json.trim_end().ends_with(']'), "{json}");
    for line in &printed {
        let pid = field(line, "pid");
        let pages_in = field(line, "pages_in");
        assert!(
            json.contains(&format!("\"pid\":{pid},\"alive\":false,"))
                && json.contains(&format!("\"pages_in\":{pages_in},")),
            "kdipc stats --json lacks pid {pid} with pages_in {pages_in}:\n{json}"
        );
    }
    let out = c.kdipc_command().arg("stats").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().filter(|l| l.contains(" gone ")).count(), 2, "{text}");
    let bad = c.kdipc_command().args(["stats", "--bogus"]).output().unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert_eq!(String::from_utf8_lossy(&bad.stderr).lines().count(), 1);
}
