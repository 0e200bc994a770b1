//! Bytes in, bytes out: validation of incoming messages, and responses with EDNS and
//! truncation. Malformed input never panics: it gets FORMERR when the header can be read and a
//! reply makes sense, and no reply otherwise.

use hickory_proto::op::{Edns, Message, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::{DNSClass, Record};

use super::answer::Answer;

/// The EDNS payload size we advertise: the DNS flag day 2020 value, safe from fragmentation.
pub const EDNS_PAYLOAD: u16 = 1232;
/// Plain DNS over UDP without EDNS.
pub const MIN_UDP_PAYLOAD: usize = 512;

#[derive(Debug)]
pub enum Incoming {
    /// A well-formed query with one question.
    Query(Box<Message>),
    /// Answer with these bytes right away (FORMERR, NOTIMP, BADVERS, REFUSED).
    Reply(Vec<u8>),
    /// Too broken to answer, or a response sent to us: stay silent.
    Drop,
}

fn header_reply(id: u16, op_code: OpCode, rcode: ResponseCode) -> Vec<u8> {
    let msg = Message::error_msg(id, op_code, rcode);
    msg.to_vec().unwrap_or_default()
}

pub fn parse(bytes: &[u8]) -> Incoming {
    if bytes.len() < 12 {
        return Incoming::Drop;
    }
    if bytes[2] & 0x80 != 0 {
        return Incoming::Drop; // QR set: a response, never answer it (reflection loops)
    }
    let id = u16::from_be_bytes([bytes[0], bytes[1]]);
    let op_code = OpCode::from_u8((bytes[2] >> 3) & 0x0f);
    let msg = match Message::from_vec(bytes) {
        Ok(m) => m,
        Err(_) => return Incoming::Reply(header_reply(id, op_code, ResponseCode::FormErr)),
    };
    if msg.metadata.op_code != OpCode::Query {
        return Incoming::Reply(header_reply(id, op_code, ResponseCode::NotImp));
    }
    if msg.queries.len() != 1 {
        return Incoming::Reply(header_reply(id, op_code, ResponseCode::FormErr));
    }
    if let Some(edns) = &msg.edns {
        if edns.version() > 0 {
            let mut reply = Message::error_msg(id, op_code, ResponseCode::BADVERS);
            reply.queries = msg.queries.clone();
            let mut e = Edns::new();
            e.set_max_payload(EDNS_PAYLOAD);
            reply.set_edns(e);
            return Incoming::Reply(reply.to_vec().unwrap_or_default());
        }
    }
    let q = &msg.queries[0];
    if q.query_class() != DNSClass::IN && q.query_class() != DNSClass::ANY {
        let mut reply = Message::error_msg(id, op_code, ResponseCode::Refused);
        reply.queries = msg.queries.clone();
        return Incoming::Reply(reply.to_vec().unwrap_or_default());
    }
    Incoming::Query(Box::new(msg))
}

/// The largest UDP response the client accepts.
pub fn max_udp_size(req: &Message) -> usize {
    req.edns
        .as_ref()
        .map(|e| (e.max_payload() as usize).max(MIN_UDP_PAYLOAD))
        .unwrap_or(MIN_UDP_PAYLOAD)
}

fn build(req: &Message, answer: &Answer, answers: &[Record], full: bool, tc: bool) -> Message {
    let mut metadata = Metadata::new(req.metadata.id, MessageType::Response, req.metadata.op_code);
    metadata.authoritative = answer.authoritative;
    metadata.recursion_desired = req.metadata.recursion_desired;
    metadata.recursion_available = answer.recursion_available;
    metadata.checking_disabled = req.metadata.checking_disabled;
    metadata.response_code = answer.rcode;
    metadata.truncation = tc;
    let mut msg = Message::new(req.metadata.id, MessageType::Response, req.metadata.op_code);
    msg.metadata = metadata;
    msg.queries = req.queries.clone();
    msg.answers = answers.to_vec();
    if full {
        msg.authorities = answer.authorities.clone();
        msg.additionals = answer.additionals.clone();
    }
    if req.edns.is_some() {
        let mut e = Edns::new();
        e.set_max_payload(EDNS_PAYLOAD);
        msg.set_edns(e);
    }
    msg
}

/// Serialises the response. With `max_size` (UDP), an answer that does not fit is cut to the
/// records that do, with TC set, so the client retries over TCP for the rest.
pub fn encode(req: &Message, answer: &Answer, max_size: Option<usize>) -> Vec<u8> {
    let full = build(req, answer, &answer.answers, true, false);
    let bytes = match full.to_vec() {
        Ok(b) => b,
        Err(_) => {
            return header_reply(
                req.metadata.id,
                req.metadata.op_code,
                ResponseCode::ServFail,
            )
        }
    };
    let Some(max) = max_size else { return bytes };
    if bytes.len() <= max {
        return bytes;
    }
    // Largest prefix of the answer section that fits (binary search: large headless
    // services can have thousands of records).
    let (mut lo, mut hi) = (0usize, answer.answers.len());
    let mut best = build(req, answer, &[], false, true)
        .to_vec()
        .unwrap_or_default();
    while lo < hi {
        let mid = (lo + hi).div_ceil(2);
        let candidate = build(req, answer, &answer.answers[..mid], false, true)
            .to_vec()
            .unwrap_or_default();
        if !candidate.is_empty() && candidate.len() <= max {
            best = candidate;
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    best
}

/// A response that says only `rcode` for a parsed query (SERVFAIL on internal trouble).
pub fn rcode_reply(req: &Message, rcode: ResponseCode) -> Vec<u8> {
    encode(req, &Answer::rcode(rcode, ""), None)
}
