//! System calls that copy to or from a user buffer. The kernel does not
//! fault on our behalf: `read(fd, buf, n)` into a distributed page that is
//! not present here returns `EFAULT` (or a short count). These hooks bring
//! the buffer's distributed pages in first (write access when the kernel
//! writes into the buffer, read access when it reads from it), and retry
//! when a page left again before the kernel copied it. A buffer outside
//! distributed memory costs one atomic load.

use kdipc_runtime::fault;

use crate::ffi::{guard, real_fn};

/// Attempts before an `EFAULT` from a distributed buffer is passed on.
const RETRIES: usize = 8;

/// Runs `call` with the distributed pages of `ranges` present.
fn with_pages(ranges: &[(usize, usize)], write: bool, call: impl Fn() -> isize) -> isize {
    let mut distributed = false;
    for attempt in 0..RETRIES {
        for &(addr, len) in ranges {
            distributed |= fault::prefault(addr, len, write);
        }
        let r = call();
        // SAFETY: errno is thread-local.
        let efault = r == -1 && unsafe { *libc::__errno_location() } == libc::EFAULT;
        if !(efault && distributed) || attempt + 1 == RETRIES {
            return r;
        }
    }
    unreachable!("the loop returns")
}

/// The ranges of an iovec array (empty if it is not readable).
///
/// # Safety
/// `iov` is NULL or points to `cnt` iovecs.
unsafe fn iov_ranges(iov: *const libc::iovec, cnt: libc::c_int) -> Vec<(usize, usize)> {
    if iov.is_null() || cnt <= 0 || cnt > 1024 {
        return Vec::new();
    }
    // SAFETY: the caller's contract.
    let v = unsafe { std::slice::from_raw_parts(iov, cnt as usize) };
    v.iter().map(|e| (e.iov_base as usize, e.iov_len)).collect()
}

/// Hook for libc::read.
///
/// # Safety
/// As for libc's `read`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn read(fd: libc::c_int, buf: *mut libc::c_void, n: libc::size_t) -> libc::ssize_t {
    guard(|| {
        let f = real_fn!(read: fn(libc::c_int, *mut libc::c_void, libc::size_t) -> libc::ssize_t);
        // SAFETY: libc's read with the program's arguments.
        with_pages(&[(buf as usize, n)], true, || unsafe { f(fd, buf, n) })
    })
}

/// Hook for libc::write.
///
/// # Safety
/// As for libc's `write`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn write(fd: libc::c_int, buf: *const libc::c_void, n: libc::size_t) -> libc::ssize_t {
    guard(|| {
        let f = real_fn!(write: fn(libc::c_int, *const libc::c_void, libc::size_t) -> libc::ssize_t);
        // SAFETY: libc's write with the program's arguments.
        with_pages(&[(buf as usize, n)], false, || unsafe { f(fd, buf, n) })
    })
}

/// Hook for libc::pread (and pread64, the same function on 64-bit).
///
/// # Safety
/// As for libc's `pread`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn pread(
    fd: libc::c_int,
    buf: *mut libc::c_void,
    n: libc::size_t,
    off: libc::off_t,
) -> libc::ssize_t {
    guard(|| {
        let f =
            real_fn!(pread: fn(libc::c_int, *mut libc::c_void, libc::size_t, libc::off_t) -> libc::ssize_t);
        // SAFETY: libc's pread with the program's arguments.
        with_pages(&[(buf as usize, n)], true, || unsafe { f(fd, buf, n, off) })
    })
}

/// Hook for libc::pread64.
///
/// # Safety
/// As for libc's `pread64`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn pread64(
    fd: libc::c_int,
    buf: *mut libc::c_void,
    n: libc::size_t,
    off: libc::off_t,
) -> libc::ssize_t {
    // SAFETY: the same contract.
    unsafe { pread(fd, buf, n, off) }
}

/// Hook for libc::pwrite.
///
/// # Safety
/// As for libc's `pwrite`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn pwrite(
    fd: libc::c_int,
    buf: *const libc::c_void,
    n: libc::size_t,
    off: libc::off_t,
) -> libc::ssize_t {
    guard(|| {
        let f = real_fn!(pwrite: fn(libc::c_int, *const libc::c_void, libc::size_t, libc::off_t) -> libc::ssize_t);
        // SAFETY: libc's pwrite with the program's arguments.
        with_pages(&[(buf as usize, n)], false, || unsafe { f(fd, buf, n, off) })
    })
}

/// Hook for libc::pwrite64.
///
/// # Safety
/// As for libc's `pwrite64`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn pwrite64(
    fd: libc::c_int,
    buf: *const libc::c_void,
    n: libc::size_t,
    off: libc::off_t,
) -> libc::ssize_t {
    // SAFETY: the same contract.
    unsafe { pwrite(fd, buf, n, off) }
}

/// Hook for libc::readv.
///
/// # Safety
/// As for libc's `readv`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn readv(fd: libc::c_int, iov: *const libc::iovec, cnt: libc::c_int) -> libc::ssize_t {
    guard(|| {
        let f = real_fn!(readv: fn(libc::c_int, *const libc::iovec, libc::c_int) -> libc::ssize_t);
        // SAFETY: the program's iovec array.
        let ranges = unsafe { iov_ranges(iov, cnt) };
        // SAFETY: libc's readv with the program's arguments.
        with_pages(&ranges, true, || unsafe { f(fd, iov, cnt) })
    })
}

/// Hook for libc::writev.
///
/// # Safety
/// As for libc's `writev`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn writev(fd: libc::c_int, iov: *const libc::iovec, cnt: libc::c_int) -> libc::ssize_t {
    guard(|| {
        let f = real_fn!(writev: fn(libc::c_int, *const libc::iovec, libc::c_int) -> libc::ssize_t);
        // SAFETY: the program's iovec array.
        let ranges = unsafe { iov_ranges(iov, cnt) };
        // SAFETY: libc's writev with the program's arguments.
        with_pages(&ranges, false, || unsafe { f(fd, iov, cnt) })
    })
}

/// Hook for libc::recv.
///
/// # Safety
/// As for libc's `recv`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn recv(
    fd: libc::c_int,
    buf: *mut libc::c_void,
    n: libc::size_t,
    flags: libc::c_int,
) -> libc::ssize_t {
    guard(|| {
        let f =
            real_fn!(recv: fn(libc::c_int, *mut libc::c_void, libc::size_t, libc::c_int) -> libc::ssize_t);
        // SAFETY: libc's recv with the program's arguments.
        with_pages(&[(buf as usize, n)], true, || unsafe { f(fd, buf, n, flags) })
    })
}

/// Hook for libc::recvfrom.
///
/// # Safety
/// As for libc's `recvfrom`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn recvfrom(
    fd: libc::c_int,
    buf: *mut libc::c_void,
    n: libc::size_t,
    flags: libc::c_int,
    addr: *mut libc::sockaddr,
    addrlen: *mut libc::socklen_t,
) -> libc::ssize_t {
    guard(|| {
        let f = real_fn!(recvfrom: fn(libc::c_int, *mut libc::c_void, libc::size_t, libc::c_int, *mut libc::sockaddr, *mut libc::socklen_t) -> libc::ssize_t);
        // SAFETY: libc's recvfrom with the program's arguments.
        with_pages(&[(buf as usize, n)], true, || unsafe { f(fd, buf, n, flags, addr, addrlen) })
    })
}

/// Hook for libc::send.
///
/// # Safety
/// As for libc's `send`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn send(
    fd: libc::c_int,
    buf: *const libc::c_void,
    n: libc::size_t,
    flags: libc::c_int,
) -> libc::ssize_t {
    guard(|| {
        let f =
            real_fn!(send: fn(libc::c_int, *const libc::c_void, libc::size_t, libc::c_int) -> libc::ssize_t);
        // SAFETY: libc's send with the program's arguments.
        with_pages(&[(buf as usize, n)], false, || unsafe { f(fd, buf, n, flags) })
    })
}

/// Hook for libc::sendto.
///
/// # Safety
/// As for libc's `sendto`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn sendto(
    fd: libc::c_int,
    buf: *const libc::c_void,
    n: libc::size_t,
    flags: libc::c_int,
    addr: *const libc::sockaddr,
    addrlen: libc::socklen_t,
) -> libc::ssize_t {
    guard(|| {
        let f = real_fn!(sendto: fn(libc::c_int, *const libc::c_void, libc::size_t, libc::c_int, *const libc::sockaddr, libc::socklen_t) -> libc::ssize_t);
        // SAFETY: libc's sendto with the program's arguments.
        with_pages(&[(buf as usize, n)], false, || unsafe { f(fd, buf, n, flags, addr, addrlen) })
    })
}
