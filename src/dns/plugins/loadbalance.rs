//! `loadbalance`: shuffles A, AAAA and MX records in every answer so clients that take the
//! first address spread over all of them; CNAMEs stay first so the chain still reads in order.

use hickory_proto::rr::{Record, RecordType};
use rand::seq::SliceRandom;

use crate::dns::answer::Answer;
use crate::dns::pipeline::{Flow, Handler, Request};

pub struct Loadbalance;

/// CNAMEs first (in order), then the shuffled addresses, then shuffled MX, then the rest.
pub fn shuffle(records: Vec<Record>) -> Vec<Record> {
    if records.len() < 2 {
        return records;
    }
    let (mut cname, mut addr, mut mx, mut rest) = (vec![], vec![], vec![], vec![]);
    for r in records {
        match r.record_type() {
            RecordType::CNAME => cname.push(r),
            RecordType::A | RecordType::AAAA => addr.push(r),
            RecordType::MX => mx.push(r),
            _ => rest.push(r),
        }
    }
    let mut rng = rand::rng();
    addr.shuffle(&mut rng);
    mx.shuffle(&mut rng);
    cname.extend(addr);
    cname.extend(mx);
    cname.extend(rest);
    cname
}

impl Handler for Loadbalance {
    fn name(&self) -> &'static str {
        "loadbalance"
    }

    fn handle(&self, _req: &Request) -> Flow {
        Flow::Then(Box::new(|mut a: Answer| {
            // A shuffled answer may only be replayed from the response cache shuffled again.
            let addresses = a
                .answers
                .iter()
                .filter(|r| {
                    matches!(
                        r.record_type(),
                        RecordType::A | RecordType::AAAA | RecordType::MX
                    )
                })
                .count();
            if addresses > 1 {
                a.shuffled = true;
            }
            // Zone-first answers shuffle within each group, never across (dns::zonal).
            match a.zonal.first_group.map(usize::from) {
                Some(k) if k < a.answers.len() => {
                    let far = a.answers.split_off(k);
                    a.answers = shuffle(std::mem::take(&mut a.answers));
                    a.answers.extend(shuffle(far));
                }
                _ => a.answers = shuffle(std::mem::take(&mut a.answers)),
            }
            a
        }))
    }

    fn pure(&self) -> bool {
        true
    }
}
