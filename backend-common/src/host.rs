//! What this machine offers a worker: its memory and the CPU cores the process may use.

/// Total memory of the machine, from `/proc/meminfo` (None where it cannot be read).
pub fn machine_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// CPU cores this process may run on (1 where it cannot be told).
pub fn cores() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
}

/// Hands the heap's free memory back to the operating system. glibc keeps what a process
/// frees (and, after large frees, serves even large allocations from its heap), so without
/// this a worker stays at its loaded size after Free.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn release_free_memory() {
    // SAFETY: malloc_trim only walks glibc's own allocator state, under its own locks.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Other allocators return memory on their own.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn release_free_memory() {}
