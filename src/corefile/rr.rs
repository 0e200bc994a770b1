//! One resource record in zone-file text, as the Corefile writes them (`template`'s literal
//! answers, checked when the Corefile loads) and as the template plugin renders them per query.
//! Text in, record out: it sits here, below both, so the built plugins depend on the Corefile
//! front end and never the other way.

use hickory_proto::rr::{Name, RData, Record, RecordType};

/// Parses one resource record in zone-file form: `NAME [TTL] [CLASS] TYPE RDATA`.
pub fn parse_rr(text: &str) -> Result<Record, String> {
    let mut words = text.split_whitespace();
    let name_word = words.next().ok_or("empty record")?;
    let mut name =
        Name::from_ascii(name_word).map_err(|_| format!("bad owner name {name_word:?}"))?;
    name.set_fqdn(true);
    let mut ttl = 3600;
    let mut word = words.next().ok_or("record without a type")?;
    if let Ok(t) = word.parse::<u32>() {
        ttl = t;
        word = words.next().ok_or("record without a type")?;
    }
    if word.eq_ignore_ascii_case("IN") || word.eq_ignore_ascii_case("CH") {
        word = words.next().ok_or("record without a type")?;
    }
    let rtype: RecordType = word
        .to_ascii_uppercase()
        .parse()
        .map_err(|_| format!("unknown record type {word:?}"))?;
    let rdata_text = words.collect::<Vec<_>>().join(" ");
    let rdata =
        RData::try_from_str(rtype, &rdata_text).map_err(|e| format!("bad {rtype} data: {e}"))?;
    Ok(Record::from_rdata(name, ttl, rdata))
}
