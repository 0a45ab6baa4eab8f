//! The KV cache as a pool of fixed-size blocks, with vLLM's automatic prefix caching.
//!
//! A block holds the keys and values of `block_size` consecutive positions of one sequence.
//! A block that is full can be registered under a [`BlockHash`] of its tokens and of the
//! blocks before it; a later sequence that starts with the same tokens finds the block and
//! shares it (its reference count grows) instead of computing those positions again.
//!
//! A block nobody references is free. Free blocks that hold nothing cached are handed out
//! first; cached ones stay findable until the pool needs them back, and are then evicted
//! least recently freed first (and, of one sequence's blocks, its last block first: the
//! deeper a block, the less likely another prompt shares it).
use std::collections::{BTreeMap, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};

/// Index of a block in the pool (and of its storage in the engine's KV tensors).
pub type BlockId = u32;

/// Identity of a full block: its tokens and, through its parent's hash, every token before.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlockHash(u64);

impl BlockHash {
    /// The hash of a block holding `tokens` after the block hashed `parent` (none for the
    /// first block of a sequence).
    pub fn of(parent: Option<BlockHash>, tokens: &[u32]) -> Self {
        // SipHash with fixed keys: the same tokens give the same hash in every process.
        let mut h = DefaultHasher::new();
        parent.map(|p| p.0).hash(&mut h);
        tokens.hash(&mut h);
        BlockHash(h.finish())
    }
}

/// What a cached block holds, kept to verify a hash match (a 64-bit collision must not
/// hand one prompt another prompt's keys).
#[derive(Debug)]
struct Content {
    hash: BlockHash,
    parent: Option<BlockHash>,
    tokens: Box<[u32]>,
}

#[derive(Debug, Default)]
struct Block {
    refs: u32,
    cached: Option<Content>,
    /// Its key in `evictable` while it is free and cached.
    freed_at: Option<u64>,
}

/// Fixed-size KV blocks, reference-counted, with a prefix cache over the full ones.
#[derive(Debug)]
pub struct BlockPool {
    blocks: Vec<Block>,
    /// Free blocks holding nothing cached; popped from the end, lowest id first.
    empty: Vec<BlockId>,
    /// Free blocks still cached, by the order they were freed (lowest evicted first).
    evictable: BTreeMap<u64, BlockId>,
    clock: u64,
    by_hash: HashMap<BlockHash, BlockId>,
    caching: bool,
}

impl BlockPool {
    /// A pool of `blocks` free blocks; with `caching` off, nothing is ever registered.
    pub fn new(blocks: usize, caching: bool) -> Self {
        let count = u32::try_from(blocks).unwrap_or(u32::MAX);
        BlockPool {
            blocks: (0..count).map(|_| Block::default()).collect(),
            empty: (0..count).rev().collect(),
            evictable: BTreeMap::new(),
            clock: 0,
            by_hash: HashMap::new(),
            caching,
        }
    }

    /// Blocks in the pool.
    pub fn total(&self) -> usize {
        self.blocks.len()
    }

    /// Blocks that [`allocate`](Self::allocate) can hand out now (cached free ones included).
    pub fn free(&self) -> usize {
        self.empty.len() + self.evictable.len()
    }

    /// Blocks referenced by some sequence.
    pub fn used(&self) -> usize {
        self.total() - self.free()
    }

    /// Full blocks findable by their hash (in use or free).
    pub fn cached(&self) -> usize {
        self.by_hash.len()
    }

    /// Whether full blocks are registered and looked up.
    pub fn caching(&self) -> bool {
        self.caching
    }

    /// A free block, referenced once, evicting the least recently freed cached block when
    /// no empty one is left; `None` when every block is in use.
    pub fn allocate(&mut self) -> Option<BlockId> {
        let id = match self.empty.pop() {
            Some(id) => id,
            None => {
                let (_, id) = self.evictable.pop_first()?;
                let block = &mut self.blocks[id as usize];
                block.freed_at = None;
                if let Some(content) = block.cached.take() {
                    self.by_hash.remove(&content.hash);
                }
                id
            }
        };
        self.blocks[id as usize].refs = 1;
        Some(id)
    }

    /// The cached block holding `tokens` after the block hashed `parent`, if any.
    pub fn lookup(&self, parent: Option<BlockHash>, tokens: &[u32]) -> Option<BlockId> {
        if !self.caching {
            return None;
        }
        let id = *self.by_hash.get(&BlockHash::of(parent, tokens))?;
        let content = self.blocks[id as usize].cached.as_ref()?;
        (content.parent == parent && *content.tokens == *tokens).then_some(id)
    }

    /// Whether taking `id` by [`share`](Self::share) would take a block out of the free ones.
    pub fn is_free(&self, id: BlockId) -> bool {
        self.blocks[id as usize].refs == 0
    }

    /// One more reference to a cached block found by [`lookup`](Self::lookup).
    pub fn share(&mut self, id: BlockId) {
        let block = &mut self.blocks[id as usize];
        if let Some(key) = block.freed_at.take() {
            self.evictable.remove(&key);
        }
        block.refs += 1;
    }

    /// Registers the full block `id` as holding `tokens` after the block hashed `parent`,
    /// and returns its hash. A block with the same content already cached stays the one
    /// found; `id` is then simply not cached.
    pub fn register(
        &mut self,
        id: BlockId,
        parent: Option<BlockHash>,
        tokens: &[u32],
    ) -> BlockHash {
        let hash = BlockHash::of(parent, tokens);
        if !self.caching || self.by_hash.contains_key(&hash) {
            return hash;
        }
        self.by_hash.insert(hash, id);
        self.blocks[id as usize].cached = Some(Content {
            hash,
            parent,
            tokens: tokens.into(),
        });
        hash
    }

    /// Drops one reference to each of a sequence's `blocks` (its block table, in order).
    pub fn release(&mut self, blocks: &[BlockId]) {
        // The last block is freed first, so it is evicted first.
        for &id in blocks.iter().rev() {
            let block = &mut self.blocks[id as usize];
            debug_assert!(block.refs > 0, "block {id} released more often than taken");
            block.refs = block.refs.saturating_sub(1);
            if block.refs > 0 {
                continue;
            }
            if block.cached.is_some() {
                self.clock += 1;
                block.freed_at = Some(self.clock);
                self.evictable.insert(self.clock, id);
            } else {
                self.empty.push(id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_every_block_once_then_none() {
        let mut pool = BlockPool::new(3, true);
        let got: Vec<_> = (0..3).map(|_| pool.allocate().unwrap()).collect();
        assert_eq!(got, [0, 1, 2]);
        assert_eq!((pool.free(), pool.used()), (0, 3));
        assert_eq!(pool.allocate(), None);
        pool.release(&got);
        assert_eq!((pool.free(), pool.used()), (3, 0));
    }

    #[test]
    fn a_registered_block_is_found_by_content_and_shared() {
        let mut pool = BlockPool::new(4, true);
        let a = pool.allocate().unwrap();
        let h = pool.register(a, None, &[1, 2]);
        assert_eq!(pool.lookup(None, &[1, 2]), Some(a));
        assert_eq!(pool.lookup(None, &[1, 3]), None);
        // The same tokens after another parent are another block.
        assert_eq!(pool.lookup(Some(h), &[1, 2]), None);
        pool.share(a);
        pool.release(&[a]);
        assert_eq!(pool.used(), 1, "still referenced once");
        pool.release(&[a]);
        assert_eq!(pool.used(), 0);
        // Free but cached: still found, and sharing takes it out of the free ones.
        assert_eq!(pool.lookup(None, &[1, 2]), Some(a));
        assert!(pool.is_free(a));
        pool.share(a);
        assert_eq!((pool.used(), pool.free()), (1, 3));
    }

    #[test]
    fn empty_blocks_go_before_cached_ones_and_eviction_is_lru() {
        let mut pool = BlockPool::new(3, true);
        let first: Vec<_> = (0..2).map(|_| pool.allocate().unwrap()).collect();
        let h0 = pool.register(first[0], None, &[1]);
        pool.register(first[1], Some(h0), &[2]);
        pool.release(&first);
        let other = pool.allocate().unwrap();
        assert_eq!(other, 2, "the never-cached block is handed out first");
        assert_eq!(pool.cached(), 2);
        pool.release(&[other]);
        pool.allocate().unwrap();
        // Now evict: the sequence's last block (freed first) goes before its first.
        let evicted = pool.allocate().unwrap();
        assert_eq!(evicted, first[1]);
        assert_eq!(pool.lookup(Some(h0), &[2]), None);
        assert_eq!(pool.lookup(None, &[1]), Some(first[0]));
        assert_eq!(pool.cached(), 1);
    }

    #[test]
    fn a_duplicate_registration_keeps_the_first_block() {
        let mut pool = BlockPool::new(2, true);
        let (a, b) = (pool.allocate().unwrap(), pool.allocate().unwrap());
        assert_eq!(pool.register(a, None, &[7]), pool.register(b, None, &[7]));
        assert_eq!(pool.lookup(None, &[7]), Some(a));
        pool.release(&[b]);
        assert_eq!(pool.cached(), 1);
        assert_eq!(
            pool.allocate(),
            Some(b),
            "an uncached duplicate is simply free"
        );
    }

    #[test]
    fn caching_off_registers_nothing() {
        let mut pool = BlockPool::new(1, false);
        let a = pool.allocate().unwrap();
        pool.register(a, None, &[1]);
        pool.release(&[a]);
        assert_eq!(pool.lookup(None, &[1]), None);
        assert_eq!(pool.cached(), 0);
    }
}
