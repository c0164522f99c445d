//! Decisions waiting for their outcome: bounded, expiring, sharded so that
//! concurrent decide and report calls rarely meet on one lock.
//!
//! A full table refuses new decisions rather than dropping open ones: an
//! open decision is a trade somebody placed, and losing its feedback to make
//! room for a flood of decisions that may never trade would let one careless
//! client blind the module. Only expiry (the TTL) removes an open decision.
//!
//! Settled and expired ids are remembered (boundedly) as tombstones, so a late
//! or repeated report gets "expired" or "duplicate" rather than "unknown".

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
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

/// How many settled and expired ids a table of `capacity` remembers.
pub fn tombstones_for(capacity: usize) -> usize {
    PendingTable::tombstones_per_shard(capacity) * SHARDS
}

pub struct PendingTable {
    shards: Vec<Mutex<Shard>>,
    capacity: usize,
    /// Open decisions in all shards: the capacity is the table's, not a shard's.
    open: AtomicUsize,
    tombstones_per_shard: usize,
    ttl_secs: f64,
}

/// Decisions that expired while a new one was inserted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Evictions {
    pub expired: u64,
    /// Of those expired, the ones that explored.
    pub explored: u64,
}

/// The table holds `capacity` open decisions, none of them expired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full {
    pub capacity: usize,
    pub expired: Evictions,
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
        PendingTable {
            shards,
            capacity,
            open: AtomicUsize::new(0),
            tombstones_per_shard: Self::tombstones_per_shard(capacity),
            ttl_secs,
        }
    }

    fn tombstones_per_shard(capacity: usize) -> usize {
        capacity.div_ceil(SHARDS).max(MIN_TOMBSTONES_PER_SHARD)
    }

    fn shard(&self, id: u128) -> &Mutex<Shard> {
        // Ids end in random bits, so the low bits spread evenly.
        &self.shards[(id as usize) % SHARDS]
    }

    /// Opens `decision`, first expiring what has outlived the TTL. A full
    /// table refuses it and changes nothing else.
    pub fn insert(&self, decision: Arc<Decision>, now: f64) -> Result<Evictions, Full> {
        let id = decision.id.0;
        let mut ev = self.expire_shard(&mut self.shard(id).lock(), now);
        if self.open.load(Ordering::Relaxed) >= self.capacity {
            // Expired decisions in other shards may still hold room.
            for shard in &self.shards {
                let more = self.expire_shard(&mut shard.lock(), now);
                ev.expired += more.expired;
                ev.explored += more.explored;
            }
        }
        // Reserving before inserting keeps concurrent inserts within the capacity.
        if self.open.fetch_add(1, Ordering::Relaxed) >= self.capacity {
            self.open.fetch_sub(1, Ordering::Relaxed);
            return Err(Full { capacity: self.capacity, expired: ev });
        }
        let mut shard = self.shard(id).lock();
        shard.order.push_back((id, decision.created_at));
        shard.open.insert(id, decision);
        // Settled ids behind a long-lived open one would pile up in `order`.
        if shard.order.len() > 2 * shard.open.len() + 64 {
            let Shard { order, open, .. } = &mut *shard;
            order.retain(|(id, _)| open.contains_key(id));
        }
        Ok(ev)
    }

    /// Removes the expired decisions at the front of a shard.
    fn expire_shard(&self, shard: &mut Shard, now: f64) -> Evictions {
        let mut ev = Evictions::default();
        while let Some(&(old, created)) = shard.order.front() {
            let settled = !shard.open.contains_key(&old);
            if !settled && now - created <= self.ttl_secs {
                break;
            }
            shard.order.pop_front();
            if let Some(gone) = shard.open.remove(&old) {
                self.open.fetch_sub(1, Ordering::Relaxed);
                ev.explored += u64::from(gone.explored());
                ev.expired += 1;
                self.bury(shard, old, Tombstone::Expired);
            }
        }
        ev
    }

    /// Puts back a decision still open when the service stopped, with its
    /// own creation time (so its TTL runs on), even past the capacity: it was
    /// accepted before, and refusing it now would lose its trade's outcome.
    pub fn restore(&self, decision: Arc<Decision>) {
        let id = decision.id.0;
        let mut shard = self.shard(id).lock();
        if shard.open.insert(id, decision.clone()).is_none() {
            self.open.fetch_add(1, Ordering::Relaxed);
            shard.order.push_back((id, decision.created_at));
        }
    }

    /// Remembers a decision settled before the service stopped, so that a
    /// retried report gets "duplicate" rather than "unknown".
    pub fn restore_settled(&self, id: u128) {
        let mut shard = self.shard(id).lock();
        if shard.open.remove(&id).is_some() {
            self.open.fetch_sub(1, Ordering::Relaxed);
        }
        self.bury(&mut shard, id, Tombstone::Settled);
    }

    /// Looks a decision up and, if `settle` accepts it, removes it as settled,
    /// all under one lock so two concurrent reports cannot both settle it.
    pub fn settle<T, E>(&self, id: u128, now: f64, settle: impl FnOnce(Lookup) -> Result<T, E>) -> Result<T, E> {
        let mut shard = self.shard(id).lock();
        let lookup = match shard.open.get(&id) {
            Some(d) if now - d.created_at > self.ttl_secs => {
                shard.open.remove(&id);
                self.open.fetch_sub(1, Ordering::Relaxed);
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
            self.open.fetch_sub(1, Ordering::Relaxed);
            self.bury(&mut shard, id, Tombstone::Settled);
        }
        Ok(result)
    }

    /// Puts a decision back after a failure downstream of `settle`.
    pub fn reopen(&self, decision: Arc<Decision>) {
        let id = decision.id.0;
        let mut shard = self.shard(id).lock();
        shard.tombstones.remove(&id);
        if shard.open.insert(id, decision.clone()).is_none() {
            self.open.fetch_add(1, Ordering::Relaxed);
            shard.order.push_back((id, decision.created_at));
        }
    }

    /// Whether the table holds `id`, open or as a tombstone.
    pub fn knows(&self, id: u128) -> bool {
        let shard = self.shard(id).lock();
        shard.open.contains_key(&id) || shard.tombstones.contains_key(&id)
    }

    /// Forgets an open decision that could not be recorded, as if never made.
    pub fn discard(&self, id: u128) {
        if self.shard(id).lock().open.remove(&id).is_some() {
            self.open.fetch_sub(1, Ordering::Relaxed);
        }
    }

    pub fn len(&self) -> usize {
        self.open.load(Ordering::Relaxed)
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
        while shard.tombstone_order.len() > self.tombstones_per_shard {
            if let Some(old) = shard.tombstone_order.pop_front() {
                shard.tombstones.remove(&old);
            }
        }
    }
}
