//! `GetMetrics`: the generations running now, and the busiest of them reported as LocalAI's
//! llama.cpp backend reports its busiest slot (tokens per second, tokens generated, prompt
//! tokens processed).
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use crate::pb::MetricsResponse;

/// How far one generation has come.
#[derive(Debug)]
pub struct Progress {
    prompt_tokens: u32,
    correlation_id: String,
    first_token: OnceLock<Instant>,
    generated: AtomicU32,
}

impl Progress {
    /// Counts a generated token.
    pub fn token(&self) {
        self.first_token.get_or_init(Instant::now);
        self.generated.fetch_add(1, Ordering::Relaxed);
    }

    /// Decode speed: tokens after the first over the time since the first.
    fn tokens_per_second(&self) -> f32 {
        let generated = self.generated.load(Ordering::Relaxed);
        let Some(first) = self.first_token.get() else {
            return 0.0;
        };
        let seconds = first.elapsed().as_secs_f64();
        if generated < 2 || seconds <= 0.0 {
            return 0.0;
        }
        (f64::from(generated - 1) / seconds) as f32
    }
}

/// The generations running in this worker.
#[derive(Debug, Default)]
pub struct Generations {
    next: AtomicU64,
    running: Mutex<BTreeMap<u64, Arc<Progress>>>,
}

/// A running generation; it leaves [`Generations`] when dropped.
#[derive(Debug)]
pub struct Running {
    generations: Arc<Generations>,
    id: u64,
    progress: Arc<Progress>,
}

impl Running {
    /// Its progress, for the sink that sees its tokens.
    pub fn progress(&self) -> Arc<Progress> {
        Arc::clone(&self.progress)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.generations
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
    }
}

impl Generations {
    /// Registers a generation of `prompt_tokens` prompt tokens until the guard drops.
    pub fn start(self: &Arc<Self>, prompt_tokens: usize, correlation_id: &str) -> Running {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let progress = Arc::new(Progress {
            prompt_tokens: u32::try_from(prompt_tokens).unwrap_or(u32::MAX),
            correlation_id: correlation_id.to_string(),
            first_token: OnceLock::new(),
            generated: AtomicU32::new(0),
        });
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, Arc::clone(&progress));
        Running {
            generations: Arc::clone(self),
            id,
            progress,
        }
    }

    /// The busiest running generation (most tokens generated; the oldest on a tie), or all
    /// zeros when none runs.
    pub fn busiest(&self) -> MetricsResponse {
        let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let Some((&id, progress)) = running
            .iter()
            .max_by_key(|&(&id, p)| (p.generated.load(Ordering::Relaxed), std::cmp::Reverse(id)))
        else {
            return MetricsResponse::default();
        };
        let prompt = serde_json::json!({
            "id": id,
            "correlation_id": progress.correlation_id,
            "n_prompt_tokens": progress.prompt_tokens,
            "n_decoded": progress.generated.load(Ordering::Relaxed),
        });
        MetricsResponse {
            slot_id: i32::try_from(id).unwrap_or(i32::MAX),
            prompt_json_for_slot: prompt.to_string(),
            tokens_per_second: progress.tokens_per_second(),
            tokens_generated: i32::try_from(progress.generated.load(Ordering::Relaxed))
                .unwrap_or(i32::MAX),
            prompt_tokens_processed: i32::try_from(progress.prompt_tokens).unwrap_or(i32::MAX),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_busiest_generation_is_reported_until_it_ends() {
        let generations = Arc::new(Generations::default());
        assert_eq!(generations.busiest(), MetricsResponse::default());
        let a = generations.start(10, "a");
        let b = generations.start(20, "b");
        for _ in 0..3 {
            b.progress().token();
        }
        a.progress().token();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let busiest = generations.busiest();
        assert_eq!(
            (
                busiest.slot_id,
                busiest.tokens_generated,
                busiest.prompt_tokens_processed
            ),
            (1, 3, 20)
        );
        assert!(busiest.tokens_per_second > 0.0, "{busiest:?}");
        assert!(
            busiest
                .prompt_json_for_slot
                .contains("\"correlation_id\":\"b\"")
        );
        drop(b);
        assert_eq!(generations.busiest().slot_id, 0);
        drop(a);
        assert_eq!(generations.busiest(), MetricsResponse::default());
    }
}
