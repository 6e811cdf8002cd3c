//! delay-link: a userspace IP link between network namespaces that delays
//! every packet by a fixed one-way time (this kernel has no netem).
//!
//!     delay-link [--delay-us US] NETNS=ADDR/LEN NETNS=ADDR/LEN ...
//!
//! For each NETNS it creates a TUN device (`IFF_TUN | IFF_NO_PI`) in the
//! namespace it runs in, moves it into NETNS with `ip link set … netns`,
//! gives it ADDR/LEN and brings it (and the namespace's `lo`) up, so that
//! the namespaces reach each other's addresses through their TUN devices.
//! Every IPv4 packet read from a TUN device is routed by its destination
//! address to the TUN device of that address's namespace and written there
//! US µs (default 50) after it was read, in arrival order; packets for
//! unknown addresses and non-IPv4 packets are dropped. Both KDIPC's QUIC
//! (UDP) and MPI's TCP see the delay. Prints `ready` on stdout when the
//! link is up and forwards until killed; the TUN devices disappear with
//! the process.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::process::{Command, ExitCode};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// `struct ifreq` as TUNSETIFF reads it: the name, then the flags.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

struct Host {
    netns: String,
    addr: Ipv4Addr,
    len: u8,
}

fn parse_host(arg: &str) -> Result<Host, String> {
    let bad = || format!("bad host {arg:?}: expected NETNS=ADDR/LEN, e.g. ns1=10.9.0.1/24");
    let (netns, cidr) = arg.split_once('=').ok_or_else(bad)?;
    let (addr, len) = cidr.split_once('/').ok_or_else(bad)?;
    let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
    let len: u8 = len.parse().ok().filter(|&l| l <= 32).ok_or_else(bad)?;
    if netns.is_empty() {
        return Err(bad());
    }
    Ok(Host { netns: netns.to_string(), addr, len })
}

fn open_tun(name: &str) -> Result<File, String> {
    let tun = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(|e| format!("/dev/net/tun: {e}"))?;
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads a struct ifreq (name + flags, 40 bytes) from
    // the pointer, which is valid and as large for the whole call.
    if unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, &mut req as *mut IfReq) } != 0 {
        return Err(format!("TUNSETIFF {name}: {}", std::io::Error::last_os_error()));
    }
    Ok(tun)
}

fn ip(args: &[&str]) -> Result<(), String> {
    let st = Command::new("ip").args(args).status().map_err(|e| format!("ip: {e}"))?;
    if !st.success() {
        return Err(format!("`ip {}` failed ({st})", args.join(" ")));
    }
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("delay-link: {e}");
            ExitCode::from(2)
        }
    }
}

fn run() -> Result<(), String> {
    let usage = "usage: delay-link [--delay-us US] NETNS=ADDR/LEN NETNS=ADDR/LEN ...";
    let mut delay = Duration::from_micros(50);
    let mut hosts = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--delay-us" => {
                let v = args.next().ok_or(usage)?;
                delay = Duration::from_micros(v.parse().map_err(|_| format!("--delay-us: bad value {v:?}"))?);
            }
            "-h" | "--help" => {
                println!("{usage}");
                return Ok(());
            }
            _ => hosts.push(parse_host(&a)?),
        }
    }
    if hosts.len() < 2 {
        return Err(usage.into());
    }

    let mut tuns = Vec::new();
    let mut route = HashMap::new();
    for (i, h) in hosts.iter().enumerate() {
        let name = format!("dl{}t{i}", std::process::id());
        if name.len() >= libc::IFNAMSIZ {
            return Err(format!("interface name {name} too long"));
        }
        let tun = open_tun(&name)?;
        let cidr = format!("{}/{}", h.addr, h.len);
        ip(&["link", "set", &name, "netns", &h.netns])?;
        ip(&["-n", &h.netns, "addr", "add", &cidr, "dev", &name])?;
        ip(&["-n", &h.netns, "link", "set", &name, "up"])?;
        ip(&["-n", &h.netns, "link", "set", "lo", "up"])?;
        if route.insert(h.addr, i).is_some() {
            return Err(format!("address {} given twice", h.addr));
        }
        tuns.push(tun);
    }

    // One reader thread per device, one writer that holds each packet
    // until its time: the delay is constant, so FIFO order is time order.
    let (tx, rx) = mpsc::channel::<(Instant, usize, Vec<u8>)>();
    for tun in &tuns {
        let mut tun = tun.try_clone().map_err(|e| format!("dup: {e}"))?;
        let tx = tx.clone();
        let route = route.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while let Ok(n) = tun.read(&mut buf) {
                let at = Instant::now() + delay;
                if n < 20 || buf[0] >> 4 != 4 {
                    continue;
                }
                let dst = Ipv4Addr::new(buf[16], buf[17], buf[18], buf[19]);
                if let Some(&to) = route.get(&dst) {
                    if tx.send((at, to, buf[..n].to_vec())).is_err() {
                        return;
                    }
                }
            }
        });
    }
    drop(tx);
    // Sleep precisely: the default 50 µs timer slack would add to the delay.
    // SAFETY: PR_SET_TIMERSLACK takes an integer argument, no pointers.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong) };
    println!("ready");
    std::io::stdout().flush().map_err(|e| e.to_string())?;
    // Waking up takes time (tens of µs on a VM): sleep that much less,
    // with the lateness of past wake-ups (at most half the delay) as the
    // estimate.
    let mut lateness = Duration::ZERO;
    for (at, to, pkt) in rx {
        let wake = at.checked_sub(lateness).unwrap_or(at);
        let now = Instant::now();
        if wake > now {
            std::thread::sleep(wake - now);
            // A stall (vCPU preemption) must not make later sleeps vanish.
            let late = Instant::now().saturating_duration_since(wake).min(delay / 2);
            lateness = (lateness * 7 + late) / 8;
        }
        // A full device queue drops the packet, as a congested link would.
        let _ = (&tuns[to]).write(&pkt);
    }
    Ok(())
}
