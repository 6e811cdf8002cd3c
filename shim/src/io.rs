//! System calls that copy to or from a user buffer. The kernel does not
//! fault on our behalf: `read(fd, buf, n)` into a distributed page that is
//! not present here returns `EFAULT` (or a short count). These hooks bring
//! the buffer's distributed pages in first, by touching them (write access
//! when the kernel writes into the buffer, read access when it reads from
//! it), and retry when a page left again before the kernel copied it. In a
//! process without distributed memory a hook costs one atomic load.

use kdipc_runtime::fault;
use kdipc_runtime::protocol::PAGE_SIZE;
use kdipc_runtime::registry::Errno;

use crate::ffi::{fail, guard, real_fn, FromErr};
use crate::user::{copy_in, copy_in_slice, copy_out};

/// Attempts before an `EFAULT` from a distributed buffer is passed on. A
/// call whose buffers span several pages that other nodes keep writing
/// may need many: each page must be here at the same moment. (Attempts are
/// cheap: touching present pages costs loads.)
const RETRIES: usize = 64;

/// A user buffer a call hands to the kernel: address, length, and whether
/// the kernel writes into it.
type Buf = (usize, usize, bool);

/// How a call's result says it failed.
pub trait Failed {
    fn failed(&self) -> bool;
}

impl Failed for libc::c_int {
    fn failed(&self) -> bool {
        *self == -1
    }
}

impl Failed for libc::ssize_t {
    fn failed(&self) -> bool {
        *self == -1
    }
}

impl Failed for *mut libc::c_char {
    fn failed(&self) -> bool {
        self.is_null()
    }
}

/// `getcwd`'s failure value.
impl FromErr for *mut libc::c_char {
    fn failure() -> Self {
        std::ptr::null_mut()
    }
}

/// Brings the distributed pages of `[addr, addr + len)` in by touching
/// each one as the program would (a read, or for write access a locked
/// OR of 0, which changes nothing): a present page costs a load, a
/// missing one is a fault our handler serves. Returns whether any page of
/// the range is distributed.
/// Whether a hooked call goes straight to libc: no distributed memory in
/// this process, or the runtime thread calling (it never passes the
/// program's views; checking its 64 KiB socket buffers on every `recvmmsg`
/// cost more than the receive).
fn passthrough() -> bool {
    !fault::installed() || kdipc_runtime::node::on_runtime_thread()
}

fn touch(addr: usize, len: usize, write: bool) -> bool {
    if len == 0 || !fault::meets_view(addr, len) {
        return false;
    }
    let end = addr.saturating_add(len);
    let mut any = false;
    let mut page = addr & !(PAGE_SIZE - 1);
    while page < end {
        let p = page.max(addr);
        match fault::find_view(p) {
            Some((_, readonly)) if !(write && readonly) => {
                any = true;
                if write {
                    // SAFETY: `p` lies in a read-write distributed view; a
                    // locked OR of 0 is a write access (which an atomic
                    // add of 0 in Rust may not be: it can become a load)
                    // that leaves the byte as any thread or node has it.
                    unsafe { std::arch::asm!("lock or byte ptr [{0}], 0", in(reg) p, options(nostack)) };
                } else {
                    // SAFETY: `p` lies in a distributed view.
                    unsafe { (p as *const u8).read_volatile() };
                }
            }
            _ => {}
        }
        page += PAGE_SIZE;
    }
    any
}

/// Runs `call` with the distributed pages of `bufs` present (for write
/// access where the kernel writes), retrying when one left again before
/// the kernel copied it.
fn with_pages<R: Failed>(bufs: &[Buf], call: impl Fn() -> R) -> R {
    let mut distributed = false;
    for attempt in 0..RETRIES {
        for &(addr, len, write) in bufs {
            distributed |= touch(addr, len, write);
        }
        let r = call();
        // SAFETY: errno is thread-local.
        let efault = r.failed() && unsafe { *libc::__errno_location() } == libc::EFAULT;
        if !(efault && distributed) || attempt + 1 == RETRIES {
            return r;
        }
    }
    unreachable!("the loop returns")
}

/// The buffers of an iovec array, and the array itself (read by the
/// kernel). Empty if the array is not readable: the call then fails as
/// it would natively.
fn iov_bufs(iov: *const libc::iovec, cnt: usize, write: bool) -> Vec<Buf> {
    if iov.is_null() || cnt == 0 || cnt > libc::UIO_MAXIOV as usize {
        return Vec::new();
    }
    let Ok(v) = copy_in_slice(iov, cnt) else { return Vec::new() };
    let mut out: Vec<Buf> = v.iter().map(|e| (e.iov_base as usize, e.iov_len, write)).collect();
    out.push((iov as usize, cnt * std::mem::size_of::<libc::iovec>(), false));
    out
}

/// The buffers of a `msghdr` (`recvmsg` writes into all but the iovec
/// array; `sendmsg` only reads).
fn msg_bufs(msg: *const libc::msghdr, write: bool) -> Vec<Buf> {
    let Ok(m) = copy_in(msg) else { return Vec::new() };
    let mut out = iov_bufs(m.msg_iov, m.msg_iovlen, write);
    out.push((msg as usize, std::mem::size_of::<libc::msghdr>(), write));
    out.push((m.msg_name as usize, m.msg_namelen as usize, write));
    out.push((m.msg_control as usize, m.msg_controllen, write));
    out
}

/// The buffers of an `mmsghdr` array (the kernel writes each `msg_len`)
/// and of every message in it.
fn mmsg_bufs(vec: *const libc::mmsghdr, vlen: usize, write: bool) -> Vec<Buf> {
    let vlen = vlen.min(libc::UIO_MAXIOV as usize);
    let mut out = vec![(vec as usize, vlen * std::mem::size_of::<libc::mmsghdr>(), true)];
    for i in 0..vlen {
        out.extend(msg_bufs(vec.wrapping_add(i) as *const libc::msghdr, write));
    }
    out
}

/// The bytes of an `fd_set` the kernel copies for `nfds` descriptors
/// (whole longs).
fn fd_set_bytes(nfds: Int) -> usize {
    let bits = 8 * std::mem::size_of::<libc::c_long>();
    (nfds.max(0) as usize).div_ceil(bits) * std::mem::size_of::<libc::c_long>()
}

/// A NUL-terminated string the kernel reads (a path): its bytes when it
/// starts in a distributed view (read here, which faults them in), else
/// nothing to do.
fn cstr(s: *const libc::c_char) -> Buf {
    let a = s as usize;
    let Some((view, _)) = fault::find_view(a) else { return (0, 0, false) };
    let mut n = 0;
    loop {
        let p = a + n;
        if p.is_multiple_of(PAGE_SIZE) && fault::find_view(p).map(|v| v.0) != Some(view) {
            break; // the view ends unterminated: the kernel sees EFAULT
        }
        n += 1;
        // SAFETY: `p` lies inside a distributed view, whose pages the fault
        // handler serves.
        if unsafe { (p as *const u8).read_volatile() } == 0 {
            break;
        }
    }
    (a, n, false)
}

/// Declares a hook that passes the call to libc with the distributed pages
/// of its buffers present.
macro_rules! hook {
    ($(#[$doc:meta])* fn $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty; $bufs:expr) => {
        $(#[$doc])*
        ///
        /// # Safety
        /// As for libc's function of this name.
        #[cfg_attr(not(test), no_mangle)]
        pub unsafe extern "C" fn $name($($arg: $ty),*) -> $ret {
            guard(|| {
                let f = real_fn!($name: fn($($ty),*) -> $ret);
                if passthrough() {
                    // No distributed memory in this process.
                    // SAFETY: libc's function with the program's arguments.
                    return unsafe { f($($arg),*) };
                }
                let bufs: Vec<Buf> = $bufs;
                // SAFETY: libc's function with the program's arguments.
                with_pages(&bufs, || unsafe { f($($arg),*) })
            })
        }
    };
}

/// Declares a 64-bit alias of a hook (the same function on x86-64).
macro_rules! alias {
    ($name:ident = $target:ident($($arg:ident: $ty:ty),*) -> $ret:ty) => {
        /// The same function as its 32-bit-named twin on 64-bit Linux.
        ///
        /// # Safety
        /// As for libc's function of this name.
        #[cfg_attr(not(test), no_mangle)]
        pub unsafe extern "C" fn $name($($arg: $ty),*) -> $ret {
            // SAFETY: the same contract.
            unsafe { $target($($arg),*) }
        }
    };
}

type Int = libc::c_int;
type Ptr = *mut libc::c_void;
type CPtr = *const libc::c_void;
type Str = *const libc::c_char;
type Stat = *mut libc::stat;
const STAT: usize = std::mem::size_of::<libc::stat>();

hook! {
    /// Hook for libc::read.
    fn read(fd: Int, buf: Ptr, n: usize) -> isize; vec![(buf as usize, n, true)]
}
hook! {
    /// Hook for libc::write.
    fn write(fd: Int, buf: CPtr, n: usize) -> isize; vec![(buf as usize, n, false)]
}
hook! {
    /// Hook for libc::pread.
    fn pread(fd: Int, buf: Ptr, n: usize, off: libc::off_t) -> isize; vec![(buf as usize, n, true)]
}
alias! { pread64 = pread(fd: Int, buf: Ptr, n: usize, off: libc::off_t) -> isize }
hook! {
    /// Hook for libc::pwrite.
    fn pwrite(fd: Int, buf: CPtr, n: usize, off: libc::off_t) -> isize; vec![(buf as usize, n, false)]
}
alias! { pwrite64 = pwrite(fd: Int, buf: CPtr, n: usize, off: libc::off_t) -> isize }
hook! {
    /// Hook for libc::readv.
    fn readv(fd: Int, iov: *const libc::iovec, cnt: Int) -> isize; iov_bufs(iov, cnt.max(0) as usize, true)
}
hook! {
    /// Hook for libc::writev.
    fn writev(fd: Int, iov: *const libc::iovec, cnt: Int) -> isize; iov_bufs(iov, cnt.max(0) as usize, false)
}
/// Hook for libc::recv (see [`recv_bounced`]).
///
/// # Safety
/// As for libc's `recv`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn recv(fd: Int, buf: Ptr, n: usize, flags: Int) -> isize {
    // SAFETY: the same contract; recv is recvfrom without an address.
    unsafe { recvfrom(fd, buf, n, flags, std::ptr::null_mut(), std::ptr::null_mut()) }
}

/// Hook for libc::recvfrom (see [`recv_bounced`]).
///
/// # Safety
/// As for libc's `recvfrom`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn recvfrom(
    fd: Int,
    buf: Ptr,
    n: usize,
    flags: Int,
    addr: *mut libc::sockaddr,
    alen: *mut libc::socklen_t,
) -> isize {
    guard(|| {
        let f =
            real_fn!(recvfrom: fn(Int, Ptr, usize, Int, *mut libc::sockaddr, *mut libc::socklen_t) -> isize);
        // SAFETY: libc's function with the program's arguments.
        let call = || unsafe { f(fd, buf, n, flags, addr, alen) };
        if passthrough() {
            return call();
        }
        let alen_v = if alen.is_null() { 0 } else { copy_in(alen).unwrap_or(0) as usize };
        let bufs = vec![
            (buf as usize, n, true),
            (addr as usize, alen_v, true),
            (alen as usize, std::mem::size_of::<libc::socklen_t>(), true),
        ];
        if bounce_needed(&bufs) {
            let iov = vec![libc::iovec { iov_base: buf, iov_len: n }];
            let name = if alen.is_null() { (0, 0) } else { (addr as usize, alen_v) };
            let r =
                Bounce::new(iov, name, (0, 0)).and_then(|b| recv_bounced(fd, b, flags)).and_then(|(r, m)| {
                    if r >= 0 && name.0 != 0 {
                        copy_out(alen, &m.msg_namelen)?;
                    }
                    Ok(r)
                });
            return r.unwrap_or_else(fail);
        }
        with_pages(&bufs, call)
    })
}
hook! {
    /// Hook for libc::send.
    fn send(fd: Int, buf: CPtr, n: usize, flags: Int) -> isize; vec![(buf as usize, n, false)]
}
hook! {
    /// Hook for libc::sendto.
    fn sendto(fd: Int, buf: CPtr, n: usize, flags: Int, addr: *const libc::sockaddr, alen: libc::socklen_t)
        -> isize;
    vec![(buf as usize, n, false), (addr as usize, alen as usize, false)]
}
/// Hook for libc::recvmsg: the `msghdr`, its iovec array and buffers, its
/// name and its control buffer (see [`recv_bounced`]).
///
/// # Safety
/// As for libc's `recvmsg`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn recvmsg(fd: Int, msg: *mut libc::msghdr, flags: Int) -> isize {
    guard(|| {
        let f = real_fn!(recvmsg: fn(Int, *mut libc::msghdr, Int) -> isize);
        // SAFETY: libc's function with the program's arguments.
        let call = || unsafe { f(fd, msg, flags) };
        if passthrough() {
            return call();
        }
        let bufs = msg_bufs(msg, true);
        if bounce_needed(&bufs) {
            let Ok(orig) = copy_in(msg) else { return call() };
            let r = Bounce::of_msg(&orig).and_then(|b| recv_bounced(fd, b, flags)).and_then(|(r, m)| {
                if r >= 0 {
                    copy_back_hdr(msg, &orig, &m)?;
                }
                Ok(r)
            });
            return r.unwrap_or_else(fail);
        }
        with_pages(&bufs, call)
    })
}

/// Largest receive that goes through a bounce buffer (beyond it, the
/// prefault-and-retry path).
const BOUNCE_MAX: usize = 64 << 20;

/// Whether a receive (`recvfrom`, `recvmsg`, `recvmmsg`) must go through a
/// bounce buffer: some page of `bufs` is distributed and writable. The
/// kernel dequeues a datagram before it copies it out and drops it when
/// the copy fails; and on any socket it stores the address length, the
/// control length and the flags after the data was taken: a page that
/// left between our touch and those stores (another node writes it while
/// the call blocks) made the call fail with `EFAULT` after consuming the
/// data, and the retry then waited for data that had already come (a
/// stream `recvmsg` with a descriptor passed hung `syscalls.c` ≈ 1 run
/// in 30). A plain `read` stores nothing after the data and is retried.
fn bounce_needed(bufs: &[Buf]) -> bool {
    let total: usize = bufs.iter().map(|b| b.1).sum();
    total <= BOUNCE_MAX && bufs.iter().any(|&(a, l, _)| writable_distributed(a, l))
}

/// Whether a page of `[addr, addr + len)` lies in a writable distributed view.
fn writable_distributed(addr: usize, len: usize) -> bool {
    if addr == 0 || len == 0 || !fault::meets_view(addr, len) {
        return false;
    }
    let end = addr.saturating_add(len);
    let mut page = addr & !(PAGE_SIZE - 1);
    while page < end {
        if matches!(fault::find_view(page.max(addr)), Some((_, false))) {
            return true;
        }
        page += PAGE_SIZE;
    }
    false
}

/// One message's private buffers for a receive: the kernel writes only
/// memory that is always present, and the bytes are then stored into the
/// program's buffers as the program would store them (our fault handler
/// serves distributed pages). Same flags (`MSG_PEEK`, `MSG_TRUNC`, ...),
/// same result; the address and control data are copied back with their
/// lengths.
struct Bounce {
    /// The program's data buffers.
    iov: Vec<libc::iovec>,
    data: Vec<u8>,
    /// The program's address buffer and its capacity.
    name: (usize, usize),
    name_buf: Vec<u8>,
    /// The program's control buffer and its capacity.
    ctl: (usize, usize),
    ctl_buf: Vec<u8>,
    /// Our iovec, pointing at `data`.
    one: Box<libc::iovec>,
}

impl Bounce {
    fn new(iov: Vec<libc::iovec>, name: (usize, usize), ctl: (usize, usize)) -> Result<Bounce, Errno> {
        let total =
            iov.iter().try_fold(0usize, |a, v| a.checked_add(v.iov_len)).ok_or(Errno(libc::EINVAL))?;
        let mut data = vec![0u8; total];
        let name = if name.0 == 0 { (0, 0) } else { name };
        let ctl = if ctl.0 == 0 { (0, 0) } else { ctl };
        let one = Box::new(libc::iovec { iov_base: data.as_mut_ptr() as Ptr, iov_len: total });
        Ok(Bounce { iov, data, name, name_buf: vec![0u8; name.1], ctl, ctl_buf: vec![0u8; ctl.1], one })
    }

    /// For the program's `msghdr` (as read from its memory).
    fn of_msg(m: &libc::msghdr) -> Result<Bounce, Errno> {
        let iov = copy_in_slice(m.msg_iov as *const libc::iovec, m.msg_iovlen)?;
        Bounce::new(
            iov,
            (m.msg_name as usize, m.msg_namelen as usize),
            (m.msg_control as usize, m.msg_controllen),
        )
    }

    /// The `msghdr` the kernel fills (valid while `self` lives).
    fn hdr(&mut self) -> libc::msghdr {
        // SAFETY: msghdr is plain data; all zeroes is a valid value.
        let mut m: libc::msghdr = unsafe { std::mem::zeroed() };
        m.msg_iov = &mut *self.one;
        m.msg_iovlen = 1;
        if self.name.0 != 0 {
            m.msg_name = self.name_buf.as_mut_ptr() as Ptr;
            m.msg_namelen = self.name.1 as libc::socklen_t;
        }
        if self.ctl.0 != 0 {
            m.msg_control = self.ctl_buf.as_mut_ptr() as Ptr;
            m.msg_controllen = self.ctl.1;
        }
        m
    }

    /// Copies what the kernel received (`n` bytes, more with `MSG_TRUNC`
    /// than fit) into the program's buffers; `m` is the `msghdr` from
    /// [`Bounce::hdr`] after the call.
    fn finish(&self, m: &libc::msghdr, n: usize) -> Result<(), Errno> {
        let mut left = n.min(self.data.len());
        let mut from = 0;
        for v in &self.iov {
            if left == 0 {
                break;
            }
            let k = v.iov_len.min(left);
            copy_out_bytes(v.iov_base as usize, &self.data[from..from + k])?;
            from += k;
            left -= k;
        }
        if self.name.0 != 0 {
            copy_out_bytes(self.name.0, &self.name_buf[..(m.msg_namelen as usize).min(self.name.1)])?;
        }
        if self.ctl.0 != 0 {
            copy_out_bytes(self.ctl.0, &self.ctl_buf[..m.msg_controllen.min(self.ctl.1)])?;
        }
        Ok(())
    }
}

/// `recvfrom`/`recvmsg` through a [`Bounce`]: the call's result, and the
/// `msghdr` as the kernel filled it.
fn recv_bounced(fd: Int, mut b: Bounce, flags: Int) -> Result<(isize, libc::msghdr), Errno> {
    let f = real_fn!(recvmsg: fn(Int, *mut libc::msghdr, Int) -> isize);
    let mut m = b.hdr();
    // SAFETY: libc's recvmsg on the program's descriptor, into our own
    // buffers, which live until it returns.
    let r = unsafe { f(fd, &mut m, flags) };
    if r >= 0 {
        b.finish(&m, r as usize)?;
    }
    Ok((r, m))
}

/// The program's `msghdr` after a bounced receive: lengths and flags as
/// the kernel set them in ours.
fn copy_back_hdr(dst: *mut libc::msghdr, orig: &libc::msghdr, filled: &libc::msghdr) -> Result<(), Errno> {
    let mut m = *orig;
    m.msg_namelen = if orig.msg_name.is_null() { orig.msg_namelen } else { filled.msg_namelen };
    m.msg_controllen = filled.msg_controllen; // the kernel writes it always (0 without a buffer)
    m.msg_flags = filled.msg_flags;
    copy_out(dst, &m)
}

/// `copy_to_user` of bytes: plain stores into distributed pages (our
/// handler serves them), the checked copy elsewhere.
fn copy_out_bytes(dst: usize, src: &[u8]) -> Result<(), Errno> {
    let mut done = 0;
    while done < src.len() {
        let a = dst + done;
        let n = (PAGE_SIZE - a % PAGE_SIZE).min(src.len() - done);
        let chunk = &src[done..done + n];
        match fault::find_view(a) {
            Some((_, false)) => {
                // SAFETY: `[a, a + n)` lies in one page of a read-write
                // distributed view; the fault handler serves the stores.
                unsafe { std::ptr::copy_nonoverlapping(chunk.as_ptr(), a as *mut u8, n) };
            }
            _ => {
                let local = libc::iovec { iov_base: chunk.as_ptr() as Ptr, iov_len: n };
                let remote = libc::iovec { iov_base: a as Ptr, iov_len: n };
                // SAFETY: process_vm_writev checks the remote (our own)
                // range and fails with EFAULT instead of faulting.
                let w = unsafe { libc::process_vm_writev(libc::getpid(), &local, 1, &remote, 1, 0) };
                if w != n as isize {
                    return Err(Errno(libc::EFAULT));
                }
            }
        }
        done += n;
    }
    Ok(())
}
/// Whether a page of the buffers lies in a distributed view.
fn distributed(bufs: &[Buf]) -> bool {
    bufs.iter().any(|&(a, l, _)| a != 0 && l != 0 && fault::meets_view(a, l))
}

/// A message the kernel only reads, gathered from the program's memory
/// into ours: its data in one buffer, its address and control data
/// copied. A send from distributed pages retried after an `EFAULT` needs
/// every page present at once (another node writing them can keep that
/// from happening), and a retried `sendmmsg` sent again the messages whose
/// `msg_len` the kernel could not store (their page had left): gathered,
/// the kernel reads only our memory and the call runs once.
struct Gathered {
    hdr: libc::msghdr,
    _data: Vec<u8>,
    _name: Vec<u8>,
    _ctl: Vec<u8>,
    _one: Box<libc::iovec>,
}

impl Gathered {
    /// `None` when it is larger than [`BOUNCE_MAX`] or cannot be read
    /// (the call then runs as before).
    fn of(msg: *const libc::msghdr) -> Option<Gathered> {
        let total: usize = msg_bufs(msg, false).iter().map(|b| b.1).sum();
        if total > BOUNCE_MAX {
            return None;
        }
        let m = copy_in(msg).ok()?;
        let iov = copy_in_slice(m.msg_iov as *const libc::iovec, m.msg_iovlen).ok()?;
        let mut data = Vec::new();
        for v in &iov {
            data.extend(copy_in_slice(v.iov_base as *const u8, v.iov_len).ok()?);
        }
        let bytes = |a: Ptr, n: usize| {
            if a.is_null() {
                Some(Vec::new())
            } else {
                copy_in_slice(a as *const u8, n).ok()
            }
        };
        let mut name = bytes(m.msg_name, m.msg_namelen as usize)?;
        let mut ctl = bytes(m.msg_control, m.msg_controllen)?;
        let mut one = Box::new(libc::iovec { iov_base: data.as_mut_ptr() as Ptr, iov_len: data.len() });
        let mut hdr = m;
        hdr.msg_iov = &mut *one;
        hdr.msg_iovlen = 1;
        if !m.msg_name.is_null() {
            hdr.msg_name = name.as_mut_ptr() as Ptr;
        }
        if !m.msg_control.is_null() {
            hdr.msg_control = ctl.as_mut_ptr() as Ptr;
        }
        Some(Gathered { hdr, _data: data, _name: name, _ctl: ctl, _one: one })
    }
}

/// Hook for libc::sendmsg: a message with distributed buffers is sent
/// [`Gathered`].
///
/// # Safety
/// As for libc's `sendmsg`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn sendmsg(fd: Int, msg: *const libc::msghdr, flags: Int) -> isize {
    guard(|| {
        let f = real_fn!(sendmsg: fn(Int, *const libc::msghdr, Int) -> isize);
        if passthrough() {
            // SAFETY: libc's function with the program's arguments.
            return unsafe { f(fd, msg, flags) };
        }
        let bufs = msg_bufs(msg, false);
        if !distributed(&bufs) {
            // SAFETY: libc's function with the program's arguments.
            return unsafe { f(fd, msg, flags) };
        }
        if let Some(g) = Gathered::of(msg) {
            // SAFETY: libc's sendmsg with our own header, which points into
            // buffers `g` owns until it returns.
            return unsafe { f(fd, &g.hdr, flags) };
        }
        // SAFETY: libc's function with the program's arguments.
        with_pages(&bufs, || unsafe { f(fd, msg, flags) })
    })
}
/// Hook for libc::recvmmsg: the `mmsghdr` array (the kernel writes
/// `msg_len`) and every message's buffers; on a datagram socket through a
/// [`Bounce`] per message, as `recvmsg`.
///
/// # Safety
/// As for libc's `recvmmsg`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn recvmmsg(
    fd: Int,
    vec: *mut libc::mmsghdr,
    vlen: libc::c_uint,
    flags: Int,
    tmo: *mut libc::timespec,
) -> Int {
    guard(|| {
        let f =
            real_fn!(recvmmsg: fn(Int, *mut libc::mmsghdr, libc::c_uint, Int, *mut libc::timespec) -> Int);
        // SAFETY: libc's function with the program's arguments.
        let call = || unsafe { f(fd, vec, vlen, flags, tmo) };
        if passthrough() {
            return call();
        }
        let vlen = vlen.min(libc::UIO_MAXIOV as u32);
        let mut bufs = mmsg_bufs(vec, vlen as usize, true);
        bufs.push((tmo as usize, std::mem::size_of::<libc::timespec>(), true));
        if !bounce_needed(&bufs) {
            return with_pages(&bufs, call);
        }
        let r = (|| {
            let orig = copy_in_slice(vec as *const libc::mmsghdr, vlen as usize)?;
            let mut bounces =
                orig.iter().map(|m| Bounce::of_msg(&m.msg_hdr)).collect::<Result<Vec<_>, _>>()?;
            let mut ours: Vec<libc::mmsghdr> =
                bounces.iter_mut().map(|b| libc::mmsghdr { msg_hdr: b.hdr(), msg_len: 0 }).collect();
            touch(tmo as usize, std::mem::size_of::<libc::timespec>(), true);
            // SAFETY: libc's recvmmsg on the program's descriptor, into our
            // own buffers, which live until it returns; the time-out is
            // the program's (present: touched just above).
            let n = unsafe { f(fd, ours.as_mut_ptr(), vlen, flags, tmo) };
            for i in 0..n.max(0) as usize {
                bounces[i].finish(&ours[i].msg_hdr, ours[i].msg_len as usize)?;
                let dst = vec.wrapping_add(i);
                copy_back_hdr(dst as *mut libc::msghdr, &orig[i].msg_hdr, &ours[i].msg_hdr)?;
                let len = (dst as usize + std::mem::offset_of!(libc::mmsghdr, msg_len)) as *mut libc::c_uint;
                copy_out(len, &ours[i].msg_len)?;
            }
            Ok(n)
        })();
        r.unwrap_or_else(fail)
    })
}

/// Hook for libc::sendmmsg (the kernel reads the buffers and writes
/// `msg_len`): with distributed memory in it, every message is sent
/// [`Gathered`], from our own `mmsghdr` array, and the lengths are stored
/// back after the call.
///
/// # Safety
/// As for libc's `sendmmsg`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn sendmmsg(fd: Int, vec: *mut libc::mmsghdr, vlen: libc::c_uint, flags: Int) -> Int {
    guard(|| {
        let f = real_fn!(sendmmsg: fn(Int, *mut libc::mmsghdr, libc::c_uint, Int) -> Int);
        // SAFETY: libc's function with the program's arguments.
        let call = || unsafe { f(fd, vec, vlen, flags) };
        if passthrough() {
            return call();
        }
        let n = vlen.min(libc::UIO_MAXIOV as u32) as usize;
        let bufs = mmsg_bufs(vec, n, false);
        if !distributed(&bufs) {
            return call();
        }
        let gathered: Option<Vec<Gathered>> =
            (0..n).map(|i| Gathered::of(vec.wrapping_add(i) as *const libc::msghdr)).collect();
        let Some(gathered) = gathered else { return with_pages(&bufs, call) };
        let mut ours: Vec<libc::mmsghdr> =
            gathered.iter().map(|g| libc::mmsghdr { msg_hdr: g.hdr, msg_len: 0 }).collect();
        // SAFETY: libc's sendmmsg with our own array, whose headers point
        // into buffers `gathered` owns until it returns.
        let r = unsafe { f(fd, ours.as_mut_ptr(), n as libc::c_uint, flags) };
        for (i, m) in ours.iter().enumerate().take(r.max(0) as usize) {
            let len = (vec.wrapping_add(i) as usize + std::mem::offset_of!(libc::mmsghdr, msg_len))
                as *mut libc::c_uint;
            if let Err(e) = copy_out(len, &m.msg_len) {
                return fail(e);
            }
        }
        r
    })
}
hook! {
    /// Hook for libc::poll: the kernel reads the array and writes `revents`.
    fn poll(fds: *mut libc::pollfd, nfds: libc::nfds_t, timeout: Int) -> Int;
    vec![(fds as usize, nfds as usize * std::mem::size_of::<libc::pollfd>(), true)]
}
hook! {
    /// Hook for glibc's `__poll_chk` (`poll` with `_FORTIFY_SOURCE`).
    fn __poll_chk(fds: *mut libc::pollfd, nfds: libc::nfds_t, timeout: Int, len: usize) -> Int;
    vec![(fds as usize, nfds as usize * std::mem::size_of::<libc::pollfd>(), true)]
}
hook! {
    /// Hook for libc::ppoll.
    fn ppoll(fds: *mut libc::pollfd, nfds: libc::nfds_t, tmo: *const libc::timespec, mask: *const libc::sigset_t)
        -> Int;
    vec![
        (fds as usize, nfds as usize * std::mem::size_of::<libc::pollfd>(), true),
        (tmo as usize, std::mem::size_of::<libc::timespec>(), false),
        (mask as usize, 8, false),
    ]
}
hook! {
    /// Hook for libc::select: the three sets (read and written, as many
    /// longs as `nfds` needs) and the time-out (Linux writes what is left).
    fn select(nfds: Int, r: *mut libc::fd_set, w: *mut libc::fd_set, e: *mut libc::fd_set, tv: *mut libc::timeval)
        -> Int;
    {
        let n = fd_set_bytes(nfds);
        vec![
            (r as usize, n, true),
            (w as usize, n, true),
            (e as usize, n, true),
            (tv as usize, std::mem::size_of::<libc::timeval>(), true),
        ]
    }
}
hook! {
    /// Hook for libc::pselect.
    fn pselect(
        nfds: Int,
        r: *mut libc::fd_set,
        w: *mut libc::fd_set,
        e: *mut libc::fd_set,
        tmo: *const libc::timespec,
        mask: *const libc::sigset_t
    ) -> Int;
    {
        let n = fd_set_bytes(nfds);
        vec![
            (r as usize, n, true),
            (w as usize, n, true),
            (e as usize, n, true),
            (tmo as usize, std::mem::size_of::<libc::timespec>(), false),
            (mask as usize, 8, false),
        ]
    }
}
hook! {
    /// Hook for libc::stat (and stat64).
    fn stat(path: Str, buf: Stat) -> Int; vec![cstr(path), (buf as usize, STAT, true)]
}
alias! { stat64 = stat(path: Str, buf: Stat) -> Int }
hook! {
    /// Hook for libc::lstat (and lstat64).
    fn lstat(path: Str, buf: Stat) -> Int; vec![cstr(path), (buf as usize, STAT, true)]
}
alias! { lstat64 = lstat(path: Str, buf: Stat) -> Int }
hook! {
    /// Hook for libc::fstat (and fstat64).
    fn fstat(fd: Int, buf: Stat) -> Int; vec![(buf as usize, STAT, true)]
}
alias! { fstat64 = fstat(fd: Int, buf: Stat) -> Int }
hook! {
    /// Hook for libc::fstatat (and fstatat64; the system call is
    /// `newfstatat`).
    fn fstatat(dirfd: Int, path: Str, buf: Stat, flags: Int) -> Int; vec![cstr(path), (buf as usize, STAT, true)]
}
alias! { fstatat64 = fstatat(dirfd: Int, path: Str, buf: Stat, flags: Int) -> Int }
hook! {
    /// Hook for libc::statx.
    fn statx(dirfd: Int, path: Str, flags: Int, mask: libc::c_uint, buf: *mut libc::statx) -> Int;
    vec![cstr(path), (buf as usize, std::mem::size_of::<libc::statx>(), true)]
}
hook! {
    /// Hook for glibc's `__xstat`, which programs built against glibc
    /// before 2.33 call for `stat` (and `__xstat64`).
    fn __xstat(ver: Int, path: Str, buf: Stat) -> Int; vec![cstr(path), (buf as usize, STAT, true)]
}
alias! { __xstat64 = __xstat(ver: Int, path: Str, buf: Stat) -> Int }
hook! {
    /// Hook for glibc's `__lxstat` (`lstat` before glibc 2.33).
    fn __lxstat(ver: Int, path: Str, buf: Stat) -> Int; vec![cstr(path), (buf as usize, STAT, true)]
}
alias! { __lxstat64 = __lxstat(ver: Int, path: Str, buf: Stat) -> Int }
hook! {
    /// Hook for glibc's `__fxstat` (`fstat` before glibc 2.33).
    fn __fxstat(ver: Int, fd: Int, buf: Stat) -> Int; vec![(buf as usize, STAT, true)]
}
alias! { __fxstat64 = __fxstat(ver: Int, fd: Int, buf: Stat) -> Int }
hook! {
    /// Hook for glibc's `__fxstatat` (`fstatat` before glibc 2.33).
    fn __fxstatat(ver: Int, dirfd: Int, path: Str, buf: Stat, flags: Int) -> Int;
    vec![cstr(path), (buf as usize, STAT, true)]
}
alias! { __fxstatat64 = __fxstatat(ver: Int, dirfd: Int, path: Str, buf: Stat, flags: Int) -> Int }
hook! {
    /// Hook for libc::getdents64.
    fn getdents64(fd: Int, buf: Ptr, n: usize) -> isize; vec![(buf as usize, n, true)]
}
hook! {
    /// Hook for libc::pipe.
    fn pipe(fds: *mut Int) -> Int; vec![(fds as usize, 2 * std::mem::size_of::<Int>(), true)]
}
hook! {
    /// Hook for libc::pipe2.
    fn pipe2(fds: *mut Int, flags: Int) -> Int; vec![(fds as usize, 2 * std::mem::size_of::<Int>(), true)]
}
hook! {
    /// Hook for libc::socketpair.
    fn socketpair(domain: Int, ty: Int, proto: Int, sv: *mut Int) -> Int;
    vec![(sv as usize, 2 * std::mem::size_of::<Int>(), true)]
}
hook! {
    /// Hook for libc::readlink.
    fn readlink(path: Str, buf: *mut libc::c_char, n: usize) -> isize; vec![cstr(path), (buf as usize, n, true)]
}
hook! {
    /// Hook for libc::readlinkat.
    fn readlinkat(dirfd: Int, path: Str, buf: *mut libc::c_char, n: usize) -> isize;
    vec![cstr(path), (buf as usize, n, true)]
}
hook! {
    /// Hook for libc::getcwd.
    fn getcwd(buf: *mut libc::c_char, n: usize) -> *mut libc::c_char; vec![(buf as usize, n, true)]
}
hook! {
    /// Hook for libc::clock_gettime: the vDSO writes in user mode (our fault
    /// handler serves it), but clocks it does not serve, and machines
    /// without a usable vDSO clock, enter the kernel.
    fn clock_gettime(clock: libc::clockid_t, ts: *mut libc::timespec) -> Int;
    vec![(ts as usize, std::mem::size_of::<libc::timespec>(), true)]
}
hook! {
    /// Hook for libc::gettimeofday (as `clock_gettime`).
    fn gettimeofday(tv: *mut libc::timeval, tz: Ptr) -> Int;
    vec![(tv as usize, std::mem::size_of::<libc::timeval>(), true), (tz as usize, 8, true)]
}
hook! {
    /// Hook for libc::uname.
    fn uname(buf: *mut libc::utsname) -> Int; vec![(buf as usize, std::mem::size_of::<libc::utsname>(), true)]
}
hook! {
    /// Hook for libc::getrusage.
    fn getrusage(who: Int, buf: *mut libc::rusage) -> Int;
    vec![(buf as usize, std::mem::size_of::<libc::rusage>(), true)]
}
// Paths: the kernel copies the string in, and fails with `EFAULT` before
// doing anything when it cannot. `open` and `openat` are variadic in C;
// on x86-64 a variadic `mode` arrives in the same register as a third
// (fourth) fixed argument, so the hooks take it as one and always pass it
// on (libc reads it only with `O_CREAT`/`O_TMPFILE`).
hook! {
    /// Hook for libc::open (and open64).
    fn open(path: Str, flags: Int, mode: libc::c_uint) -> Int; vec![cstr(path)]
}
alias! { open64 = open(path: Str, flags: Int, mode: libc::c_uint) -> Int }
hook! {
    /// Hook for libc::openat (and openat64).
    fn openat(dirfd: Int, path: Str, flags: Int, mode: libc::c_uint) -> Int; vec![cstr(path)]
}
alias! { openat64 = openat(dirfd: Int, path: Str, flags: Int, mode: libc::c_uint) -> Int }
hook! {
    /// Hook for glibc's `__open_2`, what `open` becomes with
    /// `_FORTIFY_SOURCE` when no mode is given (and `__open64_2`).
    fn __open_2(path: Str, flags: Int) -> Int; vec![cstr(path)]
}
alias! { __open64_2 = __open_2(path: Str, flags: Int) -> Int }
hook! {
    /// Hook for glibc's `__openat_2` (and `__openat64_2`).
    fn __openat_2(dirfd: Int, path: Str, flags: Int) -> Int; vec![cstr(path)]
}
alias! { __openat64_2 = __openat_2(dirfd: Int, path: Str, flags: Int) -> Int }
hook! {
    /// Hook for libc::creat (and creat64).
    fn creat(path: Str, mode: libc::mode_t) -> Int; vec![cstr(path)]
}
alias! { creat64 = creat(path: Str, mode: libc::mode_t) -> Int }
hook! {
    /// Hook for libc::access.
    fn access(path: Str, mode: Int) -> Int; vec![cstr(path)]
}
hook! {
    /// Hook for libc::unlink.
    fn unlink(path: Str) -> Int; vec![cstr(path)]
}

/// `fread`/`fwrite`: stdio passes a transfer larger than its buffer
/// straight to `read`/`write` inside libc, where no hook sees it. The pages
/// are brought in first; after an `EFAULT` (a page left again) the rest is
/// retried, byte-wise, so that no byte is read or written twice.
fn stdio(
    buf: usize,
    size: usize,
    n: usize,
    f: *mut libc::FILE,
    write: bool,
    call: impl Fn(usize, usize) -> usize,
) -> usize {
    let total = size.saturating_mul(n);
    if passthrough() || total == 0 {
        return call(buf, total) / size.max(1);
    }
    let mut done = 0;
    for attempt in 0..RETRIES {
        let distributed = touch(buf + done, total - done, write);
        done += call(buf + done, total - done);
        // SAFETY: errno is thread-local; `f` is the program's open stream.
        let efault = unsafe { *libc::__errno_location() == libc::EFAULT && libc::ferror(f) != 0 };
        if done == total || !(efault && distributed) || attempt + 1 == RETRIES {
            break;
        }
        // SAFETY: as above; the error was ours.
        unsafe { libc::clearerr(f) };
    }
    done / size
}

/// Hook for libc::fread.
///
/// # Safety
/// As for libc's `fread`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn fread(buf: Ptr, size: usize, n: usize, f: *mut libc::FILE) -> usize {
    guard(|| {
        let r = real_fn!(fread: fn(Ptr, usize, usize, *mut libc::FILE) -> usize);
        // SAFETY: libc's fread with the program's stream and part of its buffer.
        stdio(buf as usize, size, n, f, true, |b, len| unsafe { r(b as Ptr, 1, len, f) })
    })
}

/// Hook for libc::fwrite.
///
/// # Safety
/// As for libc's `fwrite`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn fwrite(buf: CPtr, size: usize, n: usize, f: *mut libc::FILE) -> usize {
    guard(|| {
        let w = real_fn!(fwrite: fn(CPtr, usize, usize, *mut libc::FILE) -> usize);
        // SAFETY: libc's fwrite with the program's stream and part of its buffer.
        stdio(buf as usize, size, n, f, false, |b, len| unsafe { w(b as CPtr, 1, len, f) })
    })
}
