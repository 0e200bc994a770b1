//! The `cache` handler: CoreDNS's plugin/cache. It wraps the handlers after it: a fresh entry
//! answers at once; otherwise the rest answers and the cache keeps what it may.
//!
//! ```text
//!  handle ─> in zones? ─no─> Next
//!              │
//!           lookup (name without case, type, class, DO, CD)
//!              ├─ fresh: Answer, TTLs counted down (maybe prefetch in the background)
//!              ├─ expired within serve_stale: immediate: Answer with TTL 0 + refresh;
//!              │                              verify: Then(on SERVFAIL, the stale entry)
//!              └─ none: Then(store the final answer) ─> success | denial bucket
//! ```
//!
//! Each bucket is sharded maps under plain mutexes holding `Arc` entries (the lock covers a
//! lookup and an `Arc` clone only). Eviction is CoreDNS's: when a bucket is full, a random
//! entry of the shard being written goes (another shard's if that one is empty), so the
//! capacity holds exactly.
//!
//! Background work (prefetch, stale refresh) re-runs the handlers after the cache, which the
//! pipeline builder hands over with [`Cache::set_next`]. Without it a prefetch happens inline
//! (the eligible query is treated as a miss) and `serve_stale immediate` acts like `verify`.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use tokio::time::Instant;
use tracing::warn;

use super::answer::Answer;
use super::pipeline::{Flow, Handler, Pipeline, Request};
use super::zone;
use crate::corefile::{CacheConfig, Prefetch, ServeStale, StaleMode};

const PLUGIN: &str = "cache";
const SHARDS: usize = 16;
/// CoreDNS's TTL for answers that carry no TTL of their own.
const DEFAULT_TTL: u32 = 5;

/// Counters for the `coredns_cache_*` metrics; entry gauges via [`Cache::entries`].
#[derive(Debug, Default)]
pub struct CacheStats {
    pub requests: AtomicU64,
    pub success_hits: AtomicU64,
    pub denial_hits: AtomicU64,
    pub misses: AtomicU64,
    pub success_evictions: AtomicU64,
    pub denial_evictions: AtomicU64,
    pub prefetches: AtomicU64,
    pub served_stale: AtomicU64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Success,
    Denial,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Key {
    name: Name,
    qtype: RecordType,
    class: DNSClass,
    dnssec_ok: bool,
    checking_disabled: bool,
}

impl Key {
    fn of(req: &Request) -> Key {
        Key {
            name: req.qname.clone(),
            qtype: req.qtype,
            class: req
                .message
                .queries
                .first()
                .map(|q| q.query_class())
                .unwrap_or(DNSClass::IN),
            dnssec_ok: req
                .message
                .edns
                .as_ref()
                .is_some_and(|e| e.flags().dnssec_ok),
            checking_disabled: req.message.metadata.checking_disabled,
        }
    }

    /// Compares with what a request asks, without building a `Key` (no allocation on hits).
    fn matches(&self, req: &Request, class: DNSClass, dnssec_ok: bool) -> bool {
        self.name == req.qname
            && self.qtype == req.qtype
            && self.class == class
            && self.dnssec_ok == dnssec_ok
            && self.checking_disabled == req.message.metadata.checking_disabled
    }
}

struct Entry {
    key: Key,
    rcode: ResponseCode,
    authoritative: bool,
    recursion_available: bool,
    answers: Vec<Record>,
    authorities: Vec<Record>,
    additionals: Vec<Record>,
    stored: Instant,
    /// The TTL given to the entry (after min/max bounds), in seconds.
    ttl: u32,
    /// Prefetch frequency: hits since the window start (CoreDNS's `Freq`).
    freq: Mutex<(Instant, u32)>,
    refreshing: AtomicBool,
    /// Still in its bucket: cleared when replaced, removed or evicted, which ends the
    /// server's replays of it (Ticket).
    live: AtomicBool,
}

impl Entry {
    fn expires(&self) -> Instant {
        self.stored + Duration::from_secs(u64::from(self.ttl))
    }

    /// Seconds left, 0 once expired.
    fn remaining(&self, now: Instant) -> u32 {
        let elapsed = now.saturating_duration_since(self.stored).as_secs();
        u64::from(self.ttl).saturating_sub(elapsed) as u32
    }

    fn to_answer(&self, ttl: u32) -> Answer {
        // Every record gets the entry's TTL, as CoreDNS does.
        let with_ttl = |rs: &[Record]| {
            rs.iter()
                .map(|r| {
                    let mut r = r.clone();
                    r.ttl = ttl;
                    r
                })
                .collect()
        };
        Answer {
            rcode: self.rcode,
            authoritative: self.authoritative,
            recursion_available: self.recursion_available,
            answers: with_ttl(&self.answers),
            authorities: with_ttl(&self.authorities),
            additionals: with_ttl(&self.additionals),
            plugin: PLUGIN,
            no_reply: false,
            zone: None,
            cacheable: false,
            shuffled: false,
            lease: None,
            zonal: Default::default(),
        }
    }

    /// Counts a hit; true when this entry is now due for a prefetch.
    fn prefetch_due(&self, p: &Prefetch, now: Instant, remaining: u32) -> bool {
        let hits = {
            let mut f = self.freq.lock().unwrap_or_else(|e| e.into_inner());
            if now.saturating_duration_since(f.0) > p.duration {
                *f = (now, 1);
            } else {
                f.1 = f.1.saturating_add(1);
            }
            f.1
        };
        let threshold = (u64::from(p.percentage) * u64::from(self.ttl)).div_ceil(100);
        hits >= p.amount && u64::from(remaining) <= threshold
    }
}

struct Bucket {
    kind: Kind,
    shards: Vec<Mutex<HashMap<u64, Arc<Entry>>>>,
    len: AtomicUsize,
    capacity: usize,
    max_ttl: u32,
    min_ttl: u32,
}

impl Bucket {
    fn new(kind: Kind, capacity: u32, max_ttl: u32, min_ttl: u32) -> Bucket {
        Bucket {
            kind,
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            len: AtomicUsize::new(0),
            capacity: capacity as usize,
            max_ttl,
            min_ttl,
        }
    }

    fn shard(&self, hash: u64) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Entry>>> {
        self.shards[(hash as usize) % SHARDS]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn get(&self, hash: u64) -> Option<Arc<Entry>> {
        self.shard(hash).get(&hash).cloned()
    }

    fn remove(&self, hash: u64) {
        if let Some(old) = self.shard(hash).remove(&hash) {
            old.live.store(false, Ordering::Release);
            self.len.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Inserts or replaces; true when another entry was evicted to make room. Concurrent
    /// inserts into different shards may overshoot the capacity by a few entries briefly.
    fn insert(&self, hash: u64, entry: Arc<Entry>) -> bool {
        if self.capacity == 0 {
            return false;
        }
        let home = (hash as usize) % SHARDS;
        {
            let mut shard = self.shard(hash);
            if let Some(slot) = shard.get_mut(&hash) {
                std::mem::replace(slot, entry)
                    .live
                    .store(false, Ordering::Release);
                return false;
            }
            if self.len.load(Ordering::Relaxed) < self.capacity {
                shard.insert(hash, entry);
                self.len.fetch_add(1, Ordering::Relaxed);
                return false;
            }
            // Keys are seeded hashes, so the first in map order is as good as a random pick.
            if let Some(victim) = shard.keys().next().copied() {
                if let Some(old) = shard.remove(&victim) {
                    old.live.store(false, Ordering::Release);
                }
                shard.insert(hash, entry);
                return true;
            }
        }
        // Full, and our shard had nothing to give: take from the next non-empty shard.
        let mut evicted = false;
        for i in 1..SHARDS {
            let mut other = self.shards[(home + i) % SHARDS]
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if let Some(victim) = other.keys().next().copied() {
                if let Some(old) = other.remove(&victim) {
                    old.live.store(false, Ordering::Release);
                }
                self.len.fetch_sub(1, Ordering::Relaxed);
                evicted = true;
                break;
            }
        }
        match self.shard(hash).insert(hash, entry) {
            Some(old) => old.live.store(false, Ordering::Release),
            None => {
                self.len.fetch_add(1, Ordering::Relaxed);
            }
        }
        evicted
    }
}

struct Inner {
    zones: Vec<Name>,
    success: Bucket,
    denial: Bucket,
    prefetch: Option<Prefetch>,
    serve_stale: Option<ServeStale>,
    servfail: Duration,
    disable_success: Vec<Name>,
    disable_denial: Vec<Name>,
    keepttl: bool,
    hasher: RandomState,
    next: OnceLock<Pipeline>,
    stats: Arc<CacheStats>,
}

pub struct Cache {
    inner: Arc<Inner>,
}

fn zones_or_warn(zones: &[String]) -> Vec<Name> {
    zone::parse(zones).unwrap_or_else(|e| {
        // The Corefile parser has validated these; a failure here is a bug, not user input.
        warn!(error = %e, "cache: ignoring unparseable zones");
        Vec::new()
    })
}

impl Cache {
    /// `server_zones` are used when the config names no zones (the parser normally fills
    /// them in already).
    pub fn new(cfg: &CacheConfig, server_zones: &[String]) -> Cache {
        // Destructured so a new config field cannot be forgotten here.
        let CacheConfig {
            zones,
            success,
            denial,
            prefetch,
            serve_stale,
            servfail,
            disable_success,
            disable_denial,
            keepttl,
        } = cfg;
        let zones = if zones.is_empty() {
            server_zones
        } else {
            zones
        };
        Cache {
            inner: Arc::new(Inner {
                zones: zones_or_warn(zones),
                success: Bucket::new(
                    Kind::Success,
                    success.capacity,
                    success.max_ttl,
                    success.min_ttl,
                ),
                denial: Bucket::new(
                    Kind::Denial,
                    denial.capacity,
                    denial.max_ttl,
                    denial.min_ttl,
                ),
                prefetch: *prefetch,
                serve_stale: *serve_stale,
                servfail: *servfail,
                disable_success: zones_or_warn(disable_success),
                disable_denial: zones_or_warn(disable_denial),
                keepttl: *keepttl,
                hasher: RandomState::new(),
                next: OnceLock::new(),
                stats: Arc::new(CacheStats::default()),
            }),
        }
    }

    /// The handlers after the cache, for background prefetch and stale refresh. Set once;
    /// later calls are ignored.
    pub fn set_next(&self, rest: Pipeline) {
        let _ = self.inner.next.set(rest);
    }

    pub fn stats(&self) -> Arc<CacheStats> {
        self.inner.stats.clone()
    }

    /// Entries held (`coredns_cache_entries{type}`), fresh or expired.
    pub fn entries(&self, kind: Kind) -> usize {
        match kind {
            Kind::Success => self.inner.success.len.load(Ordering::Relaxed),
            Kind::Denial => self.inner.denial.len.load(Ordering::Relaxed),
        }
    }
}

impl Inner {
    fn hash(&self, name: &Name, qtype: RecordType, class: DNSClass, d: bool, cd: bool) -> u64 {
        // Name hashes without case, like its equality.
        self.hasher
            .hash_one((name, u16::from(qtype), u16::from(class), d, cd))
    }

    /// Looks in both buckets; a key lives in at most one of them.
    fn lookup(&self, hash: u64) -> Option<(Arc<Entry>, Kind)> {
        if let Some(e) = self.denial.get(hash) {
            return Some((e, Kind::Denial));
        }
        self.success.get(hash).map(|e| (e, Kind::Success))
    }

    /// Stores the answer when it may be cached; returns the TTL it was stored with.
    fn store(&self, hash: u64, key: Key, answer: &Answer, now: Instant) -> Option<u32> {
        // Cluster answers are never held in the cache: the snapshot is as fast as a cache hit
        // and always current, so a new service is never hidden behind a cached NXDOMAIN
        // (kubernetes/kubernetes#92559). CoreDNS caches them; this is a deliberate difference.
        if answer.plugin == PLUGIN || answer.plugin == "kubernetes" {
            return None;
        }
        // No plugin answered ("no next plugin found"): CoreDNS's server writes that reply
        // after the chain, so its cache never sees it.
        if answer.plugin.is_empty() {
            return None;
        }
        let (bucket, other, ttl) = match answer.rcode {
            ResponseCode::NoError if !answer.answers.is_empty() => {
                if zone::in_any(&key.name, &self.disable_success) {
                    return None;
                }
                let ttl = min_ttl(answer, false).unwrap_or(DEFAULT_TTL);
                (&self.success, &self.denial, bounded(ttl, &self.success))
            }
            ResponseCode::NoError | ResponseCode::NXDomain => {
                if zone::in_any(&key.name, &self.disable_denial) {
                    return None;
                }
                let ttl = min_ttl(answer, true).unwrap_or(DEFAULT_TTL);
                (&self.denial, &self.success, bounded(ttl, &self.denial))
            }
            ResponseCode::ServFail => {
                if self.servfail.is_zero() || zone::in_any(&key.name, &self.disable_denial) {
                    return None;
                }
                // With serve_stale, a failure must not push out the data it would serve.
                if self.serve_stale.is_some() && self.lookup(hash).is_some() {
                    return None;
                }
                let secs = self.servfail.as_secs().clamp(1, u64::from(u32::MAX)) as u32;
                (&self.denial, &self.success, secs)
            }
            // REFUSED, FORMERR, NOTIMP and the like say nothing about the name.
            _ => return None,
        };
        if ttl == 0 {
            return None;
        }
        let entry = Arc::new(Entry {
            key,
            rcode: answer.rcode,
            authoritative: answer.authoritative,
            recursion_available: answer.recursion_available,
            answers: answer.answers.clone(),
            authorities: answer.authorities.clone(),
            additionals: answer.additionals.clone(),
            stored: now,
            ttl,
            freq: Mutex::new((now, 0)),
            refreshing: AtomicBool::new(false),
            live: AtomicBool::new(true),
        });
        other.remove(hash);
        if bucket.insert(hash, entry) {
            let c = match bucket.kind {
                Kind::Success => &self.stats.success_evictions,
                Kind::Denial => &self.stats.denial_evictions,
            };
            c.fetch_add(1, Ordering::Relaxed);
        }
        Some(ttl)
    }

    /// Re-runs the rest of the pipeline in the background and stores the result; false when
    /// that is not possible (no pipeline handed over, or no runtime).
    fn refresh_in_background(
        self: &Arc<Self>,
        entry: &Arc<Entry>,
        hash: u64,
        req: &Request,
    ) -> bool {
        let Some(next) = self.next.get() else {
            return false;
        };
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return false;
        };
        if entry.refreshing.swap(true, Ordering::AcqRel) {
            return true; // one refresh at a time per entry
        }
        let (inner, next, req, entry) = (self.clone(), next.clone(), req.clone(), entry.clone());
        rt.spawn(async move {
            let answer = next.resolve(&req).await;
            inner.store(hash, entry.key.clone(), &answer, Instant::now());
            entry.refreshing.store(false, Ordering::Release);
        });
        true
    }

    /// A miss: let the rest answer and keep the result. `stale` is served instead when the
    /// rest fails (serve_stale verify).
    fn miss(self: &Arc<Self>, hash: u64, req: &Request, stale: Option<Arc<Entry>>) -> Flow {
        let inner = self.clone();
        let key = Key::of(req);
        Flow::Then(Box::new(move |answer: Answer| {
            if answer.rcode == ResponseCode::ServFail {
                if let Some(stale) = stale {
                    inner.stats.served_stale.fetch_add(1, Ordering::Relaxed);
                    return stale.to_answer(0);
                }
            }
            let mut answer = answer;
            // As CoreDNS: the first reply already carries the capped TTL, so clients do not
            // see 300 -> 30 between a miss and the next hit.
            if let Some(ttl) = inner.store(hash, key, &answer, Instant::now()) {
                if answer.rcode != ResponseCode::ServFail {
                    for r in answer
                        .answers
                        .iter_mut()
                        .chain(answer.authorities.iter_mut())
                        .chain(answer.additionals.iter_mut())
                    {
                        r.ttl = r.ttl.min(ttl);
                    }
                }
            }
            answer
        }))
    }
}

impl Inner {
    fn ttl_for(&self, entry: &Entry, remaining: u32) -> u32 {
        if self.keepttl {
            entry.ttl
        } else {
            remaining
        }
    }
}

/// A fresh hit lent to the server's response cache (dns::fastpath): every replay is counted
/// as a hit here and gets the TTL a hit would get, until the entry expires or leaves.
struct Ticket {
    inner: Arc<Inner>,
    entry: Arc<Entry>,
    kind: Kind,
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticket")
            .field("key", &self.entry.key)
            .field("kind", &self.kind)
            .finish()
    }
}

impl crate::dns::fastpath::Lease for Ticket {
    fn renew(&self) -> Option<u32> {
        if !self.entry.live.load(Ordering::Acquire) {
            return None;
        }
        let remaining = self.entry.remaining(Instant::now());
        if remaining == 0 {
            return None; // expired: the cache decides (serve_stale, refresh)
        }
        let stats = &self.inner.stats;
        stats.requests.fetch_add(1, Ordering::Relaxed);
        let hits = match self.kind {
            Kind::Success => &stats.success_hits,
            Kind::Denial => &stats.denial_hits,
        };
        hits.fetch_add(1, Ordering::Relaxed);
        Some(self.inner.ttl_for(&self.entry, remaining))
    }
}

fn bounded(ttl: u32, bucket: &Bucket) -> u32 {
    ttl.min(bucket.max_ttl).max(bucket.min_ttl)
}

/// The smallest TTL in the answer (CoreDNS's `MinimalTTL`); for a denial, an SOA counts with
/// the smaller of its TTL and its MINIMUM field (RFC 2308).
fn min_ttl(answer: &Answer, denial: bool) -> Option<u32> {
    answer
        .answers
        .iter()
        .chain(&answer.authorities)
        .chain(&answer.additionals)
        .map(|r| match (&r.data, denial) {
            (RData::SOA(soa), true) => r.ttl.min(soa.minimum),
            _ => r.ttl,
        })
        .min()
}

impl Handler for Cache {
    fn name(&self) -> &'static str {
        PLUGIN
    }

    fn pure(&self) -> bool {
        true
    }

    fn handle(&self, req: &Request) -> Flow {
        let inner = &self.inner;
        if !zone::in_any(&req.qname, &inner.zones) {
            return Flow::Next;
        }
        inner.stats.requests.fetch_add(1, Ordering::Relaxed);
        let class = req
            .message
            .queries
            .first()
            .map(|q| q.query_class())
            .unwrap_or(DNSClass::IN);
        let dnssec_ok = req
            .message
            .edns
            .as_ref()
            .is_some_and(|e| e.flags().dnssec_ok);
        let cd = req.message.metadata.checking_disabled;
        let hash = inner.hash(&req.qname, req.qtype, class, dnssec_ok, cd);
        let now = Instant::now();
        let found = inner
            .lookup(hash)
            .filter(|(e, _)| e.key.matches(req, class, dnssec_ok));
        let Some((entry, kind)) = found else {
            inner.stats.misses.fetch_add(1, Ordering::Relaxed);
            return inner.miss(hash, req, None);
        };
        let remaining = entry.remaining(now);
        if remaining > 0 {
            if let Some(p) = &inner.prefetch {
                if entry.prefetch_due(p, now, remaining) {
                    inner.stats.prefetches.fetch_add(1, Ordering::Relaxed);
                    if !inner.refresh_in_background(&entry, hash, req) {
                        return inner.miss(hash, req, None);
                    }
                }
            }
            let hits = match kind {
                Kind::Success => &inner.stats.success_hits,
                Kind::Denial => &inner.stats.denial_hits,
            };
            hits.fetch_add(1, Ordering::Relaxed);
            let ttl = inner.ttl_for(&entry, remaining);
            let mut answer = entry.to_answer(ttl);
            // The server may replay this hit without asking again, as long as each replay
            // would have been the same hit: not with prefetch (hits are counted per entry to
            // decide it), nor for SERVFAIL (the errors plugin logs each).
            if inner.prefetch.is_none() && entry.rcode != ResponseCode::ServFail {
                answer.lease = Some(Arc::new(Ticket {
                    inner: self.inner.clone(),
                    entry,
                    kind,
                }));
            }
            return Flow::Answer(answer);
        }
        let stale_ok = inner
            .serve_stale
            .filter(|s| now.saturating_duration_since(entry.expires()) <= s.duration);
        match stale_ok {
            Some(s) if s.mode == StaleMode::Immediate => {
                if inner.refresh_in_background(&entry, hash, req) {
                    inner.stats.served_stale.fetch_add(1, Ordering::Relaxed);
                    return Flow::Answer(entry.to_answer(0));
                }
                inner.stats.misses.fetch_add(1, Ordering::Relaxed);
                inner.miss(hash, req, Some(entry))
            }
            Some(_) => {
                inner.stats.misses.fetch_add(1, Ordering::Relaxed);
                inner.miss(hash, req, Some(entry))
            }
            None => {
                inner.stats.misses.fetch_add(1, Ordering::Relaxed);
                inner.miss(hash, req, None)
            }
        }
    }
}
