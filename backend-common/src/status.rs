//! The worker's state for the `Status` RPC: whether a model is loaded, whether requests
//! are running, and how much memory the process holds.
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::engine::MemoryReport;
use crate::pb::status_response::State;
use crate::pb::{MemoryUsageData, StatusResponse};

/// Live counters shared by all RPC handlers.
#[derive(Debug, Default)]
pub struct WorkerState {
    in_flight: AtomicUsize,
    load_error: Mutex<Option<String>>,
}

/// Marks a request as running while it lives.
#[derive(Debug)]
pub struct BusyGuard<'a>(&'a WorkerState);

impl Drop for BusyGuard<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

impl WorkerState {
    /// Counts a request as running until the guard drops.
    pub fn busy(&self) -> BusyGuard<'_> {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        BusyGuard(self)
    }

    /// Records the outcome of the last LoadModel.
    pub fn set_load_error(&self, error: Option<String>) {
        *self.load_error.lock().unwrap_or_else(|e| e.into_inner()) = error;
    }

    /// The `Status` reply for an engine with `loaded` and `memory`.
    pub fn report(&self, loaded: bool, memory: &MemoryReport) -> StatusResponse {
        let failed = self
            .load_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some();
        let state = if self.in_flight.load(Ordering::SeqCst) > 0 {
            State::Busy
        } else if loaded {
            State::Ready
        } else if failed {
            State::Error
        } else {
            State::Uninitialized
        };
        let mut breakdown: std::collections::HashMap<String, u64> =
            memory.parts.iter().cloned().collect();
        let rss = resident_bytes().unwrap_or(0);
        breakdown.insert("process_rss".to_string(), rss);
        StatusResponse {
            state: state as i32,
            memory: Some(MemoryUsageData {
                total: rss,
                breakdown,
            }),
        }
    }
}

/// Resident set size of this process, from `VmRSS` in `/proc/self/status`.
pub fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_follows_load_and_requests() {
        let s = WorkerState::default();
        let mem = MemoryReport::default();
        assert_eq!(s.report(false, &mem).state, State::Uninitialized as i32);
        s.set_load_error(Some("bad".into()));
        assert_eq!(s.report(false, &mem).state, State::Error as i32);
        s.set_load_error(None);
        assert_eq!(s.report(true, &mem).state, State::Ready as i32);
        let guard = s.busy();
        assert_eq!(s.report(true, &mem).state, State::Busy as i32);
        drop(guard);
        assert_eq!(s.report(true, &mem).state, State::Ready as i32);
    }

    #[test]
    fn memory_includes_rss_and_engine_parts() {
        let s = WorkerState::default();
        let mem = MemoryReport {
            parts: vec![("weights".into(), 10)],
        };
        let m = s.report(true, &mem).memory.unwrap();
        assert!(m.total > 0);
        assert_eq!(m.breakdown["weights"], 10);
        assert_eq!(m.breakdown["process_rss"], m.total);
    }
}
