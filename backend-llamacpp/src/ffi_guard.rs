//! What the C++ guard (`csrc/ffi_guard.cpp`) caught.
//!
//! The llama.cpp functions that can let a C++ exception out are linked through the guard
//! (build.rs): the exception stops there instead of aborting the process, the call returns a
//! value that means failure, and [`take_exception`] tells the caller why.
use std::ffi::c_char;

unsafe extern "C" {
    fn backend_llamacpp_take_exception(buf: *mut c_char, len: usize) -> usize;
}

/// Longest message kept (status messages are capped well below it anyway).
const MESSAGE_BYTES: usize = 1024;

/// The message of the C++ exception the guard caught on this thread since the last call,
/// if it caught one.
pub fn take_exception() -> Option<String> {
    let mut buf = vec![0u8; MESSAGE_BYTES];
    // SAFETY: the guard writes at most `buf.len()` bytes into `buf` and keeps no pointer.
    let whole = unsafe { backend_llamacpp_take_exception(buf.as_mut_ptr().cast(), buf.len()) };
    if whole == 0 {
        return None;
    }
    buf.truncate(whole.min(MESSAGE_BYTES));
    Some(String::from_utf8_lossy(&buf).into_owned())
}
