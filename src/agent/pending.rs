//! Decisions waiting for their outcome: bounded, expiring, sharded so that
//! concurrent decide and report calls rarely meet on one lock.
//!
//! Settled and expired ids are remembered (boundedly) as tombstones, so a late
//! or repeated report gets "expired" or "duplicate" rather than "unknown".

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use parking_lot::Mutex;

use super::Decision;

const SHARDS: usize = 16;
/// Settled and expired ids remembered per shard, at least.
const MIN_TOMBSTONES_PER_SHARD: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tombstone {
    Settled,
    Expired,
}

/// What a lookup found.
pub enum Lookup {
    Open(Arc<Decision>),
    Gone(Tombstone),
    Unknown,
}

struct Shard {
    open: HashMap<u128, Arc<Decision>>,
    /// Ids in insertion order, hence expiry order: the TTL is the same for all.
    order: VecDeque<(u128, f64)>,
    tombstones: HashMap<u128, Tombstone>,
    tombstone_order: VecDeque<u128>,
}

pub struct PendingTable {
    shards: Vec<Mutex<Shard>>,
    capacity_per_shard: usize,
    ttl_secs: f64,
}

/// What happened to decisions pushed out on insert.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Evictions {
    pub expired: u64,
    /// Dropped because the table was full before their TTL.
    pub overflowed: u64,
    /// Of those expired or dropped, the ones that explored.
    pub explored: u64,
}

impl PendingTable {
    pub fn new(capacity: usize, ttl_secs: f64) -> PendingTable {
        let shards = (0..SHARDS)
            .map(|_| {
                Mutex::new(Shard {
                    open: HashMap::new(),
                    order: VecDeque::new(),
                    tombstones: HashMap::new(),
                    tombstone_order: VecDeque::new(),
                })
            })
            .collect();
        PendingTable { shards, capacity_per_shard: capacity.div_ceil(SHARDS).max(1), ttl_secs }
    }

    fn shard(&self, id: u128) -> &Mutex<Shard> {
        // Ids end in a counter, so the low bits spread evenly.
        &self.shards[(id as usize) % SHARDS]
    }

    pub fn insert(&self, decision: Arc<Decision>, now: f64) -> Evictions {
        let id = decision.id.0;
        let mut shard = self.shard(id).lock();
        let mut ev = Evictions::default();
        while let Some(&(old, created)) = shard.order.front() {
            let expired = now - created > self.ttl_secs;
            let full = shard.open.len() >= self.capacity_per_shard;
            let settled = !shard.open.contains_key(&old);
            if !expired && !full && !settled {
                break;
            }
            shard.order.pop_front();
            if let Some(gone) = shard.open.remove(&old) {
                ev.explored += u64::from(gone.explored());
                if expired {
                    ev.expired += 1;
                } else {
                    ev.overflowed += 1;
                }
                self.bury(&mut shard, old, Tombstone::Expired);
            }
        }
        shard.order.push_back((id, now));
        shard.open.insert(id, decision);
        // Settled ids behind a long-lived open one would pile up in `order`.
        if shard.order.len() > 2 * self.capacity_per_shard {
            let Shard { order, open, .. } = &mut *shard;
            order.retain(|(id, _)| open.contains_key(id));
        }
        ev
    }

    /// Looks a decision up and, if `settle` accepts it, removes it as settled,
    /// all under one lock so two concurrent reports cannot both settle it.
    pub fn settle<T, E>(&self, id: u128, now: f64, settle: impl FnOnce(Lookup) -> Result<T, E>) -> Result<T, E> {
        let mut shard = self.shard(id).lock();
        let lookup = match shard.open.get(&id) {
            Some(d) if now - d.created_at > self.ttl_secs => {
                shard.open.remove(&id);
                self.bury(&mut shard, id, Tombstone::Expired);
                Lookup::Gone(Tombstone::Expired)
            }
            Some(d) => Lookup::Open(d.clone()),
            None => match shard.tombstones.get(&id) {
                Some(&t) => Lookup::Gone(t),
                None => Lookup::Unknown,
            },
        };
        let was_open = matches!(lookup, Lookup::Open(_));
        let result = settle(lookup)?;
        if was_open {
            shard.open.remove(&id);
            self.bury(&mut shard, id, Tombstone::Settled);
        }
        Ok(result)
    }

    /// Puts a decision back after a failure downstream of `settle`.
    pub fn reopen(&self, decision: Arc<Decision>) {
        let id = decision.id.0;
        let mut shard = self.shard(id).lock();
        shard.tombstones.remove(&id);
        shard.order.push_back((id, decision.created_at));
        shard.open.insert(id, decision);
    }

    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().open.len()).sum()
    }

    /// Every open decision, for persisting across a restart.
    pub fn open_decisions(&self) -> Vec<Arc<Decision>> {
        let mut all: Vec<Arc<Decision>> =
            self.shards.iter().flat_map(|s| s.lock().open.values().cloned().collect::<Vec<_>>()).collect();
        all.sort_by_key(|d| d.id.0);
        all
    }

    fn bury(&self, shard: &mut Shard, id: u128, t: Tombstone) {
        if shard.tombstones.insert(id, t).is_none() {
            shard.tombstone_order.push_back(id);
        }
        while shard.tombstone_order.len() > self.capacity_per_shard.max(MIN_TOMBSTONES_PER_SHARD) {
            if let Some(old) = shard.tombstone_order.pop_front() {
                shard.tombstones.remove(&old);
            }
        }
    }
}
