//! The decode loop: one thread owns the llama.cpp context and advances every running
//! request in one batch per step (continuous batching).
//!
//! Each request occupies a slot, which is also its KV-cache sequence id. A step puts the
//! last sampled token of every generating slot and as much pending prompt as the batch
//! budget allows into one `llama_decode`, then samples every slot whose logits are ready.
//! New requests join between steps; finished or cancelled ones free their slot at once.
//! With `cache_reuse`, a free slot keeps the KV cache of its last request, and a new request
//! goes to the slot sharing the longest prompt prefix with it, evaluating only the rest.
//!
//! A Score request's candidates run as jobs too: each is a prompt whose logits are read at
//! every scored position (one log-probability sent per scored token), and that ends when its
//! prompt is evaluated, without sampling.
//!
//! Embedding requests run on the same thread, between steps, in a second context of their
//! own (pooled embeddings need a context created for them), so they never wait for a slot.
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::thread::JoinHandle;
use std::time::Instant;

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::{LlamaLoraAdapter, LlamaModel};
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;

use backend_common::engine::{
    EMBEDDINGS_OFF, Embedding, EngineError, FinishReason, GeneratedToken, GenerationRequest,
    GenerationStats, TokenLogprob,
};

use crate::ffi_guard;

/// What a running request hears from the decode loop.
#[derive(Debug)]
pub enum Event {
    /// A new token.
    Token(GeneratedToken),
    /// The request ended.
    Done(Result<GenerationStats, EngineError>),
}

/// A request handed to the decode loop.
pub struct Job {
    /// The prompt, tokenized.
    pub prompt: Vec<LlamaToken>,
    /// What to do with it.
    pub task: Task,
    /// Where tokens go (for a scored prompt: one per scored token, with its logprob).
    pub events: Sender<Event>,
    /// Set by the requester to stop at the next step.
    pub cancel: Arc<AtomicBool>,
}

/// What a job does with its prompt.
pub enum Task {
    /// Generate after it.
    Generate {
        /// Limits and logprob settings (boxed: far larger than a score's).
        request: Box<GenerationRequest>,
        /// The request's sampler chain.
        sampler: LlamaSampler,
    },
    /// Score `prompt[from..]`: the log-probability of each of those tokens given the ones
    /// before it (`from` is at least 1).
    Score {
        /// Index of the first scored token.
        from: usize,
    },
}

/// An embedding request handed to the decode loop.
pub struct EmbedJob {
    /// The text, tokenized; it fits in one batch of the embedding context.
    pub tokens: Vec<LlamaToken>,
    /// One vector per token (the context pools nothing) instead of the pooled one.
    pub per_token: bool,
    /// Where the normalised embedding goes.
    pub reply: Sender<Result<Embedding, EngineError>>,
}

/// Work for the decode thread.
enum Work {
    /// A generation (boxed: a job is far larger than an embedding request).
    Generate(Box<Job>),
    /// An embedding.
    Embed(EmbedJob),
}

/// Shape of the decode loop.
#[derive(Debug, Clone, Copy)]
pub struct LoopConfig {
    /// Slots (sequences decoded together).
    pub parallel: u32,
    /// Context length of each slot.
    pub context_per_slot: u32,
    /// Most tokens in one decode.
    pub n_batch: u32,
    /// Decode one token once before serving.
    pub warmup: bool,
    /// Shift a full slot's context instead of ending its generation.
    pub context_shift: bool,
    /// Reuse a free slot's cached prefix when it shares at least this many tokens with a
    /// new prompt (0: every request starts from an empty cache).
    pub cache_reuse: u32,
}

/// The running decode loop; dropping it stops the loop and fails requests still running.
pub struct Scheduler {
    jobs: Option<Sender<Work>>,
    stop: Arc<AtomicBool>,
    /// Prompt tokens taken from a slot's cache instead of evaluated, since the start.
    reused: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Scheduler {
    /// Creates the context (and, with `embedding` params, the embedding context) on a new
    /// thread and starts the loop there.
    pub fn start(
        backend: Arc<LlamaBackend>,
        model: Arc<LlamaModel>,
        params: LlamaContextParams,
        embedding: Option<LlamaContextParams>,
        config: LoopConfig,
        lora: Option<(LlamaLoraAdapter, f32)>,
    ) -> Result<Self, EngineError> {
        let (jobs_tx, jobs_rx) = mpsc::channel::<Work>();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), EngineError>>();
        let stop = Arc::new(AtomicBool::new(false));
        let stop_flag = Arc::clone(&stop);
        let reused = Arc::new(AtomicU64::new(0));
        let reused_count = Arc::clone(&reused);
        let thread = std::thread::Builder::new()
            .name("llama-decode".to_string())
            .spawn(move || {
                let ctx = match model.new_context(&backend, params) {
                    Ok(ctx) => ctx,
                    Err(e) => {
                        let _ = ready_tx.send(Err(EngineError::ResourceExhausted(format!(
                            "cannot create a llama.cpp context ({e}); lower ContextSize or `parallel`"
                        ))));
                        return;
                    }
                };
                let mut ctx = ctx;
                // The adapter lives on this thread as long as the context that uses it.
                let mut lora = lora;
                if let Some((adapter, scale)) = lora.as_mut()
                    && let Err(e) = ctx.lora_adapter_set(adapter, *scale)
                {
                    let _ = ready_tx.send(Err(EngineError::InvalidArgument(format!(
                        "LoraAdapter: cannot apply it ({e})"
                    ))));
                    return;
                }
                let embedder = match embedding.map(|p| model.new_context(&backend, p)) {
                    None => None,
                    Some(Ok(ctx)) => Some(ctx),
                    Some(Err(e)) => {
                        let _ = ready_tx.send(Err(EngineError::ResourceExhausted(format!(
                            "cannot create the embedding context ({e}); lower ContextSize"
                        ))));
                        return;
                    }
                };
                let mut decode_loop = DecodeLoop::new(&model, ctx, embedder, config, reused_count);
                if config.warmup {
                    decode_loop.warmup();
                }
                let _ = ready_tx.send(Ok(()));
                decode_loop.run(&jobs_rx, &stop_flag);
            })
            .map_err(|e| EngineError::Internal(format!("cannot start the decode thread: {e}")))?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Scheduler {
                jobs: Some(jobs_tx),
                stop,
                reused,
                thread: Some(thread),
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => {
                let _ = thread.join();
                Err(EngineError::Internal(
                    "the decode thread ended while starting".into(),
                ))
            }
        }
    }

    /// Queues a job; it starts at the next step with a free slot.
    pub fn submit(&self, job: Job) -> Result<(), EngineError> {
        self.send(Work::Generate(Box::new(job)))
    }

    /// Prompt tokens taken from a slot's cache instead of evaluated, since the start.
    pub fn reused_tokens(&self) -> u64 {
        self.reused.load(Ordering::Relaxed)
    }

    /// Queues an embedding; it runs before the next step.
    pub fn embed(&self, job: EmbedJob) -> Result<(), EngineError> {
        self.send(Work::Embed(job))
    }

    fn send(&self, work: Work) -> Result<(), EngineError> {
        self.jobs
            .as_ref()
            .and_then(|tx| tx.send(work).ok())
            .ok_or(EngineError::NotLoaded)
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.jobs.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Where a slot is in its request.
struct Slot {
    job: Job,
    /// Prompt tokens already in the KV cache (or in the current batch).
    prompt_done: usize,
    /// Next KV position.
    pos: i32,
    /// The token to feed at the next step, once generating.
    next_input: Option<LlamaToken>,
    /// Batch row whose logits this slot samples after the current decode.
    logits_row: Option<i32>,
    /// For a scored prompt: the batch rows of the current decode whose logits score a
    /// token, with that token's index in the prompt.
    score_rows: Vec<(i32, usize)>,
    /// Generated tokens fed back into the cache, after the prompt.
    fed: Vec<LlamaToken>,
    /// The cache was shifted: positions no longer match the tokens.
    shifted: bool,
    generated: u32,
    started: Instant,
    first_token: Option<Instant>,
}

struct DecodeLoop<'m> {
    model: &'m LlamaModel,
    ctx: LlamaContext<'m>,
    /// The pooled-embedding context, when the model was loaded with `Embeddings`.
    embedder: Option<LlamaContext<'m>>,
    batch: LlamaBatch<'static>,
    slots: Vec<Option<Slot>>,
    /// What each free slot's KV sequence holds, position by position (`cache_reuse`).
    cached: Vec<Vec<LlamaToken>>,
    config: LoopConfig,
    /// Prompt tokens reused from the cache, for Status.
    reused: Arc<AtomicU64>,
}

impl<'m> DecodeLoop<'m> {
    fn new(
        model: &'m LlamaModel,
        ctx: LlamaContext<'m>,
        embedder: Option<LlamaContext<'m>>,
        config: LoopConfig,
        reused: Arc<AtomicU64>,
    ) -> Self {
        let capacity = config.n_batch.max(config.parallel) as usize;
        DecodeLoop {
            model,
            ctx,
            embedder,
            batch: LlamaBatch::new(capacity, config.parallel as i32),
            slots: (0..config.parallel).map(|_| None).collect(),
            cached: vec![Vec::new(); config.parallel as usize],
            config,
            reused,
        }
    }

    /// One throw-away decode so the first request does not pay for lazy initialisation.
    fn warmup(&mut self) {
        self.batch.clear();
        let bos = self.model.vocab().bos();
        if self.batch.add(bos, 0, &[0], true).is_ok() && self.ctx.decode(&mut self.batch).is_ok() {
            tracing::debug!("warmup decode done");
        }
        self.ctx.clear_kv_cache();
    }

    fn run(&mut self, jobs: &Receiver<Work>, stop: &AtomicBool) {
        let mut senders_gone = false;
        // Generation requests that arrived while every slot was taken.
        let mut waiting: VecDeque<Job> = VecDeque::new();
        loop {
            if self.slots.iter().all(Option::is_none) && waiting.is_empty() {
                if senders_gone {
                    return;
                }
                match jobs.recv() {
                    Ok(work) => self.accept(work, &mut waiting),
                    Err(_) => return,
                }
            }
            loop {
                match jobs.try_recv() {
                    Ok(work) => self.accept(work, &mut waiting),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        senders_gone = true;
                        break;
                    }
                }
            }
            // A queued request whose client went away is answered before it costs a prefill.
            waiting.retain(|job| {
                let gone = job.cancel.load(Ordering::Relaxed);
                if gone {
                    let _ = job.events.send(Event::Done(Ok(GenerationStats {
                        prompt_tokens: 0,
                        completion_tokens: 0,
                        prompt_ms: 0.0,
                        generation_ms: 0.0,
                        finish: FinishReason::Stopped,
                    })));
                }
                !gone
            });
            while self.slots.iter().any(Option::is_none) {
                match waiting.pop_front() {
                    Some(job) => self.admit(job),
                    None => break,
                }
            }
            if stop.load(Ordering::SeqCst) {
                for i in 0..self.slots.len() {
                    self.fail(i, EngineError::NotLoaded);
                }
                for job in waiting.drain(..) {
                    let _ = job.events.send(Event::Done(Err(EngineError::NotLoaded)));
                }
                return;
            }
            for i in 0..self.slots.len() {
                if self.slots[i]
                    .as_ref()
                    .is_some_and(|s| s.job.cancel.load(Ordering::Relaxed))
                {
                    self.finish(i, FinishReason::Stopped);
                }
            }
            self.step();
        }
    }

    /// Runs an embedding now; queues a generation for the next free slot.
    fn accept(&mut self, work: Work, waiting: &mut VecDeque<Job>) {
        match work {
            Work::Generate(job) => waiting.push_back(*job),
            Work::Embed(job) => {
                let result = match self.embedder.as_mut() {
                    Some(ctx) => embed(ctx, &job.tokens, job.per_token),
                    None => Err(EngineError::FailedPrecondition(EMBEDDINGS_OFF.into())),
                };
                let _ = job.reply.send(result);
            }
        }
    }

    /// Puts `job` in a free slot: the one whose cache shares the longest prefix with its
    /// prompt when that prefix is long enough to reuse, else the emptiest one.
    fn admit(&mut self, job: Job) {
        let free = (0..self.slots.len()).filter(|&i| self.slots[i].is_none());
        let (index, shared) = free
            .map(|i| (i, common_prefix(&self.cached[i], &job.prompt)))
            .max_by_key(|&(i, shared)| (shared, std::cmp::Reverse(self.cached[i].len())))
            .expect("admit is called with a free slot");
        // The last prompt token is always evaluated: its logits pick the first new token (a
        // scored prompt: every position from the one before its first scored token).
        let must_compute = match job.task {
            Task::Generate { .. } => job.prompt.len().saturating_sub(1),
            Task::Score { from } => from.saturating_sub(1),
        };
        let mut reuse = shared.min(must_compute);
        if self.config.cache_reuse == 0 || reuse < self.config.cache_reuse as usize {
            reuse = 0;
        }
        let seq = Some(index as u32);
        if !self
            .ctx
            .clear_kv_cache_seq(seq, Some(reuse as u32), None)
            .unwrap_or(false)
        {
            reuse = 0;
            let _ = self.ctx.clear_kv_cache_seq(seq, None, None);
        }
        if reuse > 0 {
            self.reused.fetch_add(reuse as u64, Ordering::Relaxed);
            tracing::debug!(
                slot = index,
                reuse,
                prompt = job.prompt.len(),
                "prompt prefix reused from the cache"
            );
        }
        self.cached[index].clear();
        self.slots[index] = Some(Slot {
            job,
            prompt_done: reuse,
            pos: reuse as i32,
            next_input: None,
            logits_row: None,
            score_rows: Vec::new(),
            fed: Vec::new(),
            shifted: false,
            generated: 0,
            started: Instant::now(),
            first_token: None,
        });
    }

    /// Fills the batch, decodes it, and samples every slot that has logits.
    fn step(&mut self) {
        self.batch.clear();
        let mut budget = self.batch_capacity();
        // Generating slots first: one token each keeps their latency flat while prompts load.
        for (i, slot) in self.slots.iter_mut().enumerate() {
            let Some(slot) = slot else { continue };
            slot.logits_row = None;
            if let Some(token) = slot.next_input
                && self.batch.add(token, slot.pos, &[i as i32], true).is_ok()
            {
                slot.logits_row = Some(self.batch.n_tokens() - 1);
                slot.pos += 1;
                slot.fed.push(token);
                budget -= 1;
            }
        }
        for (i, slot) in self.slots.iter_mut().enumerate() {
            let Some(slot) = slot else { continue };
            if slot.next_input.is_some() || budget == 0 {
                continue;
            }
            let remaining = &slot.job.prompt[slot.prompt_done..];
            let take = remaining.len().min(budget);
            let len = slot.job.prompt.len();
            slot.score_rows.clear();
            for (k, &token) in remaining[..take].iter().enumerate() {
                let at = slot.prompt_done + k;
                let last = at + 1 == len;
                // Which logits this position's row gives: the next token's to sample, or
                // the score of the token after it.
                let (sample, scores) = match slot.job.task {
                    Task::Generate { .. } => (last, false),
                    Task::Score { from } => (false, at + 1 >= from && !last),
                };
                if self
                    .batch
                    .add(token, slot.pos, &[i as i32], sample || scores)
                    .is_err()
                {
                    break;
                }
                slot.pos += 1;
                if sample {
                    slot.logits_row = Some(self.batch.n_tokens() - 1);
                }
                if scores {
                    slot.score_rows.push((self.batch.n_tokens() - 1, at + 1));
                }
            }
            slot.prompt_done += take;
            budget -= take;
        }
        if self.batch.n_tokens() == 0 {
            return;
        }
        if let Err(e) = self.ctx.decode(&mut self.batch) {
            let thrown = ffi_guard::take_exception();
            let error = || match &thrown {
                Some(thrown) => {
                    EngineError::Internal(format!("llama.cpp failed to decode: {thrown}"))
                }
                None => EngineError::ResourceExhausted(format!(
                    "llama.cpp could not decode ({e}); the KV cache is full"
                )),
            };
            tracing::warn!(error = %error(), "decode failed; failing the requests in this batch");
            for i in 0..self.slots.len() {
                if self.slots[i].is_some() {
                    self.fail(i, error());
                }
            }
            return;
        }
        for i in 0..self.slots.len() {
            if let Some(row) = self.slots[i].as_ref().and_then(|s| s.logits_row) {
                self.sample(i, row);
            } else if self.slots[i]
                .as_ref()
                .is_some_and(|s| !s.score_rows.is_empty())
            {
                self.send_scores(i);
            }
        }
        // A scored prompt ends once it is all evaluated.
        for i in 0..self.slots.len() {
            if self.slots[i].as_ref().is_some_and(|s| {
                matches!(s.job.task, Task::Score { .. }) && s.prompt_done == s.job.prompt.len()
            }) {
                self.finish(i, FinishReason::Eos);
            }
        }
    }

    /// Sends the log-probability of each token a scored slot's rows of this decode score.
    fn send_scores(&mut self, index: usize) {
        let Some(slot) = self.slots[index].as_mut() else {
            return;
        };
        let mut gone = false;
        for &(row, at) in &slot.score_rows {
            let token = slot.job.prompt[at];
            let logits = self.ctx.get_logits_ith(row);
            let (logprob, _) = backend_common::logprobs::from_logits(logits, token.0 as usize, 0);
            let event = Event::Token(GeneratedToken {
                id: token.0,
                piece: Vec::new(),
                special: false,
                logprob: Some(TokenLogprob {
                    logprob,
                    top: Vec::new(),
                }),
            });
            gone |= slot.job.events.send(event).is_err();
        }
        slot.score_rows.clear();
        if gone {
            self.finish(index, FinishReason::Stopped);
        }
    }

    fn batch_capacity(&self) -> usize {
        self.config.n_batch.max(self.config.parallel) as usize
    }

    fn sample(&mut self, index: usize, row: i32) {
        match self.sample_slot(index, row) {
            Ok(Some(finish)) => self.finish(index, finish),
            Ok(None) => {}
            Err(error) => self.fail(index, error),
        }
    }

    /// Samples one slot's next token and sends it; says how the slot ends, if it does.
    fn sample_slot(&mut self, index: usize, row: i32) -> Result<Option<FinishReason>, EngineError> {
        let model = self.model;
        let Some(slot) = self.slots[index].as_mut() else {
            return Ok(None);
        };
        let Task::Generate { request, sampler } = &mut slot.job.task else {
            return Ok(None);
        };
        let token = sampler.sample(&self.ctx, row);
        if token.0 < 0 {
            // The guard caught an exception: llama.cpp has no token for this row.
            let thrown = ffi_guard::take_exception().unwrap_or_default();
            if request.grammar.is_some() || request.tool_call.is_some() {
                // The grammar rejected every candidate (it is complete and `ignore_eos`
                // bans the end, or a lazy grammar's trigger fired on text it cannot parse):
                // the output so far is the answer, and the sampler, whose grammar is now
                // spent, goes with the slot.
                tracing::warn!(slot = index, %thrown, "the grammar admits no next token; ending the generation");
                return Ok(Some(FinishReason::Eos));
            }
            return Err(EngineError::Internal(format!(
                "llama.cpp failed to sample: {thrown}"
            )));
        }
        slot.first_token.get_or_insert_with(Instant::now);
        slot.generated += 1;
        let vocab = model.vocab();
        if vocab.is_eog(token) && !request.ignore_eos {
            return Ok(Some(FinishReason::Eos));
        }
        let logprob = request
            .logprobs
            .map(|top| token_logprob(model, self.ctx.get_logits_ith(row), token, top));
        let event = Event::Token(GeneratedToken {
            id: token.0,
            piece: vocab.token_to_piece(token, true, None),
            special: vocab.is_control(token),
            logprob,
        });
        if slot.job.events.send(event).is_err() {
            return Ok(Some(FinishReason::Stopped));
        }
        let at_limit = request.max_tokens.is_some_and(|max| slot.generated >= max);
        if at_limit {
            return Ok(Some(FinishReason::Length));
        }
        if slot.pos as u32 >= self.config.context_per_slot {
            if !self.config.context_shift {
                return Ok(Some(FinishReason::Length));
            }
            let (pos, index) = (slot.pos, index as u32);
            match shift_context(&mut self.ctx, index, pos) {
                Some(discarded) => {
                    tracing::debug!(slot = index, discarded, "context shifted");
                    if let Some(slot) = self.slots[index as usize].as_mut() {
                        slot.pos -= discarded;
                        slot.shifted = true;
                    }
                }
                None => return Ok(Some(FinishReason::Length)),
            }
        }
        if let Some(slot) = self.slots[index].as_mut() {
            slot.next_input = Some(token);
        }
        Ok(None)
    }

    fn finish(&mut self, index: usize, finish: FinishReason) {
        let Some(slot) = self.slots[index].take() else {
            return;
        };
        if self.config.cache_reuse > 0 && !slot.shifted {
            // Keep the cache for the next request that starts the same way.
            let cached = &mut self.cached[index];
            cached.extend_from_slice(&slot.job.prompt[..slot.prompt_done]);
            cached.extend_from_slice(&slot.fed);
        } else {
            let _ = self.ctx.clear_kv_cache_seq(Some(index as u32), None, None);
        }
        let end = Instant::now();
        let first = slot.first_token.unwrap_or(end);
        let stats = GenerationStats {
            prompt_tokens: slot.job.prompt.len() as u32,
            completion_tokens: slot.generated,
            prompt_ms: first.duration_since(slot.started).as_secs_f64() * 1000.0,
            generation_ms: end.duration_since(first).as_secs_f64() * 1000.0,
            finish,
        };
        let _ = slot.job.events.send(Event::Done(Ok(stats)));
    }

    fn fail(&mut self, index: usize, error: EngineError) {
        let Some(slot) = self.slots[index].take() else {
            return;
        };
        self.cached[index].clear();
        let _ = self.ctx.clear_kv_cache_seq(Some(index as u32), None, None);
        let _ = slot.job.events.send(Event::Done(Err(error)));
    }
}

/// How many leading tokens `a` and `b` share.
fn common_prefix(a: &[LlamaToken], b: &[LlamaToken]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// llama-server's context shift for sequence `seq` whose next position is `pos`: keeps the
/// first token (the prompt's start, usually BOS), drops the older half of the rest and
/// moves the newer half down. Returns how many positions were dropped; `None` when the
/// cache refused.
fn shift_context(ctx: &mut LlamaContext<'_>, seq: u32, pos: i32) -> Option<i32> {
    const KEEP: i32 = 1;
    let discard = (pos - KEEP) / 2;
    if discard <= 0 {
        return None;
    }
    let (keep, end) = (KEEP as u32, (KEEP + discard) as u32);
    if !ctx
        .clear_kv_cache_seq(Some(seq), Some(keep), Some(end))
        .ok()?
    {
        return None;
    }
    ctx.kv_cache_seq_add(seq as i32, Some(end), Some(pos as u32), -discard)
        .ok()?;
    Some(discard)
}

/// The pooled embedding of `tokens` (or each token's, `per_token`), each vector
/// L2-normalised as llama.cpp's server does.
fn embed(
    ctx: &mut LlamaContext<'_>,
    tokens: &[LlamaToken],
    per_token: bool,
) -> Result<Embedding, EngineError> {
    // Each embedding starts from an empty cache: pooling covers exactly these tokens.
    ctx.clear_kv_cache();
    let mut batch = LlamaBatch::new(tokens.len(), 1);
    batch
        .add_sequence(tokens, 0, true)
        .map_err(|e| EngineError::Internal(format!("cannot build the embedding batch ({e})")))?;
    ctx.decode(&mut batch).map_err(|e| {
        EngineError::ResourceExhausted(format!("llama.cpp could not compute the embedding ({e})"))
    })?;
    if !per_token {
        let pooled = ctx.embeddings_seq_ith(0).map_err(|e| {
            EngineError::Internal(format!("llama.cpp returned no pooled embedding ({e})"))
        })?;
        return Ok(Embedding {
            values: Embedding::unit(pooled),
            dim: pooled.len(),
            per_token: false,
            input_tokens: tokens.len(),
        });
    }
    let mut values = Vec::new();
    let mut dim = 0;
    for i in 0..tokens.len() {
        let row = ctx.embeddings_ith(i as i32).map_err(|e| {
            EngineError::Internal(format!(
                "llama.cpp returned no embedding for token {i} ({e})"
            ))
        })?;
        dim = row.len();
        values.extend(Embedding::unit(row));
    }
    Ok(Embedding {
        values,
        dim,
        per_token: true,
        input_tokens: tokens.len(),
    })
}

/// Log-probability of `token` and the `top` most likely tokens, from raw logits.
fn token_logprob(model: &LlamaModel, logits: &[f32], token: LlamaToken, top: u32) -> TokenLogprob {
    let (logprob, best) =
        backend_common::logprobs::from_logits(logits, token.0 as usize, top as usize);
    let vocab = model.vocab();
    TokenLogprob {
        logprob,
        top: best
            .into_iter()
            .map(|(id, logprob)| {
                let t = LlamaToken(id as i32);
                (t.0, vocab.token_to_piece(t, true, None), logprob)
            })
            .collect(),
    }
}
