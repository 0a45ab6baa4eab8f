//! Continuous batching as vLLM V1 schedules it.
//!
//! Each [`Scheduler::schedule`] call plans one forward pass. Running sequences go first, in
//! the order they were admitted: a decoding one gets its one new token, one still reading
//! its prompt gets as much of the rest as the step's token budget
//! (`max_num_batched_tokens`) leaves (chunked prefill, so a long prompt never stops the
//! streams already running). Then waiting sequences are admitted first come, first served
//! while the budget, the sequence cap (`max_num_seqs`) and the free blocks allow; a prompt
//! starting with cached full blocks skips them.
//!
//! When a running sequence needs a block and none is free, the most recently admitted
//! running sequence is preempted: its blocks are released (its full ones stay in the prefix
//! cache) and it goes back to the front of the waiting queue, to be recomputed from its
//! tokens (prompt and output so far) when room returns. Nothing is admitted in a step that
//! preempted. A sequence that alone needs more blocks than the pool holds is ended instead
//! ([`Step::out_of_blocks`]), so no sequence waits forever on memory that cannot exist.
use std::collections::{HashMap, VecDeque};

use crate::block_pool::{BlockHash, BlockId, BlockPool};

/// A sequence's identifier, chosen by the engine.
pub type SeqId = u64;

/// The scheduler's limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchedulerConfig {
    /// Positions per KV block.
    pub block_size: usize,
    /// Blocks in the KV cache.
    pub num_blocks: usize,
    /// Sequences running at once.
    pub max_num_seqs: usize,
    /// Tokens computed in one forward pass, all sequences together.
    pub max_num_batched_tokens: usize,
    /// Positions a sequence may hold (prompt and output).
    pub max_model_len: usize,
    /// Share full blocks between sequences with the same prefix.
    pub prefix_caching: bool,
}

/// Why a sequence cannot be added.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdmitError {
    /// Nothing to compute.
    #[error("the prompt is empty")]
    EmptyPrompt,
    /// Longer than a sequence may be.
    #[error("the prompt has {prompt} tokens, more than max_model_len {max_model_len}")]
    PromptTooLong {
        /// Prompt tokens.
        prompt: usize,
        /// Positions a sequence may hold.
        max_model_len: usize,
    },
    /// Its keys and values alone would not fit in the whole KV cache.
    #[error(
        "the prompt's {prompt} tokens need {needed} KV blocks of {block_size} positions but the whole KV cache holds {total} blocks ({capacity} positions); raise kv_cache_memory or shorten the prompt"
    )]
    ExceedsKvCache {
        /// Prompt tokens.
        prompt: usize,
        /// Blocks they need.
        needed: usize,
        /// Blocks in the pool.
        total: usize,
        /// Positions per block.
        block_size: usize,
        /// Positions the pool holds.
        capacity: usize,
    },
    /// The identifier is taken.
    #[error("sequence {0} is already scheduled")]
    Duplicate(SeqId),
}

/// One sequence's part of a forward pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduledSeq {
    /// Which sequence.
    pub id: SeqId,
    /// Position of the first token to compute; positions before it are in the KV cache.
    pub start: usize,
    /// Tokens to compute, at positions `start..start + tokens.len()`.
    pub tokens: Vec<u32>,
    /// The sequence's blocks: position `p` lives in block `block_table[p / block_size]`.
    pub block_table: Vec<BlockId>,
    /// Whether these tokens reach the end of the sequence, so its next token is sampled
    /// from the logits after the last one (otherwise they are a prefill chunk).
    pub sample: bool,
}

/// What one forward pass computes.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Step {
    /// Sequences and their new tokens, running ones first.
    pub seqs: Vec<ScheduledSeq>,
    /// Sequences sent back to waiting in this step (their KV will be recomputed).
    pub preempted: Vec<SeqId>,
    /// Sequences removed because their next token needs more blocks than the whole pool:
    /// the engine ends them as having reached their length.
    pub out_of_blocks: Vec<SeqId>,
}

impl Step {
    /// Tokens the forward pass computes.
    pub fn tokens(&self) -> usize {
        self.seqs.iter().map(|s| s.tokens.len()).sum()
    }
}

/// How the KV cache is used.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct KvStats {
    /// Blocks in the pool.
    pub blocks_total: usize,
    /// Blocks referenced by a sequence.
    pub blocks_used: usize,
    /// Full blocks findable in the prefix cache.
    pub blocks_cached: usize,
    /// Positions per block.
    pub block_size: usize,
    /// Prompt tokens looked up in the prefix cache.
    pub prefix_queried_tokens: u64,
    /// Of those, tokens found (their prefill skipped).
    pub prefix_hit_tokens: u64,
    /// Preemptions so far.
    pub preemptions: u64,
    /// Sequences running.
    pub running: usize,
    /// Sequences waiting.
    pub waiting: usize,
}

#[derive(Debug)]
struct Sequence {
    /// Prompt, then every sampled token.
    tokens: Vec<u32>,
    /// Leading tokens whose keys and values are in the cache (or computed this step).
    computed: usize,
    /// Block table.
    blocks: Vec<BlockId>,
    /// Leading blocks of `blocks` registered in (or taken from) the prefix cache.
    registered: usize,
    /// Hashes of the leading full blocks of `tokens` (content only: kept across preemption).
    hashes: Vec<BlockHash>,
    /// For a scored sequence, the first position that must be computed even when the prefix
    /// cache holds it (its logits are read); otherwise only the last token must be.
    scored_from: Option<usize>,
}

/// The waiting and running sequences and the KV blocks they hold.
#[derive(Debug)]
pub struct Scheduler {
    config: SchedulerConfig,
    pool: BlockPool,
    seqs: HashMap<SeqId, Sequence>,
    waiting: VecDeque<SeqId>,
    running: Vec<SeqId>,
    queried: u64,
    hits: u64,
    preemptions: u64,
}

impl Scheduler {
    /// An empty scheduler; limits of zero are raised to one.
    pub fn new(mut config: SchedulerConfig) -> Self {
        config.block_size = config.block_size.max(1);
        config.max_num_seqs = config.max_num_seqs.max(1);
        config.max_num_batched_tokens = config.max_num_batched_tokens.max(1);
        config.max_model_len = config.max_model_len.max(1);
        Scheduler {
            pool: BlockPool::new(config.num_blocks, config.prefix_caching),
            config,
            seqs: HashMap::new(),
            waiting: VecDeque::new(),
            running: Vec::new(),
            queried: 0,
            hits: 0,
            preemptions: 0,
        }
    }

    /// Queues a sequence with its prompt, or says why it can never run.
    pub fn add(&mut self, id: SeqId, prompt: Vec<u32>) -> Result<(), AdmitError> {
        self.insert(id, prompt, None)
    }

    /// Queues a sequence whose positions from `compute_from` on are all computed, none taken
    /// from the prefix cache (scoring reads the logits of each of them).
    pub fn add_computing_from(
        &mut self,
        id: SeqId,
        prompt: Vec<u32>,
        compute_from: usize,
    ) -> Result<(), AdmitError> {
        self.insert(id, prompt, Some(compute_from))
    }

    fn insert(
        &mut self,
        id: SeqId,
        prompt: Vec<u32>,
        scored_from: Option<usize>,
    ) -> Result<(), AdmitError> {
        if prompt.is_empty() {
            return Err(AdmitError::EmptyPrompt);
        }
        if prompt.len() > self.config.max_model_len {
            return Err(AdmitError::PromptTooLong {
                prompt: prompt.len(),
                max_model_len: self.config.max_model_len,
            });
        }
        let needed = self.blocks_for(prompt.len());
        if needed > self.pool.total() {
            return Err(AdmitError::ExceedsKvCache {
                prompt: prompt.len(),
                needed,
                total: self.pool.total(),
                block_size: self.config.block_size,
                capacity: self.pool.total() * self.config.block_size,
            });
        }
        if self.seqs.contains_key(&id) {
            return Err(AdmitError::Duplicate(id));
        }
        self.seqs.insert(
            id,
            Sequence {
                tokens: prompt,
                computed: 0,
                blocks: Vec::new(),
                registered: 0,
                hashes: Vec::new(),
                scored_from,
            },
        );
        self.waiting.push_back(id);
        Ok(())
    }

    /// Appends the token sampled for `id` after a step that asked for it.
    pub fn append(&mut self, id: SeqId, token: u32) {
        if let Some(seq) = self.seqs.get_mut(&id) {
            seq.tokens.push(token);
        }
    }

    /// Removes a finished or cancelled sequence and releases its blocks; false if unknown.
    pub fn remove(&mut self, id: SeqId) -> bool {
        let Some(seq) = self.seqs.remove(&id) else {
            return false;
        };
        self.pool.release(&seq.blocks);
        self.running.retain(|&r| r != id);
        self.waiting.retain(|&w| w != id);
        true
    }

    /// Drops every sequence and every cached block (after a failed forward pass, whose
    /// blocks may hold keys and values that were never written).
    pub fn reset(&mut self) -> Vec<SeqId> {
        let ids: Vec<SeqId> = self
            .running
            .drain(..)
            .chain(self.waiting.drain(..))
            .collect();
        self.seqs.clear();
        self.pool = BlockPool::new(self.config.num_blocks, self.config.prefix_caching);
        ids
    }

    /// Whether any sequence is waiting or running.
    pub fn has_work(&self) -> bool {
        !self.seqs.is_empty()
    }

    /// How the KV cache is used now.
    pub fn stats(&self) -> KvStats {
        KvStats {
            blocks_total: self.pool.total(),
            blocks_used: self.pool.used(),
            blocks_cached: self.pool.cached(),
            block_size: self.config.block_size,
            prefix_queried_tokens: self.queried,
            prefix_hit_tokens: self.hits,
            preemptions: self.preemptions,
            running: self.running.len(),
            waiting: self.waiting.len(),
        }
    }

    /// Plans the next forward pass.
    pub fn schedule(&mut self) -> Step {
        let mut step = Step::default();
        let mut budget = self.config.max_num_batched_tokens;
        let mut i = 0;
        while i < self.running.len() && budget > 0 {
            let id = self.running[i];
            let seq = &self.seqs[&id];
            let want = (seq.tokens.len() - seq.computed).min(budget);
            if want == 0 {
                i += 1;
                continue;
            }
            let needed = self.blocks_for(seq.computed + want);
            if needed > self.pool.total() {
                self.remove(id);
                step.out_of_blocks.push(id);
                continue;
            }
            let mut preempted_self = false;
            while self.pool.free() < needed - self.seqs[&id].blocks.len() {
                let Some(&victim) = self.running.last() else {
                    break;
                };
                self.preempt(victim);
                step.preempted.push(victim);
                if victim == id {
                    preempted_self = true;
                    break;
                }
            }
            if preempted_self {
                break;
            }
            self.grow(id, needed);
            step.seqs.push(self.take(id, want));
            budget -= want;
            i += 1;
        }
        if step.preempted.is_empty() {
            while budget > 0 && self.running.len() < self.config.max_num_seqs {
                let Some(&id) = self.waiting.front() else {
                    break;
                };
                let Some(want) = self.admit(id, budget) else {
                    break;
                };
                self.waiting.pop_front();
                self.running.push(id);
                step.seqs.push(self.take(id, want));
                budget -= want;
            }
        }
        step
    }

    fn blocks_for(&self, positions: usize) -> usize {
        positions.div_ceil(self.config.block_size)
    }

    /// Releases the blocks of running `id` (the last running) and queues it first.
    fn preempt(&mut self, id: SeqId) {
        self.running.retain(|&r| r != id);
        if let Some(seq) = self.seqs.get_mut(&id) {
            self.pool.release(&seq.blocks);
            seq.blocks.clear();
            seq.computed = 0;
            seq.registered = 0;
        }
        self.waiting.push_front(id);
        self.preemptions += 1;
    }

    /// Allocates blocks until `id` has `needed`; the caller checked they are free.
    fn grow(&mut self, id: SeqId, needed: usize) {
        let seq = self.seqs.get_mut(&id).expect("scheduled sequence exists");
        while seq.blocks.len() < needed {
            let block = self.pool.allocate().expect("free blocks were counted");
            seq.blocks.push(block);
        }
    }

    /// Takes waiting `id` into the running set with its cached prefix and up to `budget`
    /// tokens; returns the tokens to compute, or `None` when its blocks are not free.
    fn admit(&mut self, id: SeqId, budget: usize) -> Option<usize> {
        let bs = self.config.block_size;
        let seq = &self.seqs[&id];
        // At least the last token is computed, for the logits it gives (a scored sequence:
        // every position from its first scored one).
        let must_compute = seq.scored_from.unwrap_or(usize::MAX);
        let lookable = must_compute.min(seq.tokens.len() - 1) / bs;
        let mut hits = Vec::new();
        let mut hashes = Vec::new();
        let mut parent = None;
        if self.pool.caching() {
            for chunk in seq.tokens.chunks_exact(bs).take(lookable) {
                let Some(block) = self.pool.lookup(parent, chunk) else {
                    break;
                };
                let hash = BlockHash::of(parent, chunk);
                hits.push(block);
                hashes.push(hash);
                parent = Some(hash);
            }
        }
        let computed = hits.len() * bs;
        let want = (seq.tokens.len() - computed).min(budget);
        let new_blocks = self.blocks_for(computed + want) - hits.len();
        let taken_free = hits.iter().filter(|&&b| self.pool.is_free(b)).count();
        if self.pool.free() < new_blocks + taken_free {
            return None;
        }
        if self.pool.caching() {
            self.queried += seq.tokens.len() as u64;
            self.hits += computed as u64;
        }
        for &block in &hits {
            self.pool.share(block);
        }
        let seq = self.seqs.get_mut(&id).expect("waiting sequence exists");
        if hashes.len() > seq.hashes.len() {
            seq.hashes = hashes;
        }
        seq.registered = hits.len();
        seq.blocks = hits;
        seq.computed = computed;
        self.grow(id, self.blocks_for(computed + want));
        Some(want)
    }

    /// Marks `want` more tokens of `id` computed in this step, registers the blocks they
    /// fill, and describes the work.
    fn take(&mut self, id: SeqId, want: usize) -> ScheduledSeq {
        let bs = self.config.block_size;
        let seq = self.seqs.get_mut(&id).expect("scheduled sequence exists");
        let start = seq.computed;
        seq.computed += want;
        if self.pool.caching() {
            let full = (seq.computed / bs).min(seq.blocks.len());
            while seq.registered < full {
                let b = seq.registered;
                let parent = b.checked_sub(1).map(|p| seq.hashes[p]);
                let hash =
                    self.pool
                        .register(seq.blocks[b], parent, &seq.tokens[b * bs..(b + 1) * bs]);
                if seq.hashes.len() == b {
                    seq.hashes.push(hash);
                }
                seq.registered += 1;
            }
        }
        ScheduledSeq {
            id,
            start,
            tokens: seq.tokens[start..seq.computed].to_vec(),
            block_table: seq.blocks.clone(),
            sample: seq.computed == seq.tokens.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(num_blocks: usize) -> SchedulerConfig {
        SchedulerConfig {
            block_size: 4,
            num_blocks,
            max_num_seqs: 8,
            max_num_batched_tokens: 64,
            max_model_len: 1000,
            prefix_caching: true,
        }
    }

    fn prompt(seed: u32, len: usize) -> Vec<u32> {
        (0..len as u32).map(|i| seed * 1000 + i).collect()
    }

    /// Appends a token to every sequence the step sampled.
    fn sample_all(s: &mut Scheduler, step: &Step, token: u32) {
        for seq in step.seqs.iter().filter(|q| q.sample) {
            s.append(seq.id, token);
        }
    }

    #[test]
    fn refuses_what_can_never_run() {
        let mut s = Scheduler::new(SchedulerConfig {
            max_model_len: 10,
            ..config(2)
        });
        assert_eq!(s.add(1, vec![]), Err(AdmitError::EmptyPrompt));
        assert!(matches!(
            s.add(1, prompt(1, 11)),
            Err(AdmitError::PromptTooLong { prompt: 11, .. })
        ));
        let err = s.add(1, prompt(1, 9)).unwrap_err();
        assert!(matches!(
            err,
            AdmitError::ExceedsKvCache {
                needed: 3,
                total: 2,
                ..
            }
        ));
        assert!(err.to_string().contains("kv_cache_memory"), "{err}");
        s.add(1, prompt(1, 8)).unwrap();
        assert_eq!(s.add(1, prompt(1, 8)), Err(AdmitError::Duplicate(1)));
    }

    #[test]
    fn admits_first_come_first_served_up_to_the_sequence_cap() {
        let mut s = Scheduler::new(SchedulerConfig {
            max_num_seqs: 2,
            ..config(100)
        });
        for id in 1..=3 {
            s.add(id, prompt(id as u32, 5)).unwrap();
        }
        let step = s.schedule();
        let ids: Vec<_> = step.seqs.iter().map(|q| q.id).collect();
        assert_eq!(ids, [1, 2]);
        assert!(step.seqs.iter().all(|q| q.sample && q.start == 0));
        sample_all(&mut s, &step, 9);
        let step = s.schedule();
        assert_eq!(step.seqs.len(), 2, "the third waits for a free seat");
        assert!(step.seqs.iter().all(|q| q.tokens == [9] && q.start == 5));
        s.remove(1);
        sample_all(&mut s, &step, 9);
        let step = s.schedule();
        let ids: Vec<_> = step.seqs.iter().map(|q| q.id).collect();
        assert_eq!(ids, [2, 3]);
    }

    #[test]
    fn a_long_prompt_is_prefilled_in_chunks_beside_decoding_streams() {
        let mut s = Scheduler::new(SchedulerConfig {
            max_num_batched_tokens: 8,
            ..config(100)
        });
        s.add(1, prompt(1, 3)).unwrap();
        let step = s.schedule();
        sample_all(&mut s, &step, 7);
        s.add(2, prompt(2, 20)).unwrap();
        let mut chunks = Vec::new();
        loop {
            let step = s.schedule();
            assert!(step.tokens() <= 8);
            let decode = &step.seqs[0];
            assert_eq!(
                (decode.id, decode.tokens.len()),
                (1, 1),
                "the stream keeps flowing"
            );
            let Some(chunk) = step.seqs.iter().find(|q| q.id == 2) else {
                panic!("the long prompt is scheduled every step")
            };
            chunks.push((chunk.start, chunk.tokens.len(), chunk.sample));
            sample_all(&mut s, &step, 7);
            if chunk.sample {
                break;
            }
        }
        assert_eq!(chunks, [(0, 7, false), (7, 7, false), (14, 6, true)]);
    }

    #[test]
    fn out_of_blocks_preempts_the_latest_and_recomputes_it_later() {
        // 4 blocks of 4 positions; two sequences of 6 tokens take 2 blocks each.
        let mut s = Scheduler::new(config(4));
        s.add(1, prompt(1, 6)).unwrap();
        s.add(2, prompt(2, 6)).unwrap();
        let mut step = s.schedule();
        assert_eq!(step.seqs.len(), 2);
        // Both grow to 8 positions within their blocks; the 9th needs a third block each.
        for _ in 0..2 {
            sample_all(&mut s, &step, 5);
            step = s.schedule();
            assert!(step.preempted.is_empty());
        }
        sample_all(&mut s, &step, 5);
        let step = s.schedule();
        assert_eq!(step.preempted, [2]);
        assert_eq!(step.seqs.len(), 1);
        assert_eq!((step.seqs[0].id, step.seqs[0].start), (1, 8));
        assert_eq!(s.stats().waiting, 1);
        s.remove(1);
        let step = s.schedule();
        // Sequence 2 comes back with its prompt and its output. Sequence 1 took its last
        // block; its first one is still in the prefix cache, so 4 positions are reused.
        assert_eq!(step.seqs.len(), 1);
        let again = &step.seqs[0];
        assert_eq!(again.id, 2);
        assert_eq!(
            (again.start, again.tokens.len(), again.sample),
            (4, 5, true)
        );
        assert_eq!(s.stats().preemptions, 1);
    }

    #[test]
    fn without_the_prefix_cache_a_preempted_sequence_recomputes_everything() {
        let mut s = Scheduler::new(SchedulerConfig {
            prefix_caching: false,
            ..config(4)
        });
        s.add(1, prompt(1, 8)).unwrap();
        s.add(2, prompt(2, 8)).unwrap();
        let step = s.schedule();
        sample_all(&mut s, &step, 5);
        let step = s.schedule();
        assert_eq!(step.preempted, [2]);
        s.remove(1);
        let step = s.schedule();
        assert_eq!((step.seqs[0].start, step.seqs[0].tokens.len()), (0, 9));
    }

    #[test]
    fn a_sequence_too_long_for_the_whole_pool_is_ended_not_preempted_forever() {
        let mut s = Scheduler::new(config(2));
        s.add(1, prompt(1, 8)).unwrap();
        let step = s.schedule();
        sample_all(&mut s, &step, 5);
        let step = s.schedule();
        assert_eq!(step.out_of_blocks, [1]);
        assert!(step.seqs.is_empty() && step.preempted.is_empty());
        assert!(!s.has_work());
        assert_eq!(s.stats().blocks_used, 0);
    }

    #[test]
    fn a_shared_prefix_is_computed_once() {
        let mut s = Scheduler::new(config(100));
        let system = prompt(1, 10);
        let mut first = system.clone();
        first.extend([1, 2, 3]);
        s.add(1, first).unwrap();
        let step = s.schedule();
        let table_1 = step.seqs[0].block_table.clone();
        s.remove(1);
        assert_eq!(s.stats().blocks_used, 0);
        let mut second = system.clone();
        second.extend([4, 5]);
        s.add(2, second).unwrap();
        let step = s.schedule();
        let q = &step.seqs[0];
        // Two full blocks (8 tokens) of the system prompt are reused.
        assert_eq!((q.start, q.tokens.len()), (8, 4));
        assert_eq!(q.block_table[..2], table_1[..2]);
        let stats = s.stats();
        assert_eq!(
            (stats.prefix_queried_tokens, stats.prefix_hit_tokens),
            (25, 8)
        );
        // Running at the same time, the two share the blocks.
        let mut third = system.clone();
        third.push(6);
        s.add(3, third).unwrap();
        let step = s.schedule();
        let q = step.seqs.iter().find(|q| q.id == 3).unwrap();
        assert_eq!(q.start, 8);
        assert_eq!(q.block_table[..2], table_1[..2]);
    }

    #[test]
    fn a_prompt_cached_whole_still_computes_its_last_token() {
        let mut s = Scheduler::new(config(100));
        s.add(1, prompt(1, 8)).unwrap();
        let step = s.schedule();
        s.remove(step.seqs[0].id);
        s.add(2, prompt(1, 8)).unwrap();
        let step = s.schedule();
        // 8 tokens are two full blocks, but only the first can be reused.
        assert_eq!((step.seqs[0].start, step.seqs[0].tokens.len()), (4, 4));
        assert!(step.seqs[0].sample);
    }

    #[test]
    fn a_scored_sequence_computes_every_scored_position_despite_the_cache() {
        let mut s = Scheduler::new(config(100));
        s.add(1, prompt(1, 16)).unwrap();
        let step = s.schedule();
        s.remove(step.seqs[0].id);
        // Positions 0..=15 are cached in four blocks; scoring from position 9 must compute
        // 9 on, so only the two blocks before it (positions 0..8) are reused.
        s.add_computing_from(2, prompt(1, 16), 9).unwrap();
        let step = s.schedule();
        assert_eq!((step.seqs[0].start, step.seqs[0].tokens.len()), (8, 8));
        s.remove(2);
        // Scoring from the start reuses nothing.
        s.add_computing_from(3, prompt(1, 16), 0).unwrap();
        let step = s.schedule();
        assert_eq!((step.seqs[0].start, step.seqs[0].tokens.len()), (0, 16));
    }

    #[test]
    fn reset_forgets_sequences_and_cached_blocks() {
        let mut s = Scheduler::new(config(100));
        s.add(1, prompt(1, 8)).unwrap();
        s.add(2, prompt(2, 8)).unwrap();
        s.schedule();
        let mut dropped = s.reset();
        dropped.sort();
        assert_eq!(dropped, [1, 2]);
        let stats = s.stats();
        assert_eq!((stats.blocks_used, stats.blocks_cached), (0, 0));
        s.add(3, prompt(1, 8)).unwrap();
        assert_eq!(s.schedule().seqs[0].start, 0);
    }

    /// A small deterministic generator for the randomized check below.
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self, bound: u64) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 33) % bound
        }
    }

    /// Simulates a KV cache in which each computed position stores its token, and checks
    /// after every step that each scheduled sequence reads exactly its own tokens through
    /// its block table, under random arrivals, cancels, shared prefixes, chunking and
    /// preemption; and that everything finishes.
    #[test]
    fn every_sequence_always_reads_its_own_keys() {
        for (seed, caching) in [(1, true), (2, true), (3, false), (4, true)] {
            let mut rng = Lcg(seed);
            let cfg = SchedulerConfig {
                block_size: 4,
                num_blocks: 24,
                max_num_seqs: 5,
                max_num_batched_tokens: 16,
                max_model_len: 60,
                prefix_caching: caching,
            };
            let mut s = Scheduler::new(cfg.clone());
            let mut kv: HashMap<(BlockId, usize), u32> = HashMap::new();
            let mut expected: HashMap<SeqId, Vec<u32>> = HashMap::new();
            let mut targets: HashMap<SeqId, usize> = HashMap::new();
            let mut next_id = 0;
            let mut finished = 0;
            for round in 0..3000 {
                if round < 2000 && rng.next(3) == 0 {
                    next_id += 1;
                    // Prompts share one of three prefixes, then differ.
                    let family = rng.next(3) as u32;
                    let mut p: Vec<u32> =
                        (0..rng.next(20) as u32).map(|i| family * 100 + i).collect();
                    p.extend((0..1 + rng.next(12)).map(|_| 10_000 + rng.next(50) as u32));
                    let len = p.len();
                    s.add(next_id, p.clone()).unwrap();
                    expected.insert(next_id, p);
                    targets.insert(
                        next_id,
                        (len + 1 + rng.next(20) as usize).min(cfg.max_model_len),
                    );
                }
                if rng.next(40) == 0 && !expected.is_empty() {
                    let id = *expected
                        .keys()
                        .nth(rng.next(expected.len() as u64) as usize)
                        .unwrap();
                    assert!(s.remove(id));
                    expected.remove(&id);
                }
                let step = s.schedule();
                assert!(step.tokens() <= cfg.max_num_batched_tokens);
                assert!(s.stats().running <= cfg.max_num_seqs);
                for id in &step.out_of_blocks {
                    expected.remove(id);
                }
                // Write first (as the forward pass does for the whole batch), then read.
                for q in &step.seqs {
                    for (i, &t) in q.tokens.iter().enumerate() {
                        let p = q.start + i;
                        kv.insert((q.block_table[p / 4], p % 4), t);
                    }
                }
                for q in &step.seqs {
                    let own = &expected[&q.id];
                    assert_eq!(q.tokens[..], own[q.start..q.start + q.tokens.len()]);
                    for (p, want) in own.iter().enumerate().take(q.start + q.tokens.len()) {
                        assert_eq!(
                            kv.get(&(q.block_table[p / 4], p % 4)),
                            Some(want),
                            "seed {seed} round {round} seq {} pos {p}",
                            q.id
                        );
                    }
                }
                for q in step.seqs.iter().filter(|q| q.sample) {
                    let token = 20_000 + rng.next(50) as u32;
                    let own = expected.get_mut(&q.id).unwrap();
                    own.push(token);
                    if own.len() >= targets[&q.id] {
                        s.remove(q.id);
                        expected.remove(&q.id);
                        finished += 1;
                    } else {
                        s.append(q.id, token);
                    }
                }
            }
            assert!(
                expected.is_empty(),
                "seed {seed}: {} never finished",
                expected.len()
            );
            assert!(!s.has_work());
            assert_eq!(s.stats().blocks_used, 0);
            assert!(finished > 100, "seed {seed}: only {finished} finished");
            assert!(
                s.stats().preemptions > 0,
                "seed {seed}: the pool never ran out"
            );
            if caching {
                assert!(s.stats().prefix_hit_tokens > 0);
            }
        }
    }
}
