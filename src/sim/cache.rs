//! The sim's caches: a small weighted LRU keyed by 64-bit hashes, and the vLLM-style prefix cache
//! built on it.
//!
//! The prefix cache follows vLLM's automatic prefix caching: the prompt's token ids are cut into
//! `block_size` blocks, each full block is named by a hash chained with its predecessor's hash, and
//! a request's cached tokens are its leading blocks found in the cache × `block_size`. As in vLLM,
//! the last prompt token is always recomputed (its logits are needed), so a prompt that is an
//! exact multiple of the block size and fully cached reports one block less.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Hasher for keys that are already well-mixed 64-bit hashes: uses them as they are.
#[derive(Default)]
pub(crate) struct IdentityHasher(u64);

impl Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is expected; fold anything else in so it stays correct.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type IdentityMap<V> = HashMap<u64, V, BuildHasherDefault<IdentityHasher>>;

const NIL: u32 = u32::MAX;

struct Node<V> {
    key: u64,
    weight: u64,
    /// `None` once evicted (so an evicted value is freed at once, not when the slot is reused).
    value: Option<V>,
    prev: u32,
    next: u32,
}

/// A least-recently-used map from 64-bit hash keys to values, bounded by the total weight of its
/// entries (tokens, for both of the sim's uses). Nodes live in a slab linked by indices, so a hit
/// costs one hash lookup and a few index writes.
pub(crate) struct Lru<V> {
    map: IdentityMap<u32>,
    nodes: Vec<Node<V>>,
    free: Vec<u32>,
    /// Most recently used.
    head: u32,
    /// Least recently used.
    tail: u32,
    weight: u64,
    capacity: u64,
}

impl<V> Lru<V> {
    pub(crate) fn new(capacity: u64) -> Self {
        Lru {
            map: IdentityMap::default(),
            nodes: Vec::new(),
            free: Vec::new(),
            head: NIL,
            tail: NIL,
            weight: 0,
            capacity,
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// Total weight held.
    pub(crate) fn weight(&self) -> u64 {
        self.weight
    }

    fn unlink(&mut self, i: u32) {
        let (prev, next) = {
            let n = &self.nodes[i as usize];
            (n.prev, n.next)
        };
        if prev == NIL {
            self.head = next;
        } else {
            self.nodes[prev as usize].next = next;
        }
        if next == NIL {
            self.tail = prev;
        } else {
            self.nodes[next as usize].prev = prev;
        }
    }

    fn push_front(&mut self, i: u32) {
        let old = self.head;
        {
            let n = &mut self.nodes[i as usize];
            n.prev = NIL;
            n.next = old;
        }
        if old == NIL {
            self.tail = i;
        } else {
            self.nodes[old as usize].prev = i;
        }
        self.head = i;
    }

    /// The value for `key`, marking it most recently used.
    pub(crate) fn get(&mut self, key: u64) -> Option<&V> {
        let i = *self.map.get(&key)?;
        if self.head != i {
            self.unlink(i);
            self.push_front(i);
        }
        self.nodes[i as usize].value.as_ref()
    }

    /// The value for `key`, mutable, marking it most recently used.
    pub(crate) fn get_mut(&mut self, key: u64) -> Option<&mut V> {
        let i = *self.map.get(&key)?;
        if self.head != i {
            self.unlink(i);
            self.push_front(i);
        }
        self.nodes[i as usize].value.as_mut()
    }

    /// Drops every entry.
    pub(crate) fn clear(&mut self) {
        self.map.clear();
        self.nodes.clear();
        self.free.clear();
        self.head = NIL;
        self.tail = NIL;
        self.weight = 0;
    }

    /// Whether `key` is present, marking it most recently used.
    pub(crate) fn touch(&mut self, key: u64) -> bool {
        self.get(key).is_some()
    }

    /// Inserts (or refreshes) `key` as most recently used, then evicts least recently used entries
    /// until the total weight fits the capacity. An entry heavier than the whole capacity is not
    /// kept.
    pub(crate) fn insert(&mut self, key: u64, value: V, weight: u64) {
        if let Some(&i) = self.map.get(&key) {
            let n = &mut self.nodes[i as usize];
            self.weight = self.weight - n.weight + weight;
            n.weight = weight;
            n.value = Some(value);
            if self.head != i {
                self.unlink(i);
                self.push_front(i);
            }
        } else {
            if weight > self.capacity {
                return;
            }
            let node = Node {
                key,
                weight,
                value: Some(value),
                prev: NIL,
                next: NIL,
            };
            let i = match self.free.pop() {
                Some(i) => {
                    self.nodes[i as usize] = node;
                    i
                }
                None => {
                    self.nodes.push(node);
                    (self.nodes.len() - 1) as u32
                }
            };
            self.map.insert(key, i);
            self.weight += weight;
            self.push_front(i);
        }
        while self.weight > self.capacity && self.tail != NIL {
            self.evict_one();
        }
    }

    fn evict_one(&mut self) {
        let i = self.tail;
        self.unlink(i);
        let n = &mut self.nodes[i as usize];
        self.weight -= n.weight;
        n.value = None;
        self.map.remove(&n.key);
        self.free.push(i);
    }

    /// Keys from most to least recently used (tests and debugging).
    #[cfg(test)]
    pub(crate) fn keys_mru(&self) -> Vec<u64> {
        let mut out = Vec::new();
        let mut i = self.head;
        while i != NIL {
            out.push(self.nodes[i as usize].key);
            i = self.nodes[i as usize].next;
        }
        out
    }
}

/// Mixes one token into a running block hash (FxHash step).
#[inline]
fn mix_token(h: u64, token: u32) -> u64 {
    (h.rotate_left(5) ^ u64::from(token)).wrapping_mul(0x517c_c1b7_2722_0a95)
}

/// MurmurHash3's 64-bit finaliser: spreads every input bit over the output.
#[inline]
pub(crate) fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^= k >> 33;
    k
}

/// Seed of the hash chain (the "parent" of the first block).
pub(crate) const ROOT_HASH: u64 = 0x9e37_79b9_7f4a_7c15;

/// The hash naming a full block of tokens whose predecessor block is named `parent`.
#[inline]
pub(crate) fn block_hash(parent: u64, block: &[u32]) -> u64 {
    let mut h = parent;
    for &t in block {
        h = mix_token(h, t);
    }
    fmix64(h ^ (block.len() as u64))
}

/// Where a prompt's hash chain stopped: the hash of its last full block and the tokens after it.
/// Kept by a running request so the blocks its output completes can be added at the end without
/// holding on to the whole prompt.
#[derive(Clone, Debug)]
pub(crate) struct ChainTail {
    pub(crate) parent: u64,
    pub(crate) partial: Vec<u32>,
}

/// Result of looking a prompt up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Lookup {
    pub(crate) prompt_tokens: u64,
    pub(crate) cached_tokens: u64,
}

/// vLLM-style automatic prefix cache. The sim shares one across its executors behind a `Mutex`
/// (one lock per request start and one per request end); that is fine for a test fixture, and the
/// client's hot path never touches it.
pub(crate) struct PrefixCache {
    block_size: usize,
    blocks: Lru<()>,
}

impl PrefixCache {
    /// `capacity_tokens` is rounded down to whole blocks.
    pub(crate) fn new(block_size: usize, capacity_tokens: u64) -> Self {
        assert!(block_size > 0, "block size is validated to be positive");
        PrefixCache {
            block_size,
            blocks: Lru::new(capacity_tokens / block_size as u64 * block_size as u64),
        }
    }

    /// Tokens held (whole blocks).
    pub(crate) fn tokens(&self) -> u64 {
        self.blocks.weight()
    }

    /// Looks `prompt` up and then inserts all its full blocks, as vLLM's scheduler does when it
    /// allocates a request's blocks. Returns the counts and the chain tail for
    /// [`PrefixCache::extend`].
    pub(crate) fn lookup_and_insert(&mut self, prompt: &[u32]) -> (Lookup, ChainTail) {
        let bs = self.block_size;
        let full = prompt.len() / bs;
        // The last prompt token is always computed, so at most (len - 1) / bs blocks can hit.
        let max_hit_blocks = prompt.len().saturating_sub(1) / bs;
        let mut hashes = Vec::with_capacity(full);
        let mut parent = ROOT_HASH;
        for block in prompt.chunks_exact(bs) {
            parent = block_hash(parent, block);
            hashes.push(parent);
        }
        let mut hit_blocks = 0;
        while hit_blocks < max_hit_blocks && self.blocks.touch(hashes[hit_blocks]) {
            hit_blocks += 1;
        }
        self.insert_chain(&hashes);
        let lookup = Lookup {
            prompt_tokens: prompt.len() as u64,
            cached_tokens: (hit_blocks * bs) as u64,
        };
        let tail = ChainTail {
            parent,
            partial: prompt[full * bs..].to_vec(),
        };
        (lookup, tail)
    }

    /// Inserts the blocks that `more` tokens (appended after `tail`) complete: a finished
    /// request's generated tokens, which vLLM also caches.
    pub(crate) fn extend(&mut self, tail: ChainTail, more: &[u32]) {
        let bs = self.block_size;
        let mut parent = tail.parent;
        let mut pending = tail.partial;
        let mut hashes = Vec::new();
        for &t in more {
            pending.push(t);
            if pending.len() == bs {
                parent = block_hash(parent, &pending);
                hashes.push(parent);
                pending.clear();
            }
        }
        self.insert_chain(&hashes);
    }

    /// Inserts a chain last block first, so its first block ends up most recently used and the
    /// tail blocks are evicted first (a chain is useless past its first missing block; vLLM
    /// frees a request's blocks in reverse order for the same reason).
    fn insert_chain(&mut self, hashes: &[u64]) {
        for &h in hashes.iter().rev() {
            self.blocks.insert(h, (), self.block_size as u64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(range: std::ops::Range<u32>) -> Vec<u32> {
        range.collect()
    }

    #[test]
    fn lru_evicts_least_recently_used_by_weight() {
        let mut lru: Lru<u32> = Lru::new(10);
        lru.insert(1, 10, 4);
        lru.insert(2, 20, 4);
        assert_eq!(lru.get(1), Some(&10)); // 1 is now MRU
        lru.insert(3, 30, 4); // 12 > 10: evicts 2 (LRU)
        assert_eq!(lru.keys_mru(), vec![3, 1]);
        assert!(lru.get(2).is_none());
        assert_eq!(lru.weight(), 8);
        // Re-inserting changes the weight and refreshes.
        lru.insert(1, 11, 6); // 4 + 6 = 10 fits
        assert_eq!(lru.keys_mru(), vec![1, 3]);
        assert_eq!(lru.weight(), 10);
        lru.insert(4, 40, 1); // evicts 3
        assert_eq!(lru.keys_mru(), vec![4, 1]);
        assert_eq!(lru.get(1), Some(&11));
        // Heavier than everything: not kept, nothing evicted.
        lru.insert(5, 50, 11);
        assert_eq!(lru.len(), 2);
        // Slots are reused.
        for k in 100..200 {
            lru.insert(k, 0, 5);
        }
        assert_eq!(lru.len(), 2);
        assert!(lru.nodes.len() <= 4, "slab grew to {}", lru.nodes.len());
    }

    #[test]
    fn block_math_leading_blocks_only() {
        let mut c = PrefixCache::new(16, 1_000_000);
        let p = ids(0..100); // 6 full blocks + 4
        let (l, _) = c.lookup_and_insert(&p);
        assert_eq!(
            l,
            Lookup {
                prompt_tokens: 100,
                cached_tokens: 0
            }
        );
        assert_eq!(c.tokens(), 96);
        // Same prompt: all 6 full blocks hit.
        let (l, _) = c.lookup_and_insert(&p);
        assert_eq!(l.cached_tokens, 96);
        // Shares the first 40 tokens: 2 full blocks (32 tokens) hit.
        let mut q = ids(0..40);
        q.extend(1000..1100);
        let (l, _) = c.lookup_and_insert(&q);
        assert_eq!(l.cached_tokens, 32);
        // A different first block breaks the chain even if later blocks are equal.
        let mut r = vec![7777];
        r.extend(1..100);
        let (l, _) = c.lookup_and_insert(&r);
        assert_eq!(l.cached_tokens, 0);
    }

    #[test]
    fn fully_cached_exact_multiple_recomputes_last_block() {
        let mut c = PrefixCache::new(16, 1_000_000);
        let p = ids(0..64);
        c.lookup_and_insert(&p);
        let (l, _) = c.lookup_and_insert(&p);
        assert_eq!(l.cached_tokens, 48);
        // One more token: all four blocks usable.
        let q = ids(0..65);
        let (l, _) = c.lookup_and_insert(&q);
        assert_eq!(l.cached_tokens, 64);
        // Shorter than a block: never cached.
        let s = ids(0..15);
        c.lookup_and_insert(&s);
        assert_eq!(c.lookup_and_insert(&s).0.cached_tokens, 0);
    }

    #[test]
    fn extend_caches_generated_blocks() {
        let mut c = PrefixCache::new(16, 1_000_000);
        let prompt = ids(0..20);
        let (_, tail) = c.lookup_and_insert(&prompt);
        assert_eq!(tail.partial.len(), 4);
        let out = ids(20..60); // prompt + output = 60 tokens → blocks up to 48
        c.extend(tail, &out);
        assert_eq!(c.tokens(), 48);
        // The next turn's prompt is prompt + output + new text.
        let next = ids(0..80);
        assert_eq!(c.lookup_and_insert(&next).0.cached_tokens, 48);
    }

    #[test]
    fn lru_eviction_drops_tail_blocks_first() {
        // Room for 4 blocks of 4 tokens.
        let mut c = PrefixCache::new(4, 16);
        let a = ids(0..17); // 4 full blocks
        c.lookup_and_insert(&a);
        assert_eq!(c.tokens(), 16);
        assert_eq!(c.lookup_and_insert(&a).0.cached_tokens, 16);
        // A new 2-block prompt evicts a's two *last* blocks, so a keeps its first 2.
        let b = ids(500..509);
        c.lookup_and_insert(&b);
        assert_eq!(c.tokens(), 16);
        let (l, _) = c.lookup_and_insert(&a);
        assert_eq!(l.cached_tokens, 8);
        // Capacity is rounded to whole blocks.
        let c2 = PrefixCache::new(16, 100);
        assert_eq!(c2.blocks.capacity, 96);
    }
}
