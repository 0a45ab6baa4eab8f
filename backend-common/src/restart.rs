//! Restarting in place after Free. A process that has loaded a model keeps part of what the
//! load touched once the model is gone: the engine's code paged in, the allocator's
//! per-thread heaps, on a GPU the device context. Only a fresh process image hands all of it
//! back, so after Free the worker replaces its image with a new one of the same program:
//! the same PID (LocalAI supervises the process by it), arguments and environment, and the
//! same listening socket, handed over as an inherited descriptor. Connection attempts made
//! meanwhile wait in the socket's backlog instead of being refused; open connections are
//! closed gracefully (HTTP/2 GOAWAY) and gRPC clients reconnect on their next call.
//!
//! `LOCALAI_BACKEND_RESTART_ON_FREE=false` (see [`crate::cli::ServeArgs`]) keeps the process.
use std::ffi::CString;
use std::net::TcpListener;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::ffi::OsStringExt;

/// Environment variable through which a restarted image learns its listening socket.
pub const LISTEN_FD_ENV: &str = "LOCALAI_BACKEND_LISTEN_FD";

/// The listening socket handed over by the image this one replaced, when there is one: the
/// descriptor named by [`LISTEN_FD_ENV`] if it is a listening TCP socket (anything else is
/// logged and ignored, and the worker binds its address as usual).
pub fn inherited_listener() -> Option<TcpListener> {
    let text = std::env::var(LISTEN_FD_ENV).ok()?;
    let Some(fd) = text
        .trim()
        .parse::<RawFd>()
        .ok()
        .filter(|&fd| is_listening(fd))
    else {
        tracing::warn!(value = %text, "{LISTEN_FD_ENV} names no listening socket; binding instead");
        return None;
    };
    set_close_on_exec(fd, true);
    // SAFETY: `fd` is an open listening socket (checked above) that nothing else in this
    // image owns: it was left open across exec for this image alone.
    let listener = unsafe { TcpListener::from_raw_fd(fd) };
    match listener.set_nonblocking(true) {
        Ok(()) => Some(listener),
        Err(e) => {
            tracing::warn!(error = %e, "the inherited listening socket is unusable; binding instead");
            None
        }
    }
}

/// Whether `fd` is an open socket in the listening state.
fn is_listening(fd: RawFd) -> bool {
    let mut accepting: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `accepting`; a descriptor that is
    // not an open socket makes it fail with EBADF or ENOTSOCK.
    let done = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ACCEPTCONN,
            (&mut accepting as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    done == 0 && accepting != 0
}

fn set_close_on_exec(fd: RawFd, on: bool) {
    // SAFETY: fcntl's descriptor-flag commands read and write only the flags of `fd`.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFD);
        if flags >= 0 {
            let flags = if on {
                flags | libc::FD_CLOEXEC
            } else {
                flags & !libc::FD_CLOEXEC
            };
            libc::fcntl(fd, libc::F_SETFD, flags);
        }
    }
}

/// Replaces this process image with a fresh one of the same program, keeping `listener`
/// open for it. The command line is the one the process was started with
/// (`/proc/self/cmdline`), so a worker started through the image's loader
/// (`ld.so --library-path lib worker --addr ...`) is started through it again. Returns only
/// when the image could not be replaced, with the reason; `listener` is then as it was.
pub fn exec_fresh(listener: &TcpListener) -> std::io::Error {
    let args = match std::fs::read("/proc/self/cmdline") {
        Ok(bytes) => command_line(&bytes),
        Err(e) => return e,
    };
    let fd = listener.as_raw_fd();
    let mut env: Vec<Vec<u8>> = std::env::vars_os()
        .filter(|(name, _)| name != LISTEN_FD_ENV)
        .map(|(name, value)| [name.into_vec(), b"=".to_vec(), value.into_vec()].concat())
        .collect();
    env.push(format!("{LISTEN_FD_ENV}={fd}").into_bytes());
    let (Some(args), Some(env)) = (c_strings(args), c_strings(env)) else {
        return std::io::Error::other("an argument or environment entry holds a NUL byte");
    };
    if args.is_empty() {
        return std::io::Error::other("/proc/self/cmdline is empty");
    }
    let pointers = |strings: &[CString]| {
        let mut p: Vec<*const libc::c_char> = strings.iter().map(|s| s.as_ptr()).collect();
        p.push(std::ptr::null());
        p
    };
    let (argv, envp) = (pointers(&args), pointers(&env));
    set_close_on_exec(fd, false);
    // SAFETY: `argv` and `envp` are NULL-terminated arrays of pointers to NUL-terminated
    // strings that live until the call returns (it returns only on failure). execve replaces
    // the whole process, its other threads included, and changes nothing when it fails.
    unsafe {
        libc::execve(c"/proc/self/exe".as_ptr(), argv.as_ptr(), envp.as_ptr());
    }
    let error = std::io::Error::last_os_error();
    set_close_on_exec(fd, true);
    error
}

/// The arguments of a `/proc/PID/cmdline`: NUL-terminated strings one after the other.
fn command_line(bytes: &[u8]) -> Vec<Vec<u8>> {
    let bytes = bytes.strip_suffix(&[0]).unwrap_or(bytes);
    if bytes.is_empty() {
        return Vec::new();
    }
    bytes.split(|&b| b == 0).map(<[u8]>::to_vec).collect()
}

fn c_strings(strings: Vec<Vec<u8>>) -> Option<Vec<CString>> {
    strings.into_iter().map(|s| CString::new(s).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_lines_keep_empty_arguments_but_not_the_final_terminator() {
        let args = command_line(b"ld.so\0--library-path\0lib\0worker\0\0--addr=x\0");
        let want = ["ld.so", "--library-path", "lib", "worker", "", "--addr=x"];
        assert_eq!(args, want.map(|a| a.as_bytes().to_vec()));
        assert!(command_line(b"").is_empty());
        assert_eq!(command_line(b"a"), [b"a".to_vec()]);
    }

    #[test]
    fn only_a_listening_socket_is_inherited() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let connected = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        assert!(is_listening(listener.as_raw_fd()));
        assert!(!is_listening(connected.as_raw_fd()));
        let file = std::fs::File::open("/proc/self/cmdline").unwrap();
        assert!(!is_listening(file.as_raw_fd()));
        assert!(!is_listening(-1));
    }
}
