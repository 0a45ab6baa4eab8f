//! The thread that owns a loaded model and runs it for every request at once.
//!
//! gRPC handlers only submit a request ([`EngineThread::generate`]) and receive its tokens.
//! The thread loops: it takes new requests into the [`Scheduler`], asks it for a step, runs
//! one forward pass over every scheduled sequence through the paged [`KvCache`], samples
//! each sequence that reached its end with that sequence's own [`Sampler`], and sends each
//! token to its request. A request whose client stopped listening is removed at the next
//! step and its blocks go back to the pool.
//!
//! A Score request's sequences (prompt and candidate each) run as prefills among the
//! others: every scored position is computed (not taken from the prefix cache), its row
//! of logits is read, and the sequence ends when its prefill does, without sampling.
//!
//! An Embedding request is a prefill too: every position computed, its final hidden state
//! kept, and the vectors pooled (or each returned, `pooling:none`) when the prefill ends.
//!
//! A constrained sequence's allowed tokens are computed on a second thread while the
//! forward pass runs (the mask depends only on the tokens already sampled), so other
//! sequences do not wait for it; a step without a constrained sequence starts no thread.
use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use backend_common::engine::{
    Embedding, EngineError, FinishReason, Flow, GeneratedToken, GenerationRequest, GenerationStats,
    ScoredSequence, TokenSink,
};
use backend_common::load::Pooling;
use engine_core::{AdmitError, KvStats, ScheduledSeq, Scheduler, SchedulerConfig, SeqId, Step};
use toktrie::SimpleVob;

use crate::constrained::{GrammarStop, SequenceGrammar, apply_mask};
use crate::model::{BatchItem, KvCache, Model};
use crate::sampler::{Sampler, token_logprob};
use crate::tokenizer::ModelTokenizer;

/// What a request hears from the engine thread.
enum Event {
    /// A generated token.
    Token(GeneratedToken),
    /// The end: statistics, or why it failed.
    Done(Result<GenerationStats, EngineError>),
}

/// A request handed to the engine thread.
struct Job {
    id: SeqId,
    prompt: Vec<u32>,
    sampler: Sampler,
    max_tokens: Option<u32>,
    ignore_eos: bool,
    logprobs: Option<u32>,
    /// The output constraint, if the request has one.
    grammar: Option<SequenceGrammar>,
    events: Sender<Event>,
    cancelled: Arc<AtomicBool>,
    submitted: Instant,
}

/// A sequence of a Score request handed to the engine thread.
struct ScoreJob {
    id: SeqId,
    tokens: Vec<u32>,
    /// Index of the first scored token.
    from: usize,
    /// Where the log-probabilities of `tokens[from..]` go.
    reply: Sender<Result<Vec<f32>, EngineError>>,
}

/// A scored sequence in progress: the log-probability of each scored token once the
/// position before it was computed (a preempted sequence computes them again).
struct Scoring {
    job: ScoreJob,
    logprobs: Vec<f32>,
}

impl Scoring {
    /// Rows of a step's chunk `start..start + n` whose logits score a token: those at
    /// positions `from - 1 ..= len - 2`.
    fn rows(&self, start: usize, n: usize) -> std::ops::Range<usize> {
        let first = (self.job.from - 1).max(start);
        let end = (start + n).min(self.job.tokens.len() - 1);
        if first >= end {
            0..0
        } else {
            first - start..end - start
        }
    }
}

/// An Embedding request handed to the engine thread.
struct EmbedJob {
    id: SeqId,
    tokens: Vec<u32>,
    pooling: Pooling,
    reply: Sender<Result<Embedding, EngineError>>,
}

/// An embedding in progress: each position's final hidden state once computed (a
/// preempted sequence computes them again).
struct EmbeddingRows {
    job: EmbedJob,
    rows: Vec<Option<Vec<f32>>>,
}

impl EmbeddingRows {
    /// The pooled (or per-token) vectors, each normalised to unit length.
    fn pooled(&self) -> Result<Embedding, EngineError> {
        let rows: Vec<&[f32]> = self.rows.iter().flatten().map(Vec::as_slice).collect();
        let (Some(first), Some(last)) = (rows.first(), rows.last()) else {
            return Err(EngineError::Internal(
                "the embedding computed no row".into(),
            ));
        };
        if rows.len() != self.rows.len() {
            return Err(EngineError::Internal(format!(
                "the embedding computed {} of its {} rows",
                rows.len(),
                self.rows.len()
            )));
        }
        let dim = first.len();
        let values = match self.job.pooling {
            Pooling::None => rows.iter().flat_map(|r| Embedding::unit(r)).collect(),
            Pooling::Cls => Embedding::unit(first),
            Pooling::Last => Embedding::unit(last),
            Pooling::Mean => {
                let mut sum = vec![0.0f64; dim];
                for row in &rows {
                    for (s, &x) in sum.iter_mut().zip(*row) {
                        *s += f64::from(x);
                    }
                }
                let mean: Vec<f32> = sum.iter().map(|s| (s / rows.len() as f64) as f32).collect();
                Embedding::unit(&mean)
            }
        };
        Ok(Embedding {
            values,
            dim,
            per_token: self.job.pooling == Pooling::None,
            input_tokens: self.rows.len(),
        })
    }
}

/// Work for the engine thread.
enum Work {
    /// A generation (boxed: a job is far larger than a scored sequence).
    Generate(Box<Job>),
    Score(ScoreJob),
    Embed(EmbedJob),
}

/// Why a sequence ends after a sampled token.
enum Ending {
    /// Generation is over (EOS, a limit, the client gone).
    Finished(FinishReason),
    /// The grammar ended it.
    Grammar(GrammarStop),
}

/// A running request's progress.
struct Active {
    job: Job,
    generated: u32,
    first_token: Option<Instant>,
}

impl Active {
    fn stats(&self, finish: FinishReason) -> GenerationStats {
        let end = Instant::now();
        let first = self.first_token.unwrap_or(end);
        GenerationStats {
            prompt_tokens: self.job.prompt.len() as u32,
            completion_tokens: self.generated,
            prompt_ms: first.duration_since(self.job.submitted).as_secs_f64() * 1000.0,
            generation_ms: end.duration_since(first).as_secs_f64() * 1000.0,
            finish,
        }
    }
}

/// A handle to the thread that runs a model; dropping it stops the thread and frees the
/// model and its KV cache.
pub struct EngineThread {
    jobs: Option<Sender<Work>>,
    thread: Option<JoinHandle<()>>,
    stats: Arc<Mutex<KvStats>>,
    next_id: AtomicU64,
    vocab: usize,
    tokenizer: Arc<ModelTokenizer>,
}

impl EngineThread {
    /// Starts the thread that owns `model` and `kv`, scheduled by `config`.
    pub fn start(
        model: Model,
        kv: KvCache,
        config: SchedulerConfig,
        tokenizer: Arc<ModelTokenizer>,
    ) -> std::io::Result<Self> {
        let (jobs, incoming) = mpsc::channel();
        let scheduler = Scheduler::new(config);
        let stats = Arc::new(Mutex::new(scheduler.stats()));
        let vocab = model.config().vocab;
        let mut worker = Worker {
            model,
            kv,
            scheduler,
            tokenizer: tokenizer.clone(),
            active: HashMap::new(),
            scoring: HashMap::new(),
            embedding: HashMap::new(),
            incoming,
            stats: stats.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("engine".into())
            .spawn(move || worker.run())?;
        Ok(EngineThread {
            jobs: Some(jobs),
            thread: Some(thread),
            stats,
            next_id: AtomicU64::new(0),
            vocab,
            tokenizer,
        })
    }

    /// The KV cache and prefix cache figures after the last step.
    pub fn stats(&self) -> KvStats {
        *self.stats.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `request` with the others until it ends, handing each token to `sink`.
    pub fn generate(
        &self,
        request: &GenerationRequest,
        grammar: Option<SequenceGrammar>,
        sink: &mut dyn TokenSink,
    ) -> Result<GenerationStats, EngineError> {
        let (events, received) = mpsc::channel();
        let cancelled = Arc::new(AtomicBool::new(false));
        let job = Job {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            prompt: request.prompt.iter().map(|&id| id as u32).collect(),
            sampler: Sampler::new(request, self.vocab, self.tokenizer.eog()),
            max_tokens: request.max_tokens,
            ignore_eos: request.ignore_eos,
            logprobs: request.logprobs,
            grammar,
            events,
            cancelled: cancelled.clone(),
            submitted: Instant::now(),
        };
        self.submit(Work::Generate(Box::new(job)))?;
        let mut listening = true;
        loop {
            let event = match received.recv_timeout(ABANDON_POLL) {
                Ok(event) => event,
                Err(RecvTimeoutError::Timeout) => {
                    // Nobody listens (the client went away while the request queued or
                    // prefilled): the engine drops it at its next step.
                    if listening && sink.abandoned() {
                        cancelled.store(true, Ordering::Relaxed);
                        listening = false;
                    }
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => return Err(engine_stopped()),
            };
            match event {
                Event::Token(token) if listening => {
                    if sink.token(token) == Flow::Stop {
                        // The engine drops the sequence at its next step and answers Done.
                        cancelled.store(true, Ordering::Relaxed);
                        listening = false;
                    }
                }
                Event::Token(_) => {}
                Event::Done(result) => return result,
            }
        }
    }
}

impl EngineThread {
    /// The embedding of `tokens`: their final hidden states pooled as `pooling` says (or
    /// each one, [`Pooling::None`]), every vector L2-normalised; the tokens run as a prefill
    /// batched with whatever else is running.
    pub fn embed(&self, tokens: &[u32], pooling: Pooling) -> Result<Embedding, EngineError> {
        let (reply, answer) = mpsc::channel();
        self.submit(Work::Embed(EmbedJob {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            tokens: tokens.to_vec(),
            pooling,
            reply,
        }))?;
        answer.recv().map_err(|_| engine_stopped())?
    }

    /// The log-probabilities of each sequence's scored tokens; the sequences run as
    /// prefills batched with whatever else is running.
    pub fn score(&self, sequences: &[ScoredSequence]) -> Result<Vec<Vec<f32>>, EngineError> {
        let mut replies = Vec::with_capacity(sequences.len());
        for sequence in sequences {
            let (reply, answer) = mpsc::channel();
            self.submit(Work::Score(ScoreJob {
                id: self.next_id.fetch_add(1, Ordering::Relaxed),
                tokens: sequence.tokens.iter().map(|&id| id as u32).collect(),
                from: sequence.from.max(1),
                reply,
            }))?;
            replies.push(answer);
        }
        replies
            .into_iter()
            .map(|answer| answer.recv().map_err(|_| engine_stopped())?)
            .collect()
    }

    fn submit(&self, work: Work) -> Result<(), EngineError> {
        self.jobs
            .as_ref()
            .ok_or_else(engine_stopped)?
            .send(work)
            .map_err(|_| engine_stopped())
    }
}

fn engine_stopped() -> EngineError {
    EngineError::Internal("the engine thread has stopped".into())
}

impl Drop for EngineThread {
    fn drop(&mut self) {
        // Closing the queue ends the thread once its sequences are done (there are none:
        // the handle is dropped when no request holds the model).
        self.jobs.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The engine thread's state.
struct Worker {
    model: Model,
    kv: KvCache,
    scheduler: Scheduler,
    tokenizer: Arc<ModelTokenizer>,
    active: HashMap<SeqId, Active>,
    scoring: HashMap<SeqId, Scoring>,
    embedding: HashMap<SeqId, EmbeddingRows>,
    incoming: Receiver<Work>,
    stats: Arc<Mutex<KvStats>>,
}

/// How long the engine thread waits for a request when nothing could be scheduled.
const IDLE_WAIT: Duration = Duration::from_millis(50);

/// How often a request waiting for its next token checks that its client still listens.
const ABANDON_POLL: Duration = Duration::from_millis(50);

impl Worker {
    fn run(&mut self) {
        loop {
            if self.active.is_empty() && self.scoring.is_empty() && self.embedding.is_empty() {
                // Idle: sleep until a request comes (or the handle is dropped).
                match self.incoming.recv() {
                    Ok(work) => self.take(work),
                    Err(_) => return,
                }
            }
            while let Ok(work) = self.incoming.try_recv() {
                self.take(work);
            }
            self.drop_cancelled();
            let step = self.scheduler.schedule();
            for &id in &step.out_of_blocks {
                self.finish(id, FinishReason::Length);
            }
            if step.seqs.is_empty() {
                // Nothing could be scheduled (every sequence just ended): wait for work.
                if let Ok(work) = self.incoming.recv_timeout(IDLE_WAIT) {
                    self.take(work);
                }
            } else {
                self.run_step(&step);
            }
            self.publish();
        }
    }

    fn take(&mut self, work: Work) {
        match work {
            Work::Generate(job) => self.accept(*job),
            Work::Score(job) => self.accept_scoring(job),
            Work::Embed(job) => self.accept_embedding(job),
        }
    }

    /// Queues an embedding, or answers it at once when it can never run.
    fn accept_embedding(&mut self, job: EmbedJob) {
        // Every position's hidden state is read: none may come from the prefix cache.
        let added = self
            .scheduler
            .add_computing_from(job.id, job.tokens.clone(), 0);
        if let Err(e) = added {
            let _ = job.reply.send(Err(admit_error(e)));
            return;
        }
        let rows = vec![None; job.tokens.len()];
        self.embedding.insert(job.id, EmbeddingRows { job, rows });
    }

    /// Queues a scored sequence, or answers it at once when it can never run.
    fn accept_scoring(&mut self, job: ScoreJob) {
        let added = self
            .scheduler
            .add_computing_from(job.id, job.tokens.clone(), job.from - 1);
        if let Err(e) = added {
            let _ = job.reply.send(Err(admit_error(e)));
            return;
        }
        let logprobs = vec![0.0; job.tokens.len() - job.from];
        self.scoring.insert(job.id, Scoring { job, logprobs });
    }

    /// Queues a new request, or answers it at once when it can never run.
    fn accept(&mut self, job: Job) {
        if job.cancelled.load(Ordering::Relaxed) {
            let nothing = Active {
                job,
                generated: 0,
                first_token: None,
            };
            let stats = nothing.stats(FinishReason::Stopped);
            let _ = nothing.job.events.send(Event::Done(Ok(stats)));
            return;
        }
        if let Err(e) = self.scheduler.add(job.id, job.prompt.clone()) {
            let _ = job.events.send(Event::Done(Err(admit_error(e))));
            return;
        }
        self.active.insert(
            job.id,
            Active {
                job,
                generated: 0,
                first_token: None,
            },
        );
    }

    /// Removes the sequences whose clients stopped listening.
    fn drop_cancelled(&mut self) {
        let gone: Vec<SeqId> = self
            .active
            .iter()
            .filter(|(_, a)| a.job.cancelled.load(Ordering::Relaxed))
            .map(|(&id, _)| id)
            .collect();
        for id in gone {
            self.finish(id, FinishReason::Stopped);
        }
    }

    /// Ends `id`: its blocks are released and its request gets its statistics (a scored
    /// sequence its log-probabilities, or RESOURCE_EXHAUSTED when it ran out of blocks).
    fn finish(&mut self, id: SeqId, reason: FinishReason) {
        self.scheduler.remove(id);
        // A prefill-only sequence ends with its result, or without one when it ran out of
        // blocks (Length).
        let fits = |tokens: usize| {
            (reason != FinishReason::Length).then_some(()).ok_or_else(|| {
                EngineError::ResourceExhausted(format!(
                    "an input of {tokens} tokens does not fit in the KV cache; raise kv_cache_memory or shorten it"
                ))
            })
        };
        if let Some(embedding) = self.embedding.remove(&id) {
            self.publish();
            let result = fits(embedding.job.tokens.len()).and_then(|()| embedding.pooled());
            let _ = embedding.job.reply.send(result);
            return;
        }
        if let Some(scoring) = self.scoring.remove(&id) {
            self.publish();
            let result = fits(scoring.job.tokens.len()).map(|()| scoring.logprobs);
            let _ = scoring.job.reply.send(result);
            return;
        }
        // Published before the request hears it ended, so a Status it sends next sees the
        // blocks back.
        self.publish();
        if let Some(active) = self.active.remove(&id) {
            let _ = active
                .job
                .events
                .send(Event::Done(Ok(active.stats(reason))));
        }
    }

    /// Runs one forward pass and samples; a failure ends every request (their blocks may
    /// hold keys and values that were never written) and leaves the model serving.
    fn run_step(&mut self, step: &Step) {
        let items: Vec<BatchItem<'_>> = step
            .seqs
            .iter()
            .map(|q| BatchItem {
                tokens: &q.tokens,
                start: q.start,
                block_table: &q.block_table,
                logits: self.logit_rows(q),
                hidden: self.embedding.contains_key(&q.id),
            })
            .collect();
        let sampled: Vec<SeqId> = step
            .seqs
            .iter()
            .filter(|q| {
                q.sample && !self.scoring.contains_key(&q.id) && !self.embedding.contains_key(&q.id)
            })
            .map(|q| q.id)
            .collect();
        let (model, kv, active) = (&self.model, &self.kv, &mut self.active);
        let mut constrained: Vec<(SeqId, &mut SequenceGrammar)> = active
            .iter_mut()
            .filter(|(id, _)| sampled.contains(id))
            .filter_map(|(&id, a)| {
                a.job
                    .grammar
                    .as_mut()
                    .filter(|g| g.is_active())
                    .map(|g| (id, g))
            })
            .collect();
        let (outcome, masks) = if constrained.is_empty() {
            let outcome = catch_unwind(AssertUnwindSafe(|| model.forward_all(kv, &items)));
            (outcome, HashMap::new())
        } else {
            std::thread::scope(|scope| {
                let masks = scope.spawn(move || {
                    constrained
                        .iter_mut()
                        .filter_map(|(id, g)| Some((*id, g.mask()?)))
                        .collect::<HashMap<_, _>>()
                });
                let outcome = catch_unwind(AssertUnwindSafe(|| model.forward_all(kv, &items)));
                let masks = masks.join().unwrap_or_else(|_| {
                    // llguidance panicked: every constrained sequence of this step fails.
                    HashMap::new()
                });
                (outcome, masks)
            })
        };
        let error = match outcome {
            Ok(Ok(output)) => match self
                .sample(step, output.logits, masks)
                .and_then(|()| self.take_hidden(step, output.hidden))
            {
                Ok(()) => return,
                Err(e) => e.to_string(),
            },
            Ok(Err(e)) => e.to_string(),
            Err(panic) => format!(
                "the forward pass panicked: {}",
                panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("(no message)")
            ),
        };
        tracing::error!(%error, "engine step failed; its requests end with INTERNAL");
        self.scheduler.reset();
        self.publish();
        for (_, active) in self.active.drain() {
            let _ = active
                .job
                .events
                .send(Event::Done(Err(EngineError::Internal(error.clone()))));
        }
        for (_, scoring) in self.scoring.drain() {
            let _ = scoring
                .job
                .reply
                .send(Err(EngineError::Internal(error.clone())));
        }
        for (_, embedding) in self.embedding.drain() {
            let _ = embedding
                .job
                .reply
                .send(Err(EngineError::Internal(error.clone())));
        }
    }

    /// Keeps the hidden states of this step's embedding rows by position, and answers each
    /// embedding whose prefill this step finished.
    fn take_hidden(
        &mut self,
        step: &Step,
        hidden: Option<candle_core::Tensor>,
    ) -> candle_core::Result<()> {
        let Some(hidden) = hidden else {
            return Ok(());
        };
        let mut next_row = 0;
        for q in &step.seqs {
            let Some(embedding) = self.embedding.get_mut(&q.id) else {
                continue;
            };
            for (k, row) in (next_row..next_row + q.tokens.len()).enumerate() {
                embedding.rows[q.start + k] = Some(hidden.get(row)?.to_vec1()?);
            }
            next_row += q.tokens.len();
            if q.sample {
                self.finish(q.id, FinishReason::Eos);
            }
        }
        Ok(())
    }

    /// Rows of `q`'s tokens whose logits this step needs: the last of a sequence that
    /// samples, every scoring row of a scored one, none of an embedding.
    fn logit_rows(&self, q: &ScheduledSeq) -> std::ops::Range<usize> {
        let n = q.tokens.len();
        match self.scoring.get(&q.id) {
            Some(scoring) => scoring.rows(q.start, n),
            None if self.embedding.contains_key(&q.id) => 0..0,
            None if q.sample => n - 1..n,
            None => 0..0,
        }
    }

    /// Samples the next token of every sequence that asked for one and hands it on.
    fn sample(
        &mut self,
        step: &Step,
        logits: Option<candle_core::Tensor>,
        mut masks: HashMap<SeqId, Result<SimpleVob, String>>,
    ) -> candle_core::Result<()> {
        let Some(logits) = logits else {
            return Ok(());
        };
        let mut next_row = 0;
        for q in &step.seqs {
            let rows = self.logit_rows(q);
            let row = next_row;
            next_row += rows.len();
            if let Some(scoring) = self.scoring.get_mut(&q.id) {
                for (k, r) in rows.enumerate() {
                    let values: Vec<f32> = logits.get(row + k)?.to_vec1()?;
                    // Row `r` is position `start + r`; it scores the token after it.
                    let next = q.start + r + 1;
                    let token = scoring.job.tokens[next] as usize;
                    scoring.logprobs[next - scoring.job.from] =
                        backend_common::logprobs::from_logits(&values, token, 0).0;
                }
                if q.sample {
                    self.finish(q.id, FinishReason::Eos);
                }
                continue;
            }
            if rows.is_empty() {
                continue;
            }
            let mut values: Vec<f32> = logits.get(row)?.to_vec1()?;
            let mask = match masks.remove(&q.id) {
                Some(Ok(mask)) => Some(mask),
                Some(Err(e)) => {
                    self.fail(q.id, GrammarStop::Stuck(e));
                    continue;
                }
                None if self.awaits_mask(q.id) => {
                    self.fail(q.id, GrammarStop::Stuck("llguidance failed".into()));
                    continue;
                }
                None => None,
            };
            match self.next_token(q.id, &mut values, mask.as_ref()) {
                Some(Ok(token)) => self.scheduler.append(q.id, token),
                Some(Err(Ending::Finished(reason))) => self.finish(q.id, reason),
                Some(Err(Ending::Grammar(stop))) => self.fail(q.id, stop),
                None => {}
            }
        }
        Ok(())
    }

    /// Whether `id` is constrained right now, so its step must have computed a mask.
    fn awaits_mask(&self, id: SeqId) -> bool {
        self.active
            .get(&id)
            .and_then(|a| a.job.grammar.as_ref())
            .is_some_and(SequenceGrammar::is_active)
    }

    /// Ends `id` because of its grammar: a complete grammar ends it as an end-of-generation
    /// token would; a stuck one is an error the request reports.
    fn fail(&mut self, id: SeqId, stop: GrammarStop) {
        if stop == GrammarStop::Complete {
            self.finish(id, FinishReason::Eos);
            return;
        }
        self.scheduler.remove(id);
        self.publish();
        if let Some(active) = self.active.remove(&id) {
            tracing::warn!(%stop, "a constrained sequence ends");
            let _ = active
                .job
                .events
                .send(Event::Done(Err(EngineError::Internal(stop.to_string()))));
        }
    }

    /// Samples `id`'s next token from its logits and sends it: the token to append, or why
    /// the sequence ends (`None` for a sequence no longer active).
    fn next_token(
        &mut self,
        id: SeqId,
        logits: &mut [f32],
        mask: Option<&SimpleVob>,
    ) -> Option<Result<u32, Ending>> {
        let max_len = self.model.max_positions();
        let tokenizer = &self.tokenizer;
        let active = self.active.get_mut(&id)?;
        let raw = active.job.logprobs.map(|top| (logits.to_vec(), top));
        if let Some(mask) = mask {
            apply_mask(mask, logits);
        }
        let token = active.job.sampler.sample(logits);
        if let Some(grammar) = active.job.grammar.as_mut() {
            if mask.is_some_and(|m| !m.is_allowed(token)) {
                // Nothing allowed was left to sample (the grammar allows only an end, and
                // the request ignores EOS), or the grammar allows nothing.
                return Some(Err(Ending::Grammar(grammar.stop_reason())));
            }
            if !tokenizer.is_eog(token)
                && let Err(stop) = grammar.accept(token, tokenizer.piece(token))
            {
                return Some(Err(Ending::Grammar(stop)));
            }
        }
        active.first_token.get_or_insert_with(Instant::now);
        active.generated += 1;
        if tokenizer.is_eog(token) && !active.job.ignore_eos {
            return Some(Err(Ending::Finished(FinishReason::Eos)));
        }
        let logprob = raw
            .map(|(raw, top)| token_logprob(&raw, token, top, |id| tokenizer.piece(id).to_vec()));
        let sent = active.job.events.send(Event::Token(GeneratedToken {
            id: token as i32,
            piece: tokenizer.piece(token).to_vec(),
            special: tokenizer.is_control(token),
            logprob,
        }));
        // The next forward pass would compute position `len - 1`.
        let len = active.job.prompt.len() + active.generated as usize;
        Some(if sent.is_err() {
            Err(Ending::Finished(FinishReason::Stopped))
        } else if active
            .job
            .max_tokens
            .is_some_and(|max| active.generated >= max)
            || len > max_len
        {
            Err(Ending::Finished(FinishReason::Length))
        } else {
            Ok(token)
        })
    }

    fn publish(&self) {
        *self.stats.lock().unwrap_or_else(|e| e.into_inner()) = self.scheduler.stats();
    }
}

/// The status of a sequence the scheduler cannot take.
fn admit_error(e: AdmitError) -> EngineError {
    match e {
        AdmitError::ExceedsKvCache { .. } => EngineError::ResourceExhausted(e.to_string()),
        AdmitError::Duplicate(_) => EngineError::Internal(e.to_string()),
        AdmitError::EmptyPrompt | AdmitError::PromptTooLong { .. } => {
            EngineError::InvalidArgument(e.to_string())
        }
    }
}
