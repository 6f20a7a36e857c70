//! The snapshot's host index: route host -> the host's pools. Immutable; snapshots share
//! every part a publish did not change.
//!
//! One 64-bit hash of the host decides everything: its top 6 bits pick one of 64
//! branches, the next 3 one of the branch's 8 leaves, the next 3 one of the leaf's 8
//! shards (4 096 shards in all), the low bits the first slot to probe in the shard. A
//! shard is an array of slots, a power of two long and at most half full, probed
//! linearly (open addressing); a slot holds the host's hash and the first of its pools,
//! which holds the first 32 bytes of the host name. Next to each shard's slots, the leaf
//! keeps a small filter of the shard's hashes. So a lookup hashes once and touches a
//! branch (64 of 64 bytes) and a leaf (512 of 256 bytes: both stay cached), one or two
//! lines of slots and the pool: the fewest cache misses the request path can pay for a
//! table much larger than the caches. Most misses stop at the filter.
//!
//! A publish copies the branch array (64 pointers), then for each changed host its
//! branch (8 pointers) and leaf (8 shards) unless this publish already copied them, and
//! rebuilds the host's shard from its remaining entries: with 4 096 shards, a shard has
//! ~25 hosts at 100 000 routes. Each shared part copied costs a reference count
//! (increment now, decrement when the old snapshot goes), on a line that is rarely in
//! cache: the levels of 8 keep that near 40 per changed host (a level of 64 shards
//! cost 64 more). Shards are never changed in place, so there are no tombstones to
//! clean.

use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;

use super::Pool;

const BRANCHES: usize = 64;
const LEAVES_PER_BRANCH: usize = 8;
const SHARDS_PER_LEAF: usize = 8;
const BRANCH_SHIFT: u32 = 64 - BRANCHES.trailing_zeros();
const LEAF_SHIFT: u32 = BRANCH_SHIFT - LEAVES_PER_BRANCH.trailing_zeros();
const SHARD_SHIFT: u32 = LEAF_SHIFT - SHARDS_PER_LEAF.trailing_zeros();

/// A host in a shard: its hash (compared first, so that most mismatches do not touch the
/// pool) and its pool with the longest context path, which links to the others.
#[derive(Debug, Clone)]
struct Entry {
    hash: u64,
    head: Arc<Pool>,
}

/// A power-of-two array of slots (or none), and a filter of its hosts' hashes.
#[derive(Debug, Clone)]
struct Shard {
    slots: Arc<[Option<Entry>]>,
    /// Two bits per host ([`filter_bits`]): a host whose bits are not all set is not
    /// in the shard, so most misses (every wildcard lookup starts with one) are decided
    /// here, in the leaf the lookup reads anyway, without reading the slots.
    filter: u128,
}

/// The filter bits of a hash: from bits the branch, leaf, shard and slot choice do not
/// use.
fn filter_bits(hash: u64) -> u128 {
    (1 << ((hash >> 24) & 127)) | (1 << ((hash >> 32) & 127))
}

#[derive(Debug, Clone)]
struct Leaf {
    shards: [Shard; SHARDS_PER_LEAF],
}

#[derive(Debug, Clone)]
struct Branch {
    leaves: [Arc<Leaf>; LEAVES_PER_BRANCH],
}

/// A change to one host: its new first pool, or `None` to remove it.
#[derive(Debug)]
pub(super) struct HostChange {
    pub hash: u64,
    pub host: Arc<str>,
    pub head: Option<Arc<Pool>>,
}

/// Hosts (exact, or `*.suffix` for wildcards) to their pools.
#[derive(Clone)]
pub(super) struct HostMap {
    hasher: foldhash::fast::RandomState,
    branches: [Arc<Branch>; BRANCHES],
}

impl Default for HostMap {
    fn default() -> Self {
        let empty = build_shard(Vec::new());
        let leaf = Arc::new(Leaf {
            shards: std::array::from_fn(|_| empty.clone()),
        });
        let branch = Arc::new(Branch {
            leaves: std::array::from_fn(|_| leaf.clone()),
        });
        HostMap {
            hasher: foldhash::fast::RandomState::default(),
            branches: std::array::from_fn(|_| branch.clone()),
        }
    }
}

impl fmt::Debug for HostMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostMap")
            .field("hosts", &self.heads().count())
            .finish()
    }
}

impl HostMap {
    /// The hash of a host (as the registry writes it: lowercase).
    pub fn hash(&self, host: &[u8]) -> u64 {
        let mut hasher = self.hasher.build_hasher();
        hasher.write(host);
        hasher.finish()
    }

    fn shard(&self, hash: u64) -> &Shard {
        let (branch, leaf, shard) = shard_path(hash);
        &self.branches[branch].leaves[leaf].shards[shard]
    }

    /// The first pool of `host`.
    pub fn get(&self, host: &[u8]) -> Option<&Arc<Pool>> {
        let hash = self.hash(host);
        let shard = self.shard(hash);
        let bits = filter_bits(hash);
        if shard.filter & bits != bits {
            return None;
        }
        let slots = &shard.slots;
        let mask = slots.len() - 1;
        let mut i = hash as usize & mask;
        // Terminates: a shard is never full.
        loop {
            match &slots[i] {
                None => return None,
                Some(entry) if entry.hash == hash && entry.head.is_for_host(host) => {
                    return Some(&entry.head);
                }
                Some(_) => i = (i + 1) & mask,
            }
        }
    }

    /// The first pool of every host.
    pub fn heads(&self) -> impl Iterator<Item = &Arc<Pool>> + '_ {
        self.branches
            .iter()
            .flat_map(|branch| branch.leaves.iter())
            .flat_map(|leaf| leaf.shards.iter())
            .flat_map(|shard| shard.slots.iter().flatten())
            .map(|entry| &entry.head)
    }

    /// Applies `changes` (at most one per host); `replaced` sees each host's old and new
    /// first pool. Copies only what the changes touch.
    pub fn apply(
        &mut self,
        mut changes: Vec<HostChange>,
        mut replaced: impl FnMut(Option<&Arc<Pool>>, Option<&Arc<Pool>>),
    ) {
        changes.sort_unstable_by_key(|c| c.hash >> SHARD_SHIFT);
        for same_shard in changes.chunk_by(|a, b| a.hash >> SHARD_SHIFT == b.hash >> SHARD_SHIFT) {
            let (branch, leaf, shard) = shard_path(same_shard[0].hash);
            // A branch or leaf this publish already copied is its own: not copied again.
            let branch = Arc::make_mut(&mut self.branches[branch]);
            let leaf = Arc::make_mut(&mut branch.leaves[leaf]);
            let shard = &mut leaf.shards[shard];
            let mut entries: Vec<Entry> = shard.slots.iter().flatten().cloned().collect();
            for change in same_shard {
                let old = entries
                    .iter()
                    .position(|e| e.hash == change.hash && e.head.host == change.host)
                    .map(|i| entries.swap_remove(i));
                replaced(old.as_ref().map(|e| &e.head), change.head.as_ref());
                if let Some(head) = &change.head {
                    entries.push(Entry {
                        hash: change.hash,
                        head: head.clone(),
                    });
                }
            }
            *shard = build_shard(entries);
        }
    }
}

/// Where a hash's shard is: its branch, the leaf in the branch, the shard in the leaf.
fn shard_path(hash: u64) -> (usize, usize, usize) {
    (
        (hash >> BRANCH_SHIFT) as usize,
        (hash >> LEAF_SHIFT) as usize % LEAVES_PER_BRANCH,
        (hash >> SHARD_SHIFT) as usize % SHARDS_PER_LEAF,
    )
}

fn build_shard(entries: Vec<Entry>) -> Shard {
    if entries.is_empty() {
        return Shard {
            slots: Arc::from(Vec::new()),
            filter: 0,
        };
    }
    // At most half full: a miss that passes the filter ends after two slots on
    // average, and there is always a free slot to end it.
    let len = (2 * entries.len()).next_power_of_two();
    let mask = len - 1;
    let mut slots: Vec<Option<Entry>> = vec![None; len];
    let mut filter = 0;
    for entry in entries {
        filter |= filter_bits(entry.hash);
        let mut i = entry.hash as usize & mask;
        while slots[i].is_some() {
            i = (i + 1) & mask;
        }
        slots[i] = Some(entry);
    }
    Shard {
        slots: Arc::from(slots),
        filter,
    }
}
