//! A response cache in front of the whole pipeline for answers that depend only on the
//! question and the cluster snapshot (the kubernetes handler's). A hit copies the stored bytes
//! and patches the query id: no parsing into `Message`, no
//! record building, no name compression work. Entries are tagged with the snapshot generation,
//! so a change in the cluster makes every older entry a miss at once: answers are never stale.
//!
//! Why our own: hickory's `Message` parse/encode allocates per name and per record and its
//! name compression searches linearly; on the hot path this cache costs a hash lookup and a
//! memcpy.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::RwLock;

use super::zonal::{ClientZone, ZonalTag};

/// Shards keep readers and the occasional writer from contending on one lock.
const SHARDS: usize = 16;
/// Entries per shard before the shard is cleared (a crude but O(1) bound on memory).
const SHARD_CAPACITY: usize = 8192;

/// What the fast path reads from a query without building a `Message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peek<'a> {
    pub id: u16,
    /// Header flags word (QR, opcode, AA, TC, RD, RA, Z, AD, CD, rcode).
    pub flags: u16,
    /// The question name in wire form, as sent (case preserved), ending with the root label.
    pub qname: &'a [u8],
    pub qtype: u16,
    pub qclass: u16,
    /// EDNS payload size when an OPT record is present.
    pub edns_payload: Option<u16>,
    pub do_bit: bool,
    /// Who asked (set by the server): zone-dependent answers are kept per client zone.
    pub client: Option<std::net::IpAddr>,
}

impl Peek<'_> {
    pub fn recursion_desired(&self) -> bool {
        self.flags & 0x0100 != 0
    }

    pub fn checking_disabled(&self) -> bool {
        self.flags & 0x0010 != 0
    }

    /// The largest UDP answer the client accepts.
    pub fn max_udp(&self) -> usize {
        self.edns_payload
            .map(|p| p.max(512) as usize)
            .unwrap_or(512)
    }
}

/// Parses the plain shape of almost every query: one question, no answer or authority
/// records, at most an OPT record, no compression in the question. Anything else returns None
/// and takes the full path (which also produces the right errors).
pub fn peek(bytes: &[u8]) -> Option<Peek<'_>> {
    if bytes.len() < 17 {
        return None;
    }
    let be = |i: usize| u16::from_be_bytes([bytes[i], bytes[i + 1]]);
    let flags = be(2);
    if flags & 0x8000 != 0 || (flags >> 11) & 0xf != 0 {
        return None; // a response, or not a standard query
    }
    if be(4) != 1 || be(6) != 0 || be(8) != 0 || be(10) > 1 {
        return None;
    }
    let mut i = 12;
    let mut total = 0usize;
    loop {
        let len = *bytes.get(i)? as usize;
        if len == 0 {
            i += 1;
            break;
        }
        if len > 63 {
            return None; // compression or a reserved label type
        }
        total += len + 1;
        if total > 254 {
            return None;
        }
        i += 1 + len;
    }
    let qname = &bytes[12..i];
    if bytes.len() < i + 4 {
        return None;
    }
    let qtype = be(i);
    let qclass = be(i + 2);
    i += 4;
    let mut edns_payload = None;
    let mut do_bit = false;
    if be(10) == 1 {
        // OPT: root name, type 41, class = payload, ttl = ext-rcode/version/flags, rdata.
        if bytes.len() < i + 11 || bytes[i] != 0 || be(i + 1) != 41 {
            return None;
        }
        let version = bytes[i + 6];
        if version != 0 {
            return None; // BADVERS comes from the full path
        }
        edns_payload = Some(be(i + 3));
        do_bit = bytes[i + 7] & 0x80 != 0;
        let rdlen = be(i + 9) as usize;
        if bytes.len() != i + 11 + rdlen {
            return None;
        }
    } else if bytes.len() != i {
        return None;
    }
    Some(Peek {
        id: be(0),
        flags,
        qname,
        qtype,
        qclass,
        edns_payload,
        do_bit,
        client: None,
    })
}

/// The longest wire-form name (RFC 1035 3.1).
const MAX_NAME: usize = 255;

/// What makes two questions the same for the cache, without allocating: the name as sent
/// (letter case included: answers keep the question's case in the names they derive from it,
/// SRV targets and SOA names too, so `A.b` and `a.b` need different bytes), and the header and
/// EDNS bits that are copied into responses (RD, CD, EDNS presence for the OPT record, DO).
struct Key {
    name: [u8; MAX_NAME],
    len: usize,
    qtype: u16,
    qclass: u16,
    bits: u8,
    /// 0 for whole answers; the client's size limit for truncated ones.
    limit: u16,
    /// For zone-dependent answers: the client zone they were made for (dns::zonal).
    zone: Option<ClientZone>,
}

impl Key {
    fn of(p: &Peek) -> Option<Key> {
        if p.qname.len() > MAX_NAME {
            return None;
        }
        let mut name = [0u8; MAX_NAME];
        name[..p.qname.len()].copy_from_slice(p.qname);
        let bits = u8::from(p.recursion_desired())
            | u8::from(p.checking_disabled()) << 1
            | u8::from(p.edns_payload.is_some()) << 2
            | u8::from(p.do_bit) << 3;
        Some(Key {
            name,
            len: p.qname.len(),
            qtype: p.qtype,
            qclass: p.qclass,
            bits,
            limit: 0,
            zone: None,
        })
    }

    fn name(&self) -> &[u8] {
        &self.name[..self.len]
    }

    fn matches(&self, e: &Entry) -> bool {
        e.qtype == self.qtype
            && e.qclass == self.qclass
            && e.bits == self.bits
            && e.limit == self.limit
            && e.zone == self.zone
            && *e.qname == *self.name()
    }
}

/// Map keys are already seeded hashes: hashing them again would only cost time.
#[derive(Default)]
struct PassThrough(u64);

impl std::hash::Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys are hashed here; fold anything else in rather than lose it.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type Shard = HashMap<u64, Entry, std::hash::BuildHasherDefault<PassThrough>>;

struct Entry {
    /// The rest of the key: two questions with the same hash may still differ.
    qname: Box<[u8]>,
    qtype: u16,
    qclass: u16,
    bits: u8,
    limit: u16,
    zone: Option<ClientZone>,
    /// This question's answers depend on the client's zone: look again with it (the entry
    /// holds no response).
    zonal: bool,
    generation: u64,
    bytes: Box<[u8]>,
    /// Where the TTL fields are, for answers whose TTLs count down (`Meta::lease`).
    ttls: Box<[u16]>,
    meta: Meta,
    /// Where the answer records are when each replay must reorder them (loadbalance).
    shuffle: Option<RecordRun>,
}

/// A run of equal-size answer records: `count` records of `size` bytes from `start`,
/// shuffled as two groups split at `split` (zone-first answers; `count` for one group).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RecordRun {
    start: usize,
    count: usize,
    size: usize,
    split: usize,
}

/// The answer section as equal-size A or AAAA records with compressed owner names (what
/// every address answer of ours looks like), or None.
fn address_run(bytes: &[u8], question_end: usize) -> Option<RecordRun> {
    let count = u16::from_be_bytes([*bytes.get(6)?, *bytes.get(7)?]) as usize;
    let mut i = question_end;
    let mut size = None;
    for _ in 0..count {
        let rr = bytes.get(i..i + 12)?;
        if rr[0] & 0xC0 != 0xC0 {
            return None; // owner not a pointer: sizes would vary
        }
        let rtype = u16::from_be_bytes([rr[2], rr[3]]);
        let rdlen = u16::from_be_bytes([rr[10], rr[11]]) as usize;
        if !matches!((rtype, rdlen), (1, 4) | (28, 16)) {
            return None;
        }
        let this = 12 + rdlen;
        if *size.get_or_insert(this) != this {
            return None;
        }
        i += this;
    }
    Some(RecordRun {
        start: question_end,
        count,
        size: size?,
        split: count,
    })
}

/// Shuffles each group of `run` on its own: records never move across the split.
fn shuffle_run(out: &mut [u8], run: RecordRun) {
    let split = run.split.min(run.count);
    shuffle_group(
        out,
        RecordRun {
            count: split,
            ..run
        },
    );
    shuffle_group(
        out,
        RecordRun {
            start: run.start + split * run.size,
            count: run.count - split,
            ..run
        },
    );
}

/// Fisher-Yates over the records of `run`, with a per-thread xorshift: no locks, no syscalls.
fn shuffle_group(out: &mut [u8], run: RecordRun) {
    use std::cell::Cell;
    thread_local!(static STATE: Cell<u64> = Cell::new(rand::random::<u64>() | 1));
    let mut tmp = [0u8; 28];
    for i in (1..run.count).rev() {
        let r = STATE.with(|s| {
            let mut x = s.get();
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            s.set(x);
            x
        });
        let j = (r % (i as u64 + 1)) as usize;
        if i == j {
            continue;
        }
        let (a, b) = (run.start + i * run.size, run.start + j * run.size);
        tmp[..run.size].copy_from_slice(&out[a..a + run.size]);
        out.copy_within(b..b + run.size, a);
        out[b..b + run.size].copy_from_slice(&tmp[..run.size]);
    }
}

/// A stored answer that is only valid while another cache holds it (the `cache` plugin's
/// hits): its TTLs count down, and it ends with that entry.
pub trait Lease: Send + Sync + std::fmt::Debug {
    /// The TTL every record of a replay gets now, counting the hit where the lender counts
    /// them; None when the answer may no longer be replayed (expired, replaced, evicted).
    fn renew(&self) -> Option<u32>;
}

/// What the metrics need to know about a stored answer.
#[derive(Debug, Clone)]
pub struct Meta {
    pub zone: Option<std::sync::Arc<str>>,
    pub plugin: &'static str,
    pub rcode: hickory_proto::op::ResponseCode,
    /// The answer's address records must be reordered on every replay.
    pub shuffled: bool,
    /// Set for answers lent by another cache (see [`Lease`]).
    pub lease: Option<std::sync::Arc<dyn Lease>>,
    /// A UDP reply truncated (TC) to this many bytes: replayed only to clients with exactly
    /// this limit (e.g. 512 for every client without EDNS), which would get the same bytes.
    pub truncated_for: Option<u16>,
    /// Zone-aware answers: the client zone it was made for (kept per zone), the result.
    pub zonal: ZonalTag,
}

/// Offsets of the TTL fields of every record after the question (the OPT record's "TTL" holds
/// EDNS flags and is skipped), or None when the message cannot be walked.
fn ttl_offsets(bytes: &[u8], question_end: usize) -> Option<Box<[u16]>> {
    let be = |i: usize| -> Option<usize> {
        Some(u16::from_be_bytes([*bytes.get(i)?, *bytes.get(i + 1)?]) as usize)
    };
    let count = be(6)? + be(8)? + be(10)?;
    let mut out = Vec::with_capacity(count);
    let mut i = question_end;
    for _ in 0..count {
        // Owner name: labels up to the root or a compression pointer.
        loop {
            let len = *bytes.get(i)? as usize;
            match len {
                0 => {
                    i += 1;
                    break;
                }
                l if l & 0xC0 == 0xC0 => {
                    i += 2;
                    break;
                }
                l if l <= 63 => i += 1 + l,
                _ => return None,
            }
        }
        let rtype = be(i)?;
        let rdlen = be(i + 8)?;
        if rtype != 41 {
            out.push(u16::try_from(i + 4).ok()?);
        }
        i += 10 + rdlen;
        if i > bytes.len() {
            return None;
        }
    }
    (i == bytes.len()).then(|| out.into_boxed_slice())
}

pub struct ResponseCache {
    shards: Vec<RwLock<Shard>>,
    /// Seeded per cache: names are chosen by clients. foldhash rather than SipHash: a third
    /// of the cost of a hit was hashing.
    hasher: foldhash::fast::RandomState,
}

impl Default for ResponseCache {
    fn default() -> Self {
        ResponseCache {
            shards: (0..SHARDS).map(|_| RwLock::new(Shard::default())).collect(),
            hasher: Default::default(),
        }
    }
}

impl ResponseCache {
    fn hash(&self, key: &Key) -> u64 {
        self.hasher.hash_one((
            key.name(),
            key.qtype,
            key.qclass,
            key.bits,
            key.limit,
            key.zone.as_ref().map(ClientZone::key_bytes),
        ))
    }

    fn shard(&self, hash: u64) -> &RwLock<Shard> {
        // The high bits pick the shard; the map uses the whole hash.
        &self.shards[(hash >> 60) as usize % SHARDS]
    }

    /// Writes the stored response for this question at this generation into `out`, with the
    /// query's id, if it fits `max_len`.
    pub fn get(
        &self,
        p: &Peek,
        generation: u64,
        max_len: usize,
        out: &mut Vec<u8>,
    ) -> Option<Meta> {
        self.get_zoned(p, generation, max_len, out, || ClientZone::Unknown)
    }

    /// [`ResponseCache::get`], with the client's zone from `client_zone` when (and only
    /// when) the stored answers of this question depend on it.
    pub fn get_zoned(
        &self,
        p: &Peek,
        generation: u64,
        max_len: usize,
        out: &mut Vec<u8>,
        client_zone: impl FnOnce() -> ClientZone,
    ) -> Option<Meta> {
        let mut key = Key::of(p)?;
        let mut whole = self.hash(&key);
        let mut shard = self.shard(whole).read().ok()?;
        let fits = |e: &&Entry| e.generation == generation && !e.zonal && e.bytes.len() <= max_len;
        // One lookup for every other answer: only a zone marker sends us to a second.
        let mut entry = shard.get(&whole).filter(|e| key.matches(e));
        if entry.is_some_and(|e| e.zonal && e.generation == generation) {
            drop(shard);
            key.zone = Some(client_zone());
            whole = self.hash(&key);
            shard = self.shard(whole).read().ok()?;
            entry = shard.get(&whole).filter(|e| key.matches(e));
        }
        let mut entry = entry.filter(fits);
        if entry.is_none() && max_len < usize::from(u16::MAX) {
            // The whole answer does not fit: the reply truncated for this limit, if stored.
            drop(shard);
            key.limit = max_len as u16;
            let hash = self.hash(&key);
            shard = self.shard(hash).read().ok()?;
            entry = shard.get(&hash).filter(|e| key.matches(e)).filter(fits);
        }
        let entry = entry?;
        let ttl = match &entry.meta.lease {
            Some(lease) => Some(lease.renew()?),
            None => None,
        };
        out.clear();
        out.extend_from_slice(&entry.bytes);
        let meta = entry.meta.clone();
        let shuffle = entry.shuffle;
        if let Some(ttl) = ttl {
            for &at in entry.ttls.iter() {
                let at = at as usize;
                out[at..at + 4].copy_from_slice(&ttl.to_be_bytes());
            }
        }
        drop(shard);
        if let Some(run) = shuffle {
            shuffle_run(out, run);
        }
        out[0..2].copy_from_slice(&p.id.to_be_bytes());
        Some(meta)
    }

    /// Stores `response` (for the question `p`) at `generation`. The response must carry the
    /// question at offset 12 uncompressed, which every encoder does.
    pub fn put(&self, p: &Peek, generation: u64, response: &[u8], meta: Meta) {
        if response.len() < 12 + p.qname.len() || response[12..12 + p.qname.len()] != *p.qname {
            return;
        }
        let question_end = 12 + p.qname.len() + 4;
        if meta.truncated_for.is_some() && meta.shuffled {
            // Replaying one truncated subset would always hand out the same few addresses.
            return;
        }
        let shuffle = if meta.shuffled {
            // Only answers whose records can be reordered as fixed-size chunks.
            match address_run(response, question_end) {
                Some(run) => Some(run),
                None => return,
            }
        } else {
            None
        };
        let ttls = if meta.lease.is_some() {
            match ttl_offsets(response, question_end) {
                Some(t) => t,
                None => return,
            }
        } else {
            Box::default()
        };
        let Some(mut key) = Key::of(p) else { return };
        if let Some(zone) = meta.zonal.client_zone.clone() {
            // The plain key says "ask again with the client's zone".
            self.insert(
                &key,
                generation,
                Box::default(),
                Box::default(),
                meta.clone(),
                None,
                true,
            );
            key.zone = Some(zone);
        }
        key.limit = meta.truncated_for.unwrap_or(0);
        let shuffle = shuffle.map(|mut run: RecordRun| {
            if let Some(k) = meta.zonal.first_group {
                run.split = usize::from(k).min(run.count);
            }
            run
        });
        self.insert(
            &key,
            generation,
            response.into(),
            ttls,
            meta,
            shuffle,
            false,
        );
    }

    #[allow(clippy::too_many_arguments)]
    fn insert(
        &self,
        key: &Key,
        generation: u64,
        bytes: Box<[u8]>,
        ttls: Box<[u16]>,
        meta: Meta,
        shuffle: Option<RecordRun>,
        zonal: bool,
    ) {
        let hash = self.hash(key);
        let Ok(mut shard) = self.shard(hash).write() else {
            return;
        };
        if shard.len() >= SHARD_CAPACITY {
            shard.retain(|_, e| e.generation == generation);
            if shard.len() >= SHARD_CAPACITY {
                shard.clear();
            }
        }
        shard.insert(
            hash,
            Entry {
                qname: key.name().into(),
                qtype: key.qtype,
                qclass: key.qclass,
                bits: key.bits,
                limit: key.limit,
                zone: key.zone.clone(),
                zonal,
                generation,
                bytes,
                ttls,
                meta,
                shuffle,
            },
        );
    }
}

#[cfg(test)]
mod shuffle_tests {
    use super::*;
    use hickory_proto::op::{Message, MessageType, OpCode, Query};
    use hickory_proto::rr::rdata::A;
    use hickory_proto::rr::{Name, RData, Record, RecordType};

    #[test]
    fn replays_of_shuffled_answers_come_in_varying_orders_with_the_same_records() {
        let name = Name::from_ascii("web.demo.svc.cluster.local.").unwrap();
        let mut q = Message::new(7, MessageType::Query, OpCode::Query);
        q.add_query(Query::query(name.clone(), RecordType::A));
        let qb = q.to_vec().unwrap();
        let p = peek(&qb).unwrap();
        let mut r = Message::new(7, MessageType::Response, OpCode::Query);
        r.add_query(Query::query(name.clone(), RecordType::A));
        for i in 1..=10u8 {
            r.add_answer(Record::from_rdata(
                name.clone(),
                5,
                RData::A(A::new(10, 0, 0, i)),
            ));
        }
        let bytes = r.to_vec().unwrap();
        let cache = ResponseCache::default();
        let meta = Meta {
            zone: None,
            plugin: "kubernetes",
            rcode: hickory_proto::op::ResponseCode::NoError,
            shuffled: true,
            lease: None,
            truncated_for: None,
            zonal: Default::default(),
        };
        cache.put(&p, 1, &bytes, meta);
        let mut orders = std::collections::HashSet::new();
        for _ in 0..20 {
            let mut out = Vec::new();
            cache.get(&p, 1, 4096, &mut out).expect("stored");
            let m = Message::from_vec(&out).unwrap();
            let ips: Vec<String> = m.answers.iter().map(|a| a.data.to_string()).collect();
            let mut sorted = ips.clone();
            sorted.sort();
            assert_eq!(sorted.len(), 10);
            orders.insert(ips);
        }
        assert!(orders.len() > 1, "every replay in the same order");
    }
}

#[cfg(test)]
mod zone_tests {
    use super::*;
    use crate::dns::zonal::{ClientZone, ZonalResult, ZonalTag};
    use hickory_proto::op::{Message, MessageType, OpCode, Query};
    use hickory_proto::rr::rdata::A;
    use hickory_proto::rr::{Name, RData, Record, RecordType};

    fn response(name: &Name, last: u8) -> Vec<u8> {
        let mut r = Message::new(7, MessageType::Response, OpCode::Query);
        r.add_query(Query::query(name.clone(), RecordType::A));
        for i in 1..=last {
            r.add_answer(Record::from_rdata(
                name.clone(),
                5,
                RData::A(A::new(10, 0, 0, i)),
            ));
        }
        r.to_vec().unwrap()
    }

    fn meta(zone: &str, first_group: Option<u16>, shuffled: bool) -> Meta {
        Meta {
            zone: None,
            plugin: "kubernetes",
            rcode: hickory_proto::op::ResponseCode::NoError,
            shuffled,
            lease: None,
            truncated_for: None,
            zonal: ZonalTag {
                client_zone: Some(ClientZone::Known(zone.into())),
                result: Some(ZonalResult::InZone),
                first_group,
            },
        }
    }

    #[test]
    fn zone_dependent_answers_are_kept_per_client_zone() {
        let name = Name::from_ascii("db.shop.svc.cluster.local.").unwrap();
        let mut q = Message::new(7, MessageType::Query, OpCode::Query);
        q.add_query(Query::query(name.clone(), RecordType::A));
        let qb = q.to_vec().unwrap();
        let p = peek(&qb).unwrap();
        let cache = ResponseCache::default();
        cache.put(&p, 1, &response(&name, 1), meta("a", None, false));
        cache.put(&p, 1, &response(&name, 2), meta("b", None, false));
        let count = |zone: ClientZone| {
            let mut out = Vec::new();
            cache.get_zoned(&p, 1, 4096, &mut out, || zone)?;
            Some(Message::from_vec(&out).unwrap().answers.len())
        };
        assert_eq!(count(ClientZone::Known("a".into())), Some(1));
        assert_eq!(count(ClientZone::Known("b".into())), Some(2));
        assert_eq!(
            count(ClientZone::Known("c".into())),
            None,
            "no entry for zone c"
        );
        assert_eq!(count(ClientZone::Unknown), None);
        let mut out = Vec::new();
        assert!(
            cache.get(&p, 1, 4096, &mut out).is_none(),
            "the zone marker is never replayed as an answer"
        );
    }

    #[test]
    fn replays_shuffle_within_each_group_only() {
        let name = Name::from_ascii("kafka.shop.svc.cluster.local.").unwrap();
        let mut q = Message::new(7, MessageType::Query, OpCode::Query);
        q.add_query(Query::query(name.clone(), RecordType::A));
        let qb = q.to_vec().unwrap();
        let p = peek(&qb).unwrap();
        let cache = ResponseCache::default();
        cache.put(&p, 1, &response(&name, 8), meta("a", Some(3), true));
        let mut orders = std::collections::HashSet::new();
        for _ in 0..40 {
            let mut out = Vec::new();
            cache
                .get_zoned(&p, 1, 4096, &mut out, || ClientZone::Known("a".into()))
                .expect("stored");
            let ips: Vec<String> = Message::from_vec(&out)
                .unwrap()
                .answers
                .iter()
                .map(|a| a.data.to_string())
                .collect();
            let mut near = ips[..3].to_vec();
            near.sort();
            assert_eq!(near, ["10.0.0.1", "10.0.0.2", "10.0.0.3"], "{ips:?}");
            orders.insert(ips);
        }
        assert!(orders.len() > 1, "never shuffled");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
    use hickory_proto::rr::{Name, RecordType};

    fn query(name: &str, edns: bool) -> Vec<u8> {
        let mut m = Message::new(0x4242, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
        if edns {
            let mut e = Edns::new();
            e.set_max_payload(1232);
            m.set_edns(e);
        }
        m.to_vec().unwrap()
    }

    #[test]
    fn peeks_plain_queries_and_refuses_the_rest() {
        let q = query("Nginx.demo.svc.cluster.local.", true);
        let p = peek(&q).unwrap();
        assert_eq!(p.id, 0x4242);
        assert_eq!(p.qtype, 1);
        assert_eq!(p.edns_payload, Some(1232));
        assert!(p.recursion_desired());
        assert_eq!(peek(&query("a.b.", false)).unwrap().edns_payload, None);
        assert!(peek(&q[..q.len() - 1]).is_none(), "truncated OPT");
        let mut response = q.clone();
        response[2] |= 0x80;
        assert!(peek(&response).is_none());
        let mut ptr = q.clone();
        ptr[12] = 0xC0;
        assert!(peek(&ptr).is_none());
    }

    #[test]
    fn hits_patch_id_keep_case_and_generations_invalidate() {
        let cache = ResponseCache::default();
        let q1 = query("nginx.demo.svc.cluster.local.", false);
        let p1 = peek(&q1).unwrap();
        let mut resp = Message::new(0x4242, MessageType::Response, OpCode::Query);
        resp.add_query(Query::query(
            Name::from_ascii("nginx.demo.svc.cluster.local.").unwrap(),
            RecordType::A,
        ));
        let bytes = resp.to_vec().unwrap();
        let meta = Meta {
            zone: None,
            plugin: "kubernetes",
            rcode: hickory_proto::op::ResponseCode::NoError,
            shuffled: false,
            lease: None,
            truncated_for: None,
            zonal: Default::default(),
        };
        cache.put(&p1, 1, &bytes, meta.clone());

        // Another letter case is another question: its answer's names carry its own case.
        let upper = query("NGINX.demo.svc.cluster.local.", false);
        let mut out = Vec::new();
        assert!(cache
            .get(&peek(&upper).unwrap(), 1, 512, &mut out)
            .is_none());

        let mut q2 = q1.clone();
        q2[0] = 0x01;
        q2[1] = 0x02;
        let p2 = peek(&q2).unwrap();
        let mut hit = Vec::new();
        let meta = cache.get(&p2, 1, 512, &mut hit).unwrap();
        assert_eq!(meta.plugin, "kubernetes");
        assert_eq!(&hit[0..2], &[0x01, 0x02]);
        let m = Message::from_vec(&hit).unwrap();
        assert_eq!(
            m.queries[0].name().to_ascii(),
            "nginx.demo.svc.cluster.local."
        );
        assert!(
            cache.get(&p2, 2, 512, &mut out).is_none(),
            "a newer snapshot misses"
        );
        assert!(
            cache.get(&p2, 1, 10, &mut out).is_none(),
            "too big for the client"
        );
        let q3 = query("nginx.demo.svc.cluster.local.", true);
        assert!(
            cache.get(&peek(&q3).unwrap(), 1, 512, &mut out).is_none(),
            "EDNS is part of the key"
        );
    }

    #[derive(Debug)]
    struct Countdown(std::sync::Mutex<Vec<Option<u32>>>);

    impl Lease for Countdown {
        fn renew(&self) -> Option<u32> {
            self.0.lock().unwrap().pop().flatten()
        }
    }

    #[test]
    fn leased_answers_get_the_lenders_ttl_and_end_with_it() {
        use hickory_proto::rr::rdata::{A, SOA};
        use hickory_proto::rr::{RData, Record};
        let cache = ResponseCache::default();
        let name = Name::from_ascii("example.com.").unwrap();
        let q = query("example.com.", true);
        let p = peek(&q).unwrap();
        let mut resp = Message::new(0x4242, MessageType::Response, OpCode::Query);
        resp.add_query(Query::query(name.clone(), RecordType::A));
        for i in 1..=2 {
            resp.add_answer(Record::from_rdata(
                name.clone(),
                30,
                RData::A(A::new(192, 0, 2, i)),
            ));
        }
        let soa = SOA::new(
            Name::from_ascii("ns.example.com.").unwrap(),
            Name::from_ascii("h.example.com.").unwrap(),
            1,
            2,
            3,
            4,
            5,
        );
        resp.add_authority(Record::from_rdata(name.clone(), 30, RData::SOA(soa)));
        let mut e = Edns::new();
        e.set_max_payload(1232);
        e.set_dnssec_ok(true);
        resp.set_edns(e);
        let bytes = resp.to_vec().unwrap();
        // Renewals are popped from the end: 7, then 6, then over.
        let lease = std::sync::Arc::new(Countdown(std::sync::Mutex::new(vec![
            None,
            Some(6),
            Some(7),
        ])));
        let meta = Meta {
            zone: None,
            plugin: "cache",
            rcode: hickory_proto::op::ResponseCode::NoError,
            shuffled: false,
            lease: Some(lease),
            truncated_for: None,
            zonal: Default::default(),
        };
        cache.put(&p, 1, &bytes, meta);
        let mut out = Vec::new();
        for want in [7, 6] {
            cache
                .get(&p, 1, 4096, &mut out)
                .expect("replayed while the lease holds");
            let m = Message::from_vec(&out).unwrap();
            let ttls: Vec<u32> = m
                .answers
                .iter()
                .chain(&m.authorities)
                .map(|r| r.ttl)
                .collect();
            assert_eq!(ttls, vec![want; 3]);
            let edns = m.edns.expect("OPT kept");
            assert!(
                edns.flags().dnssec_ok,
                "the OPT record's flags are not a TTL"
            );
            assert_eq!(edns.max_payload(), 1232);
        }
        assert!(
            cache.get(&p, 1, 4096, &mut out).is_none(),
            "the lease ended"
        );
    }
}
