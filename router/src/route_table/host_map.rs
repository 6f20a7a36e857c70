//! The snapshot's host index: route host -> the host's pools. Immutable; snapshots share
//! every part a publish did not change.
//!
//! One 64-bit hash of the host decides everything: its top 6 bits pick one of 64 groups,
//! the next 6 one of the group's 64 shards, the low bits the first slot to probe in the
//! shard. A shard is an array of slots, a power of two long and at most half full, probed
//! linearly (open addressing); a slot holds the host's hash and the first of its pools,
//! which holds the first 32 bytes of the host name. Next to each shard's slots, the
//! group keeps a small filter of the shard's hashes. So a lookup hashes once and touches
//! the group (64 of 2 KB: they stay cached), one or two lines of slots and the pool: the
//! fewest cache misses the request path can pay for a table much larger than the
//! caches. Most misses stop at the filter.
//!
//! A publish copies the group array (64 pointers), each group holding a changed host (64
//! shards) and rebuilds each shard holding a changed host from its remaining entries:
//! with 4 096 shards, a shard has ~25 hosts at 100 000 routes, so a change costs a few
//! microseconds however large the table. Shards are never changed in place, so there
//! are no tombstones to clean.

use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;

use super::Pool;

const GROUPS: usize = 64;
const SHARDS_PER_GROUP: usize = 64;
const GROUP_SHIFT: u32 = 64 - GROUPS.trailing_zeros();
const SHARD_SHIFT: u32 = GROUP_SHIFT - SHARDS_PER_GROUP.trailing_zeros();

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
    /// here, in the group the lookup reads anyway, without reading the slots.
    filter: u128,
}

/// The filter bits of a hash: from bits the group, shard and slot choice do not use.
fn filter_bits(hash: u64) -> u128 {
    (1 << ((hash >> 24) & 127)) | (1 << ((hash >> 32) & 127))
}

#[derive(Debug, Clone)]
struct Group {
    shards: [Shard; SHARDS_PER_GROUP],
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
    groups: [Arc<Group>; GROUPS],
}

impl Default for HostMap {
    fn default() -> Self {
        let empty = build_shard(Vec::new());
        let group = Arc::new(Group {
            shards: std::array::from_fn(|_| empty.clone()),
        });
        HostMap {
            hasher: foldhash::fast::RandomState::default(),
            groups: std::array::from_fn(|_| group.clone()),
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
        let group = &self.groups[(hash >> GROUP_SHIFT) as usize];
        &group.shards[(hash >> SHARD_SHIFT) as usize % SHARDS_PER_GROUP]
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
        self.groups
            .iter()
            .flat_map(|group| group.shards.iter())
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
            let hash = same_shard[0].hash;
            let group = Arc::make_mut(&mut self.groups[(hash >> GROUP_SHIFT) as usize]);
            let shard = &mut group.shards[(hash >> SHARD_SHIFT) as usize % SHARDS_PER_GROUP];
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
