//! Reading and writing the program's memory the way the kernel's
//! `copy_from_user`/`copy_to_user` do: a bad pointer is `EFAULT`, not a
//! crash in the shim.

use std::cell::Cell;

use kdipc_runtime::fault;
use kdipc_runtime::registry::Errno;

/// Whether `[addr, addr + len)` lies between this function's own frame and
/// the top of the calling thread's stack: memory the thread is using, so
/// mapped, readable and writable, and copied without a system call (the
/// common case: a `sembuf` array or a `timespec` in a local variable).
/// On a signal stack or a stack of the program's own making the frame is
/// not inside the thread's stack and the caller takes the checked path.
fn on_stack(addr: usize, len: usize) -> bool {
    thread_local! {
        // The top of this thread's stack; 0: not known yet, 1: unknown.
        static TOP: Cell<usize> = const { Cell::new(0) };
    }
    let here = 0u8;
    let sp = &here as *const u8 as usize;
    let top = TOP.with(|t| {
        if t.get() == 0 {
            t.set(stack_top(sp).unwrap_or(1));
        }
        t.get()
    });
    addr >= sp && addr.checked_add(len).is_some_and(|end| end <= top)
}

/// The end of the calling thread's stack, if `sp` lies in it.
fn stack_top(sp: usize) -> Option<usize> {
    // SAFETY: pthread_attr_t is plain data, initialised by
    // pthread_getattr_np before it is read and destroyed after.
    unsafe {
        let mut attr: libc::pthread_attr_t = std::mem::zeroed();
        if libc::pthread_getattr_np(libc::pthread_self(), &mut attr) != 0 {
            return None;
        }
        let mut base: *mut libc::c_void = std::ptr::null_mut();
        let mut size: libc::size_t = 0;
        let r = libc::pthread_attr_getstack(&attr, &mut base, &mut size);
        libc::pthread_attr_destroy(&mut attr);
        let (lo, hi) = (base as usize, (base as usize).checked_add(size)?);
        (r == 0 && (lo..hi).contains(&sp)).then_some(hi)
    }
}

/// `copy_to_user`: `EFAULT` where the kernel would fail, instead of a crash.
pub fn copy_out<T>(dst: *mut T, src: &T) -> Result<(), Errno> {
    let len = std::mem::size_of::<T>();
    match in_one_view(dst as usize, len) {
        // A read-only attach: the kernel cannot write there either.
        Some(true) => Err(Errno(libc::EFAULT)),
        Some(false) => {
            // SAFETY: the whole range lies in a read-write distributed view
            // of ours; the fault handler serves the write (which
            // process_vm_writev would not fault in).
            unsafe { std::ptr::write_unaligned(dst, std::ptr::read(src)) };
            Ok(())
        }
        None if on_stack(dst as usize, len) => {
            // SAFETY: the range lies in this thread's live stack.
            unsafe { std::ptr::write_unaligned(dst, std::ptr::read(src)) };
            Ok(())
        }
        None => {
            let local = libc::iovec { iov_base: src as *const T as *mut libc::c_void, iov_len: len };
            let remote = libc::iovec { iov_base: dst as *mut libc::c_void, iov_len: len };
            // SAFETY: process_vm_writev checks the remote (our own) range
            // and fails with EFAULT instead of faulting.
            let r = unsafe { libc::process_vm_writev(libc::getpid(), &local, 1, &remote, 1, 0) };
            vm_result(r, len, || {
                // SAFETY: process_vm_writev is unavailable (seccomp): the
                // old way, a plain write to what the program passed.
                unsafe { std::ptr::write_unaligned(dst, std::ptr::read(src)) }
            })
        }
    }
}

/// `copy_from_user`: `EFAULT` where the kernel would fail.
pub fn copy_in<T: Copy>(src: *const T) -> Result<T, Errno> {
    let len = std::mem::size_of::<T>();
    if in_one_view(src as usize, len).is_some() || on_stack(src as usize, len) {
        // SAFETY: the range lies in a distributed view, whose faults the
        // fault handler serves, or in this thread's live stack.
        return Ok(unsafe { std::ptr::read_unaligned(src) });
    }
    let mut out = std::mem::MaybeUninit::<T>::uninit();
    let local = libc::iovec { iov_base: out.as_mut_ptr() as *mut libc::c_void, iov_len: len };
    let remote = libc::iovec { iov_base: src as *mut libc::c_void, iov_len: len };
    // SAFETY: process_vm_readv checks the remote (our own) range and fails
    // with EFAULT instead of faulting; it writes `len` bytes into `out`.
    let r = unsafe { libc::process_vm_readv(libc::getpid(), &local, 1, &remote, 1, 0) };
    // SAFETY: on the fallback path, a plain read of what the program passed.
    vm_result(r, len, || out.write(unsafe { std::ptr::read_unaligned(src) }))?;
    // SAFETY: filled by process_vm_readv (all `len` bytes) or the fallback.
    Ok(unsafe { out.assume_init() })
}

/// The result of `process_vm_readv/writev` of `len` bytes: done, `EFAULT`,
/// or (the call is not allowed here) `fallback`.
fn vm_result<R>(r: isize, len: usize, fallback: impl FnOnce() -> R) -> Result<(), Errno> {
    if r == len as isize {
        return Ok(());
    }
    let e = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
    if r >= 0 || e == libc::EFAULT {
        return Err(Errno(libc::EFAULT));
    }
    fallback();
    Ok(())
}

/// `Some(readonly)` if `[addr, addr + len)` lies inside one distributed view.
fn in_one_view(addr: usize, len: usize) -> Option<bool> {
    let (start, readonly) = fault::find_view(addr)?;
    let last = addr.checked_add(len - 1)?;
    fault::find_view(last).filter(|&(s, _)| s == start).map(|_| readonly)
}

/// `copy_from_user` of `n` values, with one system call.
pub fn copy_in_slice<T: Copy>(src: *const T, n: usize) -> Result<Vec<T>, Errno> {
    let len = std::mem::size_of::<T>().checked_mul(n).ok_or(Errno(libc::EFAULT))?;
    let mut out: Vec<T> = Vec::with_capacity(n);
    if n == 0 {
        return Ok(out);
    }
    if in_one_view(src as usize, len).is_some() || on_stack(src as usize, len) {
        // SAFETY: the range lies in a distributed view, whose faults the
        // fault handler serves, or in this thread's live stack.
        unsafe { std::ptr::copy_nonoverlapping(src, out.as_mut_ptr(), n) };
    } else {
        let local = libc::iovec { iov_base: out.as_mut_ptr() as *mut libc::c_void, iov_len: len };
        let remote = libc::iovec { iov_base: src as *mut libc::c_void, iov_len: len };
        // SAFETY: process_vm_readv checks the remote (our own) range and
        // fails with EFAULT instead of faulting; `out` has room for `len`.
        let r = unsafe { libc::process_vm_readv(libc::getpid(), &local, 1, &remote, 1, 0) };
        // SAFETY: on the fallback path, a plain copy of what the program passed.
        vm_result(r, len, || unsafe { std::ptr::copy_nonoverlapping(src, out.as_mut_ptr(), n) })?;
    }
    // SAFETY: all `n` values were written above.
    unsafe { out.set_len(n) };
    Ok(out)
}

/// `copy_to_user` of a slice.
pub fn copy_out_slice<T: Copy>(dst: *mut T, src: &[T]) -> Result<(), Errno> {
    src.iter().enumerate().try_for_each(|(i, v)| copy_out(dst.wrapping_add(i), v))
}

/// The `ipc_perm` the kernel reports for an object (every other byte zero).
pub fn ipc_perm(id: i32, key: i32, owner: (u32, u32), creator: (u32, u32), mode: u32) -> libc::ipc_perm {
    // SAFETY: ipc_perm is plain data; all zeroes is a valid value.
    let mut p: libc::ipc_perm = unsafe { std::mem::zeroed() };
    p.__key = key;
    (p.uid, p.gid) = owner;
    (p.cuid, p.cgid) = creator;
    p.mode = mode as libc::c_ushort;
    p.__seq = ((id & !kdipc_runtime::registry::ID_BIT) >> 15) as libc::c_ushort;
    p
}
