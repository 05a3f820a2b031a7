//! Paged KV cache: a pool of fixed-size blocks with automatic prefix caching.
//!
//! vLLM V1 stores KV in 16-token blocks (`vllm/config/cache.py`) handed out from a free pool
//! (`vllm/v1/core/block_pool.py`). With prefix caching (on by default in V1), a full block of
//! prompt tokens is identified by a hash chained over all tokens before it; a later request
//! whose prompt starts with the same tokens (a tenant's system prompt, the other choices of an
//! `n > 1` request) reuses the block instead of recomputing it. Blocks nobody references stay
//! cached but count as free, and are evicted least-recently-used when the pool runs dry.
//!
//! The simulator does not track token ids; callers pass the chain hashes of a prompt's full
//! blocks (see [`block_hashes`]). This pool only counts blocks: it knows how many are free, which
//! hashes are cached and who holds them.

use std::collections::{BTreeSet, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};

#[derive(Debug, Clone, Copy)]
struct Entry {
    refs: u32,
    last_used: u64,
}

/// The block pool of one engine.
#[derive(Debug, Clone)]
pub struct KvCache {
    block_size: u32,
    total: u32,
    /// Blocks holding nothing.
    free: u32,
    cached: HashMap<u64, Entry>,
    /// Cached blocks with no holder, oldest first: (last_used, hash).
    idle: BTreeSet<(u64, u64)>,
    tick: u64,
}

impl KvCache {
    pub fn new(total_blocks: u32, block_size: u32) -> Self {
        Self {
            block_size,
            total: total_blocks,
            free: total_blocks,
            cached: HashMap::new(),
            idle: BTreeSet::new(),
            tick: 0,
        }
    }

    pub fn block_size(&self) -> u32 {
        self.block_size
    }

    pub fn total_blocks(&self) -> u32 {
        self.total
    }

    /// Blocks that can be handed out now (free + evictable cached).
    pub fn available(&self) -> u32 {
        self.free + self.idle.len() as u32
    }

    /// Fraction of blocks in use (vLLM's `kv_cache_usage_perc`: idle cached blocks count as free).
    pub fn usage(&self) -> f64 {
        if self.total == 0 {
            return 0.0;
        }
        f64::from(self.total - self.available()) / f64::from(self.total)
    }

    /// Blocks needed to hold `tokens`.
    pub fn blocks_for(&self, tokens: u32) -> u32 {
        tokens.div_ceil(self.block_size)
    }

    /// How many leading hashes of `hashes` are cached.
    pub fn lookup(&self, hashes: &[u64]) -> usize {
        hashes
            .iter()
            .take_while(|h| self.cached.contains_key(h))
            .count()
    }

    /// Takes a reference to each of `hashes` (all must be cached, see [`KvCache::lookup`]).
    pub fn acquire(&mut self, hashes: &[u64]) {
        self.tick += 1;
        for h in hashes {
            if let Some(e) = self.cached.get_mut(h) {
                if e.refs == 0 {
                    self.idle.remove(&(e.last_used, *h));
                }
                e.refs += 1;
                e.last_used = self.tick;
            }
        }
    }

    /// Takes `n` private blocks, evicting idle cached blocks if needed; false (and no change)
    /// when fewer than `n` are available.
    pub fn allocate(&mut self, n: u32) -> bool {
        if n > self.available() {
            return false;
        }
        while self.free < n {
            let Some(&(t, h)) = self.idle.iter().next() else {
                return false;
            };
            self.idle.remove(&(t, h));
            self.cached.remove(&h);
            self.free += 1;
        }
        self.free -= n;
        true
    }

    /// Returns `n` private blocks to the pool.
    pub fn release(&mut self, n: u32) {
        self.free = (self.free + n).min(self.total);
    }

    /// Drops one reference to each of `hashes`; unreferenced blocks stay cached as idle.
    pub fn release_shared(&mut self, hashes: &[u64]) {
        self.tick += 1;
        for h in hashes {
            if let Some(e) = self.cached.get_mut(h) {
                e.refs = e.refs.saturating_sub(1);
                e.last_used = self.tick;
                if e.refs == 0 {
                    self.idle.insert((self.tick, *h));
                }
            }
        }
    }

    /// Turns one private block, now full of computed prompt tokens, into the cached block
    /// `hash` (held by the caller). If another sequence cached the same block meanwhile, the
    /// private copy is freed and the cached one shared.
    pub fn promote(&mut self, hash: u64) {
        self.tick += 1;
        match self.cached.get_mut(&hash) {
            Some(e) => {
                if e.refs == 0 {
                    self.idle.remove(&(e.last_used, hash));
                }
                e.refs += 1;
                e.last_used = self.tick;
                self.free = (self.free + 1).min(self.total);
            }
            None => {
                self.cached.insert(
                    hash,
                    Entry {
                        refs: 1,
                        last_used: self.tick,
                    },
                );
            }
        }
    }
}

/// One piece of a prompt whose tokens the simulator does not materialise: content identity
/// (any hash of the text and whatever else changes the KV, such as the LoRA adapter) and length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PromptSegment {
    pub id: u64,
    pub tokens: u32,
}

/// Chain hashes of the full blocks of a prompt made of `segments`: block `i`'s hash covers every
/// segment that starts before the block ends, so two prompts share block `i` exactly when they
/// agree on all tokens up to its end.
pub fn block_hashes(segments: &[PromptSegment], block_size: u32) -> Vec<u64> {
    let total: u32 = segments.iter().map(|s| s.tokens).sum();
    let full = total / block_size.max(1);
    let mut out = Vec::with_capacity(full as usize);
    let mut chain = DefaultHasher::new();
    let mut seg_iter = segments.iter().peekable();
    let mut seg_start = 0u32;
    for i in 0..full {
        let end = (i + 1) * block_size;
        while let Some(s) = seg_iter.peek() {
            if seg_start < end {
                s.hash(&mut chain);
                seg_start += s.tokens;
                seg_iter.next();
            } else {
                break;
            }
        }
        let mut h = DefaultHasher::new();
        chain.finish().hash(&mut h);
        end.hash(&mut h);
        out.push(h.finish());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocation_evicts_idle_cached_blocks_lru() {
        let mut kv = KvCache::new(4, 16);
        assert!(kv.allocate(2));
        kv.promote(1);
        kv.promote(2);
        kv.release_shared(&[1]);
        kv.release_shared(&[2]);
        assert_eq!(kv.available(), 4);
        assert_eq!(kv.usage(), 0.0);
        assert!(kv.allocate(3));
        // Block 1 was idle longest and was evicted; 2 survives.
        assert_eq!(kv.lookup(&[1]), 0);
        assert_eq!(kv.lookup(&[2]), 1);
        assert!(!kv.allocate(2));
    }

    #[test]
    fn shared_prefixes_share_blocks_until_they_diverge() {
        let sys = PromptSegment { id: 7, tokens: 40 };
        let a = block_hashes(&[sys, PromptSegment { id: 1, tokens: 30 }], 16);
        let b = block_hashes(&[sys, PromptSegment { id: 2, tokens: 30 }], 16);
        assert_eq!(a.len(), 4);
        // Blocks 0 and 1 (tokens 0..32) lie inside the shared 40-token segment.
        assert_eq!(a[..2], b[..2]);
        assert_ne!(a[2], b[2]);
    }
}
