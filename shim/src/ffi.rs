//! The FFI shell: the real libc functions, errno, panic containment.

use std::ffi::CStr;

use kdipc_runtime::registry::Errno;

/// Looks up the next definition of `name` (the real libc function).
pub fn real(name: &CStr) -> *mut libc::c_void {
    // SAFETY: dlsym with RTLD_NEXT and a NUL-terminated name only reads.
    unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr()) }
}

/// Declares a lazily resolved pointer to the real libc function.
macro_rules! real_fn {
    ($name:ident : fn($($arg:ty),*) -> $ret:ty) => {{
        static PTR: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
        let p = *PTR.get_or_init(|| $crate::ffi::real(
            // SAFETY: the literal ends with a NUL and has no other.
            unsafe { std::ffi::CStr::from_bytes_with_nul_unchecked(concat!(stringify!($name), "\0").as_bytes()) }
        ) as usize);
        assert!(p != 0, concat!("libc has no ", stringify!($name)));
        // SAFETY: `p` is libc's definition of this function, whose C
        // signature is the one written here.
        unsafe { std::mem::transmute::<usize, unsafe extern "C" fn($($arg),*) -> $ret>(p) }
    }};
}
pub(crate) use real_fn;

/// The calling thread's errno.
pub fn errno() -> i32 {
    // SAFETY: errno is thread-local and always valid to read.
    unsafe { *libc::__errno_location() }
}

/// Sets errno for the calling thread.
pub fn set_errno(e: i32) {
    // SAFETY: errno is thread-local and always valid to write.
    unsafe { *libc::__errno_location() = e };
}

/// The one place a runtime error becomes the C convention: errno and -1.
pub fn fail<T: FromErr>(e: Errno) -> T {
    set_errno(e.0);
    T::failure()
}

/// The failure value of a hook's return type.
pub trait FromErr {
    fn failure() -> Self;
}

impl FromErr for libc::c_int {
    fn failure() -> Self {
        -1
    }
}

impl FromErr for libc::ssize_t {
    fn failure() -> Self {
        -1
    }
}

/// `signal`'s `SIG_ERR`.
impl FromErr for libc::sighandler_t {
    fn failure() -> Self {
        libc::SIG_ERR
    }
}

impl FromErr for *mut libc::c_void {
    fn failure() -> Self {
        usize::MAX as *mut libc::c_void // (void *) -1
    }
}

/// Runs a hook's body; a panic becomes ENOMEM and the failure value instead
/// of unwinding into C. A call that succeeds leaves errno as it found it,
/// as the kernel's do: the runtime's work on the way (waiting for an
/// answer on a futex, a system call that was retried) may have changed it
/// (`shm_errno` saw `EAGAIN` after a successful `IPC_STAT`).
pub fn guard<T: FromErr + PartialEq>(f: impl FnOnce() -> T) -> T {
    let saved = errno();
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(v) => {
            if v != T::failure() {
                set_errno(saved);
            }
            v
        }
        Err(_) => {
            eprintln!("kdipc: internal error (panic) in a System V call; returning ENOMEM");
            fail(Errno(libc::ENOMEM))
        }
    }
}
