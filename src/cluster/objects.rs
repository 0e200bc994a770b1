//! Kubernetes objects read from files, exactly as `kubectl get ... -o yaml` and `-o json` print
//! them: single objects, `List` kinds (`kubectl get svc -o yaml` prints a `v1/List`), and
//! multi-document YAML. Kinds DNS does not use (Deployments, ConfigMaps, ...) are skipped so a
//! whole `kubectl get all -A -o yaml` dump can be pointed at as is.

use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Endpoints, Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde::de::DeserializeOwned;

/// Every object of the kinds clusterdns reads, as the API types k8s-openapi defines.
#[derive(Debug, Default, Clone)]
pub struct ObjectSet {
    pub namespaces: Vec<Namespace>,
    pub services: Vec<Service>,
    pub endpoint_slices: Vec<EndpointSlice>,
    /// v1 Endpoints: used only for services that have no EndpointSlice (old dumps).
    pub endpoints: Vec<Endpoints>,
    pub pods: Vec<Pod>,
    pub nodes: Vec<Node>,
    /// Objects of other kinds that were skipped, e.g. `apps/v1 Deployment`.
    pub skipped: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: document {document}: invalid YAML/JSON: {message}")]
    Syntax {
        path: PathBuf,
        document: usize,
        message: String,
    },
    #[error("{path}: document {document}: {object}: {message}")]
    Object {
        path: PathBuf,
        document: usize,
        /// `Kind namespace/name` of the object that failed.
        object: String,
        message: String,
    },
}

impl ObjectSet {
    pub fn extend(&mut self, other: ObjectSet) {
        self.namespaces.extend(other.namespaces);
        self.services.extend(other.services);
        self.endpoint_slices.extend(other.endpoint_slices);
        self.endpoints.extend(other.endpoints);
        self.pods.extend(other.pods);
        self.nodes.extend(other.nodes);
        self.skipped += other.skipped;
    }

    pub fn len(&self) -> usize {
        self.namespaces.len()
            + self.services.len()
            + self.endpoint_slices.len()
            + self.endpoints.len()
            + self.pods.len()
            + self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Parses one file's text (YAML or JSON; JSON is YAML) and adds its objects.
    pub fn add_text(&mut self, text: &str, path: &Path) -> Result<(), LoadError> {
        add_text_to(self, text, path)
    }
}

/// Where parsed objects go: kept whole ([`ObjectSet`]) or stripped on arrival (the store),
/// so a large dump never exists twice in memory.
pub trait Sink {
    fn namespace(&mut self, o: Namespace);
    fn service(&mut self, o: Service);
    fn endpoint_slice(&mut self, o: EndpointSlice);
    fn endpoints(&mut self, o: Endpoints);
    fn pod(&mut self, o: Pod);
    fn node(&mut self, o: Node);
    fn skip(&mut self);
    /// Whether objects of this kind are kept at all: when not, fast paths skip such items
    /// without parsing them.
    fn wants(&self, _api_version: &str, _kind: &str) -> bool {
        true
    }
    /// Whether a pod that is not kept (see `wants`) should still give its IPs and node
    /// (zone-aware answers need only that: cluster::zones).
    fn wants_pod_placement(&self) -> bool {
        false
    }
    fn pod_placement(&mut self, _ips: &[std::net::IpAddr], _node: Option<&str>) {}
}

/// The two fields of a Pod that say where its IPs are, read without the rest of the object
/// (serde skips the other fields without building them).
#[derive(serde::Deserialize)]
struct PodPlacement {
    spec: Option<PlacementSpec>,
    status: Option<PlacementStatus>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct PlacementSpec {
    node_name: Option<String>,
    host_network: Option<bool>,
}

#[derive(serde::Deserialize)]
struct PlacementStatus {
    #[serde(rename = "podIP")]
    pod_ip: Option<String>,
    #[serde(rename = "podIPs")]
    pod_ips: Option<Vec<PlacementIp>>,
}

#[derive(serde::Deserialize)]
struct PlacementIp {
    ip: String,
}

/// A pod the sink does not keep but whose placement it wants: read just that. False when
/// this is not such an item or it does not parse (the usual path then passes it over).
fn placement_item<S: Sink>(
    head: Option<(&str, &str)>,
    sink: &mut S,
    format: Format,
    text: &str,
) -> bool {
    if head != Some(("v1", "Pod")) || sink.wants("v1", "Pod") || !sink.wants_pod_placement() {
        return false;
    }
    let Some(p) = parse_one::<PodPlacement>(format, text) else {
        return false;
    };
    let spec = p.spec.as_ref();
    // hostNetwork pods share their node's address: that IP is the node's, not theirs.
    if spec.and_then(|s| s.host_network).unwrap_or(false) {
        return true;
    }
    let status = p.status.as_ref();
    let mut ips: Vec<std::net::IpAddr> = status
        .and_then(|s| s.pod_ips.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|i| i.ip.trim().parse().ok())
        .collect();
    if ips.is_empty() {
        ips.extend(
            status
                .and_then(|s| s.pod_ip.as_deref())
                .and_then(|i| i.trim().parse::<std::net::IpAddr>().ok()),
        );
    }
    sink.pod_placement(&ips, spec.and_then(|s| s.node_name.as_deref()));
    true
}

impl Sink for ObjectSet {
    fn namespace(&mut self, o: Namespace) {
        self.namespaces.push(o)
    }
    fn service(&mut self, o: Service) {
        self.services.push(o)
    }
    fn endpoint_slice(&mut self, o: EndpointSlice) {
        self.endpoint_slices.push(o)
    }
    fn endpoints(&mut self, o: Endpoints) {
        self.endpoints.push(o)
    }
    fn pod(&mut self, o: Pod) {
        self.pods.push(o)
    }
    fn node(&mut self, o: Node) {
        self.nodes.push(o)
    }
    fn skip(&mut self) {
        self.skipped += 1
    }
}

/// A [`Sink`] that can be filled in parts on several threads: each part fills a `fork`, and the
/// parts are joined back in file order (a later object replaces an earlier one with the same
/// name, as in one sequential read).
pub trait Fork: Sink + Send + Sized {
    /// An empty sink with the same settings.
    fn fork(&self) -> Self;
    /// Adds what `later` holds, which was read after everything `self` holds.
    fn join(&mut self, later: Self);
}

impl Fork for ObjectSet {
    fn fork(&self) -> Self {
        ObjectSet::default()
    }
    fn join(&mut self, later: Self) {
        self.extend(later)
    }
}

/// Parses one file's text into `sink`.
///
/// Fast paths for what kubectl prints: a JSON `List` is split into its items with
/// `serde_json::value::RawValue`, and a block-style YAML `List` (`items:` then `- ` entries at
/// column 0) into item chunks by line; the items are then parsed independently, on every core.
/// serde_yaml builds all of a document's events before deserialising, so the whole-document
/// parse of a 100 000-pod dump costs over a gigabyte; a chunk costs one item's worth.
/// Anything else (flow style, anchors across items, directives, ...) and every syntax error
/// goes through the whole-document parse ([`add_text_sequential`]), which stays the reference:
/// a chunk that does not parse on its own sends the file there.
pub fn add_text_to<S: Fork>(sink: &mut S, text: &str, path: &Path) -> Result<(), LoadError> {
    let parts = if text.trim_start().starts_with('{') {
        json_parts(text, path, sink)
    } else {
        yaml_parts(text, path, sink)
    };
    match parts {
        Ok(Some(parts)) => {
            for part in parts {
                sink.join(part);
            }
            Ok(())
        }
        Err(e @ LoadError::Object { .. }) => Err(e),
        // Not a layout the fast path reads, or a syntax error: the reference parse decides
        // (and reports syntax errors with the line in the file).
        Ok(None) | Err(_) => add_text_sequential(sink, text, path),
    }
}

/// Below this many bytes a file is parsed on the calling thread (unit tests split everything,
/// so the threaded path is the one they check).
const PARALLEL_MIN_BYTES: usize = if cfg!(test) { 1 } else { 256 * 1024 };

/// Runs `f` over `units` in contiguous runs of about equal size, one per core, each into its
/// own fork of `sink`. Returns the forks in order, or the error of the earliest failing unit.
fn run_parts<S: Fork, U: Sync>(
    sink: &S,
    units: &[U],
    size: impl Fn(&U) -> usize,
    f: impl Fn(&U, &mut S) -> Result<(), LoadError> + Sync,
) -> Result<Vec<S>, LoadError> {
    let total: usize = units.iter().map(&size).sum();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = if total < PARALLEL_MIN_BYTES {
        1
    } else {
        cores.min(units.len()).max(1)
    };
    let run = |range: &[U], mut part: S| -> (S, Option<LoadError>) {
        for unit in range {
            if let Err(e) = f(unit, &mut part) {
                return (part, Some(e));
            }
        }
        (part, None)
    };
    let mut ranges = Vec::with_capacity(threads);
    let (mut from, mut acc) = (0, 0);
    for (i, unit) in units.iter().enumerate() {
        acc += size(unit);
        if acc * threads >= total * (ranges.len() + 1) && ranges.len() + 1 < threads {
            ranges.push(&units[from..=i]);
            from = i + 1;
        }
    }
    ranges.push(&units[from..]);
    let results: Vec<(S, Option<LoadError>)> = if ranges.len() == 1 {
        vec![run(ranges[0], sink.fork())]
    } else {
        std::thread::scope(|scope| {
            // Forked here: a sink need not be shared between threads, only sent.
            let handles: Vec<_> = ranges
                .iter()
                .map(|range| {
                    let part = sink.fork();
                    scope.spawn(|| run(range, part))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                .collect()
        })
    };
    let mut parts = Vec::with_capacity(results.len());
    for (part, error) in results {
        // Each run stops at its first error, and runs are in file order: the first error
        // found is the earliest.
        if let Some(e) = error {
            return Err(e);
        }
        parts.push(part);
    }
    Ok(parts)
}

/// A piece of a YAML file parsed on its own.
enum Unit<'a> {
    /// A whole document (not a block-style List).
    Document { document: usize, text: &'a str },
    /// One `- ...` entry of a List's `items:`, parsed as a one-entry sequence.
    Item { document: usize, text: &'a str },
}

impl Unit<'_> {
    fn text(&self) -> &str {
        match self {
            Unit::Document { text, .. } | Unit::Item { text, .. } => text,
        }
    }
}

/// Lines with their byte offsets (each line keeps its `\n`).
fn lines_with_offsets(text: &str) -> impl Iterator<Item = (usize, &str)> {
    // memchr: these passes run over the whole file before the threads start.
    let ends = memchr::memchr_iter(b'\n', text.as_bytes()).map(|i| i + 1);
    let ends = ends.chain((!text.ends_with('\n') && !text.is_empty()).then_some(text.len()));
    let mut offset = 0;
    ends.map(move |end| {
        let at = offset;
        offset = end;
        (at, &text[at..end])
    })
}

/// Whether a line holds nothing a parser sees (blank or a comment).
fn is_blank(line: &str) -> bool {
    let t = line.trim_start();
    t.is_empty() || t.starts_with('#')
}

/// Splits a YAML file into documents at `---` lines (as a YAML parser does: `---` at column 0
/// always ends a document), numbered as serde_yaml numbers them. None when the file uses
/// something this does not follow (directives, `...`, content after `---`).
fn yaml_documents(text: &str) -> Option<Vec<(usize, &str)>> {
    let mut docs = Vec::new();
    let (mut start, mut marker, mut content) = (0, false, false);
    for (at, line) in lines_with_offsets(text) {
        if line.starts_with('%') || line.starts_with("...") {
            return None;
        }
        if let Some(rest) = line.strip_prefix("---") {
            if !rest.trim().is_empty() {
                return None;
            }
            if marker || content {
                docs.push(&text[start..at]);
            }
            (start, marker, content) = (at + line.len(), true, false);
        } else if !is_blank(line) {
            content = true;
        }
    }
    if marker || content {
        docs.push(&text[start..]);
    }
    Some(
        docs.into_iter()
            .enumerate()
            .map(|(i, d)| (i + 1, d))
            .collect(),
    )
}

/// A block-style List document as kubectl prints it: its item chunks, or None when the
/// document is laid out otherwise (it is then parsed whole). The other top-level keys
/// (`apiVersion`, `kind`, `metadata`) are checked to parse as a mapping without `items`.
fn block_list_items(doc: &str) -> Option<Vec<&str>> {
    #[derive(PartialEq)]
    enum At {
        Before,
        Items,
        After,
    }
    let mut at = At::Before;
    let mut rest = String::new();
    let mut items = Vec::new();
    let mut item: Option<usize> = None;
    for (offset, line) in lines_with_offsets(doc) {
        match at {
            At::Before if line.trim_end() == "items:" => at = At::Items,
            At::Items if line.starts_with("- ") || line.trim_end() == "-" => {
                if let Some(from) = item {
                    items.push(&doc[from..offset]);
                }
                item = Some(offset);
            }
            // Continuation of the current item (or blank lines and comments between items).
            At::Items if line.starts_with([' ', '\t']) || is_blank(line) => {
                if item.is_none() && !is_blank(line) {
                    return None; // an indented sequence (`items:\n  - ...`): not this layout
                }
            }
            At::Items => {
                if let Some(from) = item.take() {
                    items.push(&doc[from..offset]);
                }
                at = At::After;
                rest.push_str(line);
            }
            At::After if line.trim_end() == "items:" => return None,
            At::Before | At::After => rest.push_str(line),
        }
    }
    if at == At::Before {
        return None;
    }
    if let Some(from) = item {
        items.push(&doc[from..]);
    }
    match serde_yaml::from_str::<serde_yaml::Value>(&rest) {
        Ok(serde_yaml::Value::Null) => Some(items),
        Ok(serde_yaml::Value::Mapping(m)) if !m.contains_key("items") => Some(items),
        _ => None,
    }
}

fn yaml_parts<S: Fork>(text: &str, path: &Path, sink: &S) -> Result<Option<Vec<S>>, LoadError> {
    let Some(docs) = yaml_documents(text) else {
        return Ok(None);
    };
    let mut units = Vec::new();
    for (document, doc) in docs {
        match block_list_items(doc) {
            Some(items) => {
                units.extend(items.into_iter().map(|text| Unit::Item { document, text }))
            }
            None => units.push(Unit::Document {
                document,
                text: doc,
            }),
        }
    }
    let syntax = |document, e: serde_yaml::Error| LoadError::Syntax {
        path: path.to_owned(),
        document,
        message: e.to_string(),
    };
    run_parts(
        sink,
        &units,
        |u| u.text().len(),
        |unit, part| match *unit {
            Unit::Item { document, text } => {
                let head = yaml_item_head(text);
                if placement_item(head, part, Format::YamlItem, text)
                    || pass_over(head, part)
                    || typed_item(head, part, Format::YamlItem, text)
                {
                    return Ok(());
                }
                let items: Vec<serde_yaml::Value> =
                    serde_yaml::from_str(text).map_err(|e| syntax(document, e))?;
                for item in items {
                    add_value_to(part, item, path, document)?;
                }
                Ok(())
            }
            Unit::Document { document, text } => {
                for doc in serde_yaml::Deserializer::from_str(text) {
                    add_document(part, doc, path, document)?;
                }
                Ok(())
            }
        },
    )
    .map(Some)
}

/// A JSON document: a `List`'s items are cut out by [`json_list_items`] and parsed in
/// parallel; any other object is parsed whole.
fn json_parts<S: Fork>(text: &str, path: &Path, sink: &S) -> Result<Option<Vec<S>>, LoadError> {
    // serde_json lets a repeated key's last value win, where the reference parse refuses the
    // file: such a file goes to the reference parse, which says where.
    if serde_json::from_str::<UniqueKeys>(text).is_err() {
        return Ok(None);
    }
    let parse = |text: &str, part: &mut S| {
        let head = json_item_head(text);
        if placement_item(head, part, Format::Json, text)
            || pass_over(head, part)
            || typed_item(head, part, Format::Json, text)
        {
            return Ok(());
        }
        match serde_json::from_str(text) {
            Ok(value) => add_value_to(part, json_to_yaml(value), path, 1),
            Err(e) => Err(LoadError::Syntax {
                path: path.to_owned(),
                document: 1,
                message: e.to_string(),
            }),
        }
    };
    match json_list_items(text) {
        Some(JsonTop::List(items)) => {
            run_parts(sink, &items, |i| i.len(), |i, p| parse(i, p)).map(Some)
        }
        Some(JsonTop::Object) => {
            let mut part = sink.fork();
            parse(text, &mut part)?;
            Ok(Some(vec![part]))
        }
        // Maybe YAML after all (`{a: 1}`), or broken: the reference parse says.
        None => Ok(None),
    }
}

enum JsonTop<'a> {
    List(Vec<&'a str>),
    Object,
}

/// The items of a JSON object's `items` array, as text (each is parsed, and so checked, by
/// serde_json later; the other top-level values are checked here). None when the text is not
/// one JSON object.
fn json_list_items(text: &str) -> Option<JsonTop<'_>> {
    let b = text.as_bytes();
    let ws = |i| json_ws(b, i);
    let string = |i| json_string_end(b, i);
    let value = |i| json_value_end(b, i);
    let checked = |s: &str| serde_json::from_str::<serde::de::IgnoredAny>(s).is_ok();
    let mut i = ws(0);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    i = ws(i + 1);
    let mut items = None;
    if b.get(i) == Some(&b'}') {
        i += 1;
    } else {
        loop {
            let key_end = string(i).filter(|_| b[i] == b'"')?;
            let key: String = serde_json::from_str(&text[i..key_end]).ok()?;
            i = ws(key_end);
            if b.get(i) != Some(&b':') {
                return None;
            }
            i = ws(i + 1);
            if key == "items" && b.get(i) == Some(&b'[') && items.is_none() {
                let mut list = Vec::new();
                i = ws(i + 1);
                if b.get(i) == Some(&b']') {
                    i += 1;
                } else {
                    loop {
                        let end = value(i)?;
                        list.push(&text[i..end]);
                        i = ws(end);
                        match b.get(i)? {
                            b',' => i = ws(i + 1),
                            b']' => {
                                i += 1;
                                break;
                            }
                            _ => return None,
                        }
                    }
                }
                items = Some(list);
            } else {
                if key == "items" {
                    return None; // twice, or not an array: left to the reference parse
                }
                let end = value(i)?;
                if !checked(&text[i..end]) {
                    return None;
                }
                i = end;
            }
            i = ws(i);
            match b.get(i)? {
                b',' => i = ws(i + 1),
                b'}' => {
                    i += 1;
                    break;
                }
                _ => return None,
            }
        }
    }
    if ws(i) != b.len() {
        return None;
    }
    Some(match items {
        Some(list) => JsonTop::List(list),
        None => JsonTop::Object,
    })
}

fn json_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && b[i].is_ascii_whitespace() {
        i += 1;
    }
    i
}

/// End of the JSON string starting at `i` (a quote).
fn json_string_end(b: &[u8], mut i: usize) -> Option<usize> {
    i += 1;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b'"' => return Some(i + 1),
            _ => i += 1,
        }
    }
    None
}

/// End of the JSON value starting at `i` (not checked: serde_json does that).
fn json_value_end(b: &[u8], mut i: usize) -> Option<usize> {
    match *b.get(i)? {
        b'"' => json_string_end(b, i),
        b'{' | b'[' => {
            let mut depth = 0usize;
            while i < b.len() {
                match b[i] {
                    b'"' => {
                        i = json_string_end(b, i)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth = depth.checked_sub(1)?;
                        if depth == 0 {
                            return Some(i + 1);
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
            None
        }
        _ => {
            let end = b[i..]
                .iter()
                .position(|c| matches!(c, b',' | b'}' | b']') || c.is_ascii_whitespace())
                .map_or(b.len(), |n| i + n);
            (end > i).then_some(end)
        }
    }
}

/// `apiVersion` and `kind` of a JSON item, read off its top-level keys without parsing the
/// rest; None unless both are plain strings, once each.
fn json_item_head(text: &str) -> Option<(&str, &str)> {
    let b = text.as_bytes();
    let (mut api, mut kind) = (None, None);
    let mut i = json_ws(b, 0);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    i = json_ws(b, i + 1);
    while b.get(i) == Some(&b'"') {
        let key_end = json_string_end(b, i)?;
        let key = &text[i + 1..key_end - 1];
        i = json_ws(b, key_end);
        if b.get(i) != Some(&b':') {
            return None;
        }
        i = json_ws(b, i + 1);
        let end = json_value_end(b, i)?;
        let slot = match key {
            "apiVersion" => &mut api,
            "kind" => &mut kind,
            _ => &mut None,
        };
        if key == "apiVersion" || key == "kind" {
            let v = text.get(i + 1..end.checked_sub(1)?)?;
            if slot.is_some() || b[i] != b'"' || v.contains('\\') {
                return None;
            }
            *slot = Some(v);
        }
        i = json_ws(b, end);
        match b.get(i)? {
            b',' => i = json_ws(b, i + 1),
            _ => break,
        }
    }
    Some((api?, kind?))
}

/// `apiVersion` and `kind` of a block-style YAML item, read off its top-level lines (`- key:`
/// and `  key:`); None unless both appear once with a plain value.
fn yaml_item_head(text: &str) -> Option<(&str, &str)> {
    let (mut api, mut kind) = (None, None);
    let first = text.lines().next()?.strip_prefix("- ")?;
    // Top-level keys of the other lines start right after `\n` and two spaces: searched for
    // with memmem rather than line by line, since most of a dump is pods passed over here.
    let b = text.as_bytes();
    let line_at = |at: usize| {
        let end = memchr::memchr(b'\n', &b[at..]).map_or(text.len(), |n| at + n);
        &text[at..end]
    };
    let others = memchr::memmem::find_iter(b, b"\n  kind:")
        .chain(memchr::memmem::find_iter(b, b"\n  apiVersion:"))
        .map(|at| line_at(at + 3));
    for key_value in std::iter::once(first).chain(others) {
        let (slot, value) = if let Some(v) = key_value.strip_prefix("kind:") {
            (&mut kind, v)
        } else if let Some(v) = key_value.strip_prefix("apiVersion:") {
            (&mut api, v)
        } else {
            continue;
        };
        let value = value.trim();
        let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '-' | '_');
        if slot.is_some() || value.is_empty() || !value.chars().all(plain) {
            return None;
        }
        *slot = Some(value);
    }
    Some((api?, kind?))
}

/// Whether an item can be passed over unparsed: a kind DNS does not read (counted as skipped),
/// or one `sink` does not keep (pods, unless needed). Most of a dump's bytes are pods, so this
/// halves start-up; such items are not checked either (a broken Deployment no longer stops a
/// dump from loading).
fn pass_over<S: Sink>(head: Option<(&str, &str)>, sink: &mut S) -> bool {
    let Some((api_version, kind)) = head else {
        return false;
    };
    if !read_kind(api_version, kind) {
        sink.skip();
        return true;
    }
    !sink.wants(api_version, kind)
}

/// Parses an item of a kind read off its text straight into its type, without the
/// intermediate `serde_yaml::Value` (which costs about as much again as the parse). False when
/// that fails or the kind is not one of these: the general path then reads the item, and
/// reports any error with its usual message.
fn typed_item<S: Sink>(
    head: Option<(&str, &str)>,
    sink: &mut S,
    format: Format,
    text: &str,
) -> bool {
    let Some(head) = head else {
        return false;
    };
    match head {
        ("v1", "Namespace") => parse_one(format, text).map(|o| sink.namespace(o)),
        ("v1", "Service") => parse_one(format, text).map(|o| sink.service(o)),
        ("v1", "Endpoints") => parse_one(format, text).map(|o| sink.endpoints(o)),
        ("v1", "Pod") => parse_one(format, text).map(|o| sink.pod(o)),
        ("v1", "Node") => parse_one(format, text).map(|o| sink.node(o)),
        ("discovery.k8s.io/v1", "EndpointSlice") => {
            parse_one(format, text).map(|o| sink.endpoint_slice(o))
        }
        _ => None,
    }
    .is_some()
}

#[derive(Clone, Copy)]
enum Format {
    /// A block-style List item: a one-entry sequence.
    YamlItem,
    Json,
}

fn parse_one<T: DeserializeOwned>(format: Format, text: &str) -> Option<T> {
    let (item, unique) = match format {
        Format::YamlItem => {
            let mut items: Vec<T> = serde_yaml::from_str(text).ok()?;
            let item = (items.len() == 1).then(|| items.pop()).flatten()?;
            (item, serde_yaml::from_str::<UniqueKeys>(text).is_ok())
        }
        // Checked once for the whole file (json_parts).
        Format::Json => (serde_json::from_str(text).ok()?, true),
    };
    unique.then_some(item)
}

/// Reads a value and keeps nothing, failing on a mapping that has a key twice. k8s-openapi's
/// deserializers let the last duplicate win, while the reference parse (through
/// `serde_yaml::Value`) rejects the file: without this check a block-style List was accepted
/// or refused depending on which path read it (found by fuzz/ `manifests`). Cheaper than the
/// intermediate `Value` the typed parse avoids: it allocates only the keys of one mapping.
struct UniqueKeys;

impl<'de> serde::Deserialize<'de> for UniqueKeys {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(UniqueKeysVisitor)
    }
}

/// A mapping key as the reference compares it (a string and a number are different keys),
/// borrowed from the text when it can be; `None` for a complex key, which is not compared.
#[derive(PartialEq)]
struct KeyOf<'de>(Option<(char, std::borrow::Cow<'de, str>)>);

impl<'de> serde::Deserialize<'de> for KeyOf<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use std::borrow::Cow;
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = KeyOf<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a mapping key")
            }
            fn visit_borrowed_str<E: serde::de::Error>(
                self,
                v: &'de str,
            ) -> Result<Self::Value, E> {
                Ok(KeyOf(Some(('s', Cow::Borrowed(v)))))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(KeyOf(Some(('s', Cow::Owned(v.to_owned())))))
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Self::Value, E> {
                Ok(KeyOf(Some(('b', Cow::Owned(v.to_string())))))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(KeyOf(Some(('n', Cow::Owned(v.to_string())))))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(KeyOf(Some(('n', Cow::Owned(v.to_string())))))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Ok(KeyOf(Some(('f', Cow::Owned(v.to_string())))))
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
                Ok(KeyOf(Some(('~', Cow::Borrowed("")))))
            }
            fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
                Ok(KeyOf(Some(('~', Cow::Borrowed("")))))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                a: A,
            ) -> Result<Self::Value, A::Error> {
                UniqueKeysVisitor.visit_seq(a).map(|_| KeyOf(None))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                a: A,
            ) -> Result<Self::Value, A::Error> {
                UniqueKeysVisitor.visit_map(a).map(|_| KeyOf(None))
            }
        }
        d.deserialize_any(V)
    }
}

struct UniqueKeysVisitor;

impl<'de> serde::de::Visitor<'de> for UniqueKeysVisitor {
    type Value = UniqueKeys;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_i64<E>(self, _: i64) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_u64<E>(self, _: u64) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_f64<E>(self, _: f64) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_str<E>(self, _: &str) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_bytes<E>(self, _: &[u8]) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_unit<E>(self) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_none<E>(self) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<UniqueKeys, D::Error> {
        <UniqueKeys as serde::Deserialize>::deserialize(d)
    }
    fn visit_newtype_struct<D: serde::Deserializer<'de>>(
        self,
        d: D,
    ) -> Result<UniqueKeys, D::Error> {
        <UniqueKeys as serde::Deserialize>::deserialize(d)
    }
    fn visit_enum<A: serde::de::EnumAccess<'de>>(self, a: A) -> Result<UniqueKeys, A::Error> {
        use serde::de::VariantAccess;
        let (UniqueKeys, v) = a.variant::<UniqueKeys>()?;
        v.newtype_variant::<UniqueKeys>()
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> Result<UniqueKeys, A::Error> {
        while a.next_element::<UniqueKeys>()?.is_some() {}
        Ok(UniqueKeys)
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut a: A) -> Result<UniqueKeys, A::Error> {
        let mut keys = Vec::new();
        while let Some(KeyOf(key)) = a.next_key::<KeyOf>()? {
            if let Some(key) = key {
                if keys.contains(&key) {
                    return Err(serde::de::Error::custom("duplicate mapping key"));
                }
                keys.push(key);
            }
            a.next_value::<UniqueKeys>()?;
        }
        Ok(UniqueKeys)
    }
}

/// The kinds [`add_value_to`] converts (the others are only counted).
fn read_kind(api_version: &str, kind: &str) -> bool {
    kind.ends_with("List")
        || matches!(
            (api_version, kind),
            ("v1", "Namespace" | "Service" | "Endpoints" | "Pod" | "Node")
                | ("discovery.k8s.io/v1", "EndpointSlice")
        )
}

/// JSON values as YAML values, so both go through one conversion (and one set of messages).
fn json_to_yaml(value: serde_json::Value) -> serde_yaml::Value {
    use serde_json::Value as J;
    use serde_yaml::Value as Y;
    match value {
        J::Null => Y::Null,
        J::Bool(b) => Y::Bool(b),
        J::Number(n) => {
            if let Some(i) = n.as_i64() {
                Y::Number(i.into())
            } else if let Some(u) = n.as_u64() {
                Y::Number(u.into())
            } else {
                Y::Number(n.as_f64().unwrap_or(f64::NAN).into())
            }
        }
        J::String(s) => Y::String(s),
        J::Array(a) => Y::Sequence(a.into_iter().map(json_to_yaml).collect()),
        J::Object(o) => Y::Mapping(
            o.into_iter()
                .map(|(k, v)| (Y::String(k), json_to_yaml(v)))
                .collect(),
        ),
    }
}

/// The reference parse: documents in order, each whole, items streamed to `sink`.
pub fn add_text_sequential<S: Sink>(
    sink: &mut S,
    text: &str,
    path: &Path,
) -> Result<(), LoadError> {
    for (index, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        add_document(sink, document, path, index + 1)?;
    }
    Ok(())
}

fn add_document<S: Sink>(
    sink: &mut S,
    document: serde_yaml::Deserializer,
    path: &Path,
    document_no: usize,
) -> Result<(), LoadError> {
    let mut failed = None;
    let visitor = DocVisitor {
        sink,
        path,
        document: document_no,
        failed: &mut failed,
    };
    if let Err(e) = serde::Deserializer::deserialize_any(document, visitor) {
        return Err(failed.unwrap_or_else(|| LoadError::Syntax {
            path: path.to_owned(),
            document: document_no,
            message: e.to_string(),
        }));
    }
    Ok(())
}

struct DocVisitor<'a, S> {
    sink: &'a mut S,
    path: &'a Path,
    document: usize,
    /// The object error that stopped the parse (serde's error type cannot carry it).
    failed: &'a mut Option<LoadError>,
}

impl<'de, S: Sink> serde::de::Visitor<'de> for DocVisitor<'_, S> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a Kubernetes object or List")
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        Ok(()) // an empty document, e.g. a trailing `---`
    }

    fn visit_none<E: serde::de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut rest = serde_yaml::Mapping::new();
        let mut list = false;
        while let Some(key) = map.next_key::<serde_yaml::Value>()? {
            if key.as_str() == Some("items") {
                list = true;
                map.next_value_seed(ItemsSeed {
                    sink: &mut *self.sink,
                    path: self.path,
                    document: self.document,
                    failed: &mut *self.failed,
                })?;
            } else {
                let value: serde_yaml::Value = map.next_value()?;
                rest.insert(key, value);
            }
        }
        if list {
            return Ok(());
        }
        add_value_to(
            self.sink,
            serde_yaml::Value::Mapping(rest),
            self.path,
            self.document,
        )
        .map_err(|e| {
            let msg = e.to_string();
            *self.failed = Some(e);
            serde::de::Error::custom(msg)
        })
    }
}

struct ItemsSeed<'a, S> {
    sink: &'a mut S,
    path: &'a Path,
    document: usize,
    failed: &'a mut Option<LoadError>,
}

impl<'de, S: Sink> serde::de::DeserializeSeed<'de> for ItemsSeed<'_, S> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de, S: Sink> serde::de::Visitor<'de> for ItemsSeed<'_, S> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("`items`: a list of Kubernetes objects")
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(item) = seq.next_element::<serde_yaml::Value>()? {
            if let Err(e) = add_value_to(&mut *self.sink, item, self.path, self.document) {
                let msg = e.to_string();
                *self.failed = Some(e);
                return Err(serde::de::Error::custom(msg));
            }
        }
        Ok(())
    }
}

fn add_value_to<S: Sink>(
    sink: &mut S,
    value: serde_yaml::Value,
    path: &Path,
    document: usize,
) -> Result<(), LoadError> {
    if value.is_null() {
        return Ok(());
    }
    let describe = describe(&value);
    let object_err = |message: String| LoadError::Object {
        path: path.to_owned(),
        document,
        object: describe.clone(),
        message,
    };
    let Some(kind) = value.get("kind").and_then(|k| k.as_str()) else {
        return Err(object_err("no `kind`: not a Kubernetes object".into()));
    };
    let api_version = value
        .get("apiVersion")
        .and_then(|v| v.as_str())
        .unwrap_or("");
    match (api_version, kind) {
        (_, k) if k.ends_with("List") => {
            // A List nested in a List (rare): items in hand already.
            let items = match value.get("items") {
                Some(serde_yaml::Value::Sequence(items)) => items.clone(),
                Some(serde_yaml::Value::Null) | None => Vec::new(),
                Some(_) => return Err(object_err("`items` is not a list".into())),
            };
            for item in items {
                add_value_to(sink, item, path, document)?;
            }
        }
        ("v1", "Namespace") => sink.namespace(typed(value, &object_err)?),
        ("v1", "Service") => sink.service(typed(value, &object_err)?),
        ("v1", "Endpoints") => sink.endpoints(typed(value, &object_err)?),
        ("v1", "Pod") => sink.pod(typed(value, &object_err)?),
        ("v1", "Node") => sink.node(typed(value, &object_err)?),
        ("discovery.k8s.io/v1", "EndpointSlice") => sink.endpoint_slice(typed(value, &object_err)?),
        _ => sink.skip(),
    }
    Ok(())
}

fn typed<T: DeserializeOwned>(
    value: serde_yaml::Value,
    err: &dyn Fn(String) -> LoadError,
) -> Result<T, LoadError> {
    serde_yaml::from_value(value).map_err(|e| err(e.to_string()))
}

/// `Kind namespace/name` (or `Kind name`) for error messages.
fn describe(value: &serde_yaml::Value) -> String {
    let kind = value
        .get("kind")
        .and_then(|k| k.as_str())
        .unwrap_or("object");
    let meta = value.get("metadata");
    let field = |f: &str| meta.and_then(|m| m.get(f)).and_then(|v| v.as_str());
    match (field("namespace"), field("name")) {
        (Some(ns), Some(name)) => format!("{kind} {ns}/{name}"),
        (None, Some(name)) => format!("{kind} {name}"),
        _ => format!("{kind} (unnamed)"),
    }
}

/// The files a path stands for: the file itself, or every `.yaml`/`.yml`/`.json` file below a
/// directory, sorted, skipping hidden entries (a mounted ConfigMap's `..data` links).
pub fn manifest_files(path: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let io = |p: &Path| {
        let p = p.to_owned();
        move |source| LoadError::Io { path: p, source }
    };
    let meta = std::fs::metadata(path).map_err(io(path))?;
    if !meta.is_dir() {
        return Ok(vec![path.to_owned()]);
    }
    let mut files = Vec::new();
    let mut dirs = vec![path.to_owned()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).map_err(io(&dir))? {
            let entry = entry.map_err(io(&dir))?;
            let p = entry.path();
            let name = entry.file_name();
            if name.to_string_lossy().starts_with('.') {
                continue;
            }
            if p.is_dir() {
                dirs.push(p);
            } else if p
                .extension()
                .is_some_and(|e| e == "yaml" || e == "yml" || e == "json")
            {
                files.push(p);
            }
        }
    }
    files.sort();
    Ok(files)
}

/// Reads every object below `path` (a file or a directory).
pub fn load_path(path: &Path) -> Result<ObjectSet, LoadError> {
    let mut set = ObjectSet::default();
    for file in manifest_files(path)? {
        let text = std::fs::read_to_string(&file).map_err(|source| LoadError::Io {
            path: file.clone(),
            source,
        })?;
        set.add_text(&text, &file)?;
    }
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fast path parses List items straight into k8s-openapi types, which let a repeated
    /// key's last value win; the reference parse refuses the file. Both must refuse it.
    #[test]
    fn duplicate_keys_are_refused_by_both_parses() {
        let slice = "  kind: EndpointSlice\n  metadata: {name: s, namespace: x, labels: {kubernetes.io/service-name: a}}\n  addressType: IPv4\n  endpoints:\n  - addresses: [10.0.0.1]\n    conditions: {ready: true}\n    conditions: {ready: false}\n";
        let yaml = format!(
            "apiVersion: v1\nkind: List\nitems:\n- apiVersion: discovery.k8s.io/v1\n{slice}"
        );
        let json = r#"{"apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x", "name": "y"}}]}"#;
        for (text, file) in [(yaml.as_str(), "dup.yaml"), (json, "dup.json")] {
            let fast = ObjectSet::default().add_text(text, Path::new(file));
            let reference = add_text_sequential(&mut ObjectSet::default(), text, Path::new(file));
            assert!(reference.is_err(), "{file}: the reference parse accepts it");
            let err = fast.expect_err(file).to_string();
            assert!(err.contains("duplicate"), "{file}: {err}");
        }
    }

    #[test]
    fn lists_multi_documents_and_json() {
        let yaml = r#"
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {name: a, namespace: x}
  spec: {clusterIP: 10.0.0.1}
- apiVersion: apps/v1
  kind: Deployment
  metadata: {name: d, namespace: x}
---
apiVersion: v1
kind: Namespace
metadata: {name: x}
---
"#;
        let mut set = ObjectSet::default();
        set.add_text(yaml, Path::new("a.yaml")).unwrap();
        set.add_text(
            r#"{"apiVersion":"v1","kind":"Node","metadata":{"name":"n1"}}"#,
            Path::new("b.json"),
        )
        .unwrap();
        assert_eq!(set.services.len(), 1);
        assert_eq!(set.namespaces.len(), 1);
        assert_eq!(set.nodes.len(), 1);
        assert_eq!(set.skipped, 1);
    }

    #[test]
    fn errors_name_file_document_and_object() {
        let yaml = "apiVersion: v1\nkind: Namespace\nmetadata: {name: ok}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: demo}\nspec: {ports: 80}\n";
        let err = ObjectSet::default()
            .add_text(yaml, Path::new("svc.yaml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("svc.yaml: document 2: Service demo/web: "),
            "{err}"
        );
        let err = ObjectSet::default()
            .add_text("a: [1,\n", Path::new("broken.yaml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("broken.yaml: document 1: invalid YAML/JSON"),
            "{err}"
        );
    }
}

#[cfg(test)]
mod fast_path_tests {
    use super::*;

    const BLOCK: &str = "apiVersion: v1
items:
- apiVersion: v1
  kind: Namespace
  metadata:
    name: x
- apiVersion: v1
  kind: Service
  metadata:
    labels:
      app: a
    name: a
    namespace: x
  spec:
    clusterIP: 10.0.0.1
    ports:
    - name: http
      port: 80
# a comment between items
- apiVersion: apps/v1
  kind: Deployment
  metadata:
    name: d
    namespace: x

- apiVersion: v1
  kind: Service
  metadata:
    name: b
    namespace: x
  spec:
    clusterIP: 10.0.0.2
    ports:
    - name: dns
      port: 53
      protocol: UDP
kind: List
metadata:
  resourceVersion: ''
";

    /// What a set holds, comparable across parse paths.
    fn summary(set: &ObjectSet) -> Vec<String> {
        let mut out: Vec<String> = set
            .services
            .iter()
            .map(|s| format!("{:?} {:?}", s.metadata, s.spec))
            .chain(set.namespaces.iter().map(|n| format!("{:?}", n.metadata)))
            .collect();
        out.push(format!("skipped {}", set.skipped));
        out
    }

    fn load(text: &str) -> Result<ObjectSet, LoadError> {
        let mut set = ObjectSet::default();
        set.add_text(text, Path::new("l.yaml"))?;
        Ok(set)
    }

    fn sequential(text: &str) -> Result<ObjectSet, LoadError> {
        let mut set = ObjectSet::default();
        add_text_sequential(&mut set, text, Path::new("l.yaml"))?;
        Ok(set)
    }

    #[test]
    fn block_lists_split_into_items() {
        let doc = BLOCK.to_string();
        assert_eq!(block_list_items(&doc).map(|i| i.len()), Some(4));
        let set = load(&doc).unwrap();
        assert_eq!(set.services.len(), 2);
        assert_eq!(summary(&set), summary(&sequential(&doc).unwrap()));
    }

    #[test]
    fn other_layouts_fall_back_and_give_the_same_objects() {
        let block = load(BLOCK).unwrap();
        let flow = r#"{apiVersion: v1, kind: List, items: [
  {apiVersion: v1, kind: Namespace, metadata: {name: x}},
  {apiVersion: v1, kind: Service, metadata: {labels: {app: a}, name: a, namespace: x},
   spec: {clusterIP: 10.0.0.1, ports: [{name: http, port: 80}]}},
  {apiVersion: apps/v1, kind: Deployment, metadata: {name: d, namespace: x}},
  {apiVersion: v1, kind: Service, metadata: {name: b, namespace: x},
   spec: {clusterIP: 10.0.0.2, ports: [{name: dns, port: 53, protocol: UDP}]}}]}
"#;
        // Anchors defined in one item and used in another: chunks cannot parse alone.
        let anchors = "apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Namespace
  metadata: &ns
    name: x
- apiVersion: v1
  kind: Service
  metadata:
    labels: {app: a}
    name: a
    namespace: x
  spec:
    clusterIP: 10.0.0.1
    ports: &http
    - name: http
      port: 80
- apiVersion: apps/v1
  kind: Deployment
  metadata: {name: d, namespace: x}
- apiVersion: v1
  kind: Service
  metadata: {name: b, namespace: x}
  spec: {clusterIP: 10.0.0.2, ports: [{name: dns, port: 53, protocol: UDP}]}
";
        // Indented items: not the kubectl layout.
        let indented = "kind: List
items:
  - apiVersion: v1
    kind: Namespace
    metadata: {name: x}
  - apiVersion: v1
    kind: Service
    metadata: {labels: {app: a}, name: a, namespace: x}
    spec: {clusterIP: 10.0.0.1, ports: [{name: http, port: 80}]}
  - {apiVersion: apps/v1, kind: Deployment, metadata: {name: d, namespace: x}}
  - apiVersion: v1
    kind: Service
    metadata: {name: b, namespace: x}
    spec: {clusterIP: 10.0.0.2, ports: [{name: dns, port: 53, protocol: UDP}]}
";
        assert!(block_list_items(flow).is_none());
        assert!(block_list_items(indented).is_none());
        for text in [flow, anchors, indented] {
            let set = load(text).unwrap_or_else(|e| panic!("{e}\n{text}"));
            assert_eq!(summary(&set), summary(&block), "{text}");
        }
        // An alias to an anchor of an earlier item (the chunk alone fails; the whole parse
        // resolves it).
        let alias = anchors.replace(
            "ports: [{name: dns, port: 53, protocol: UDP}]",
            "ports: *http",
        );
        let set = load(&alias).unwrap();
        assert_eq!(summary(&set), summary(&sequential(&alias).unwrap()));
        assert_eq!(
            set.services[1]
                .spec
                .as_ref()
                .unwrap()
                .ports
                .as_ref()
                .unwrap()[0]
                .port,
            80
        );
    }

    #[test]
    fn json_lists_give_the_same_objects() {
        let block = load(BLOCK).unwrap();
        let json = r#"{
    "apiVersion": "v1",
    "items": [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}},
        {"apiVersion": "v1", "kind": "Service",
         "metadata": {"labels": {"app": "a"}, "name": "a", "namespace": "x"},
         "spec": {"clusterIP": "10.0.0.1", "ports": [{"name": "http", "port": 80}]}},
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d", "namespace": "x"}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "b", "namespace": "x"},
         "spec": {"clusterIP": "10.0.0.2", "ports": [{"name": "dns", "port": 53, "protocol": "UDP"}]}}
    ],
    "kind": "List",
    "metadata": {"resourceVersion": ""}
}
"#;
        assert_eq!(summary(&load(json).unwrap()), summary(&block));
        let err = ObjectSet::default()
            .add_text(
                &json.replace(r#""port": 53,"#, r#""port": "x53","#),
                Path::new("l.json"),
            )
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("l.json: document 1: Service x/b: "),
            "{err}"
        );
        // A JSON syntax error is reported by the reference parse, with its line.
        let err = load(&json.replace(r#""name": "b","#, r#""name": "b""#))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("document 1: invalid YAML/JSON") && err.contains("line 9"),
            "{err}"
        );
    }

    #[test]
    fn item_errors_name_the_document_and_the_object() {
        let doc = BLOCK.to_string();
        let broken = format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: first}}\n---\n{}",
            doc.replace("      port: 53\n", "      port: [53]\n")
        );
        let err = load(&broken).unwrap_err().to_string();
        assert!(
            err.starts_with("l.yaml: document 2: Service x/b: "),
            "{err}"
        );
        assert_eq!(err, sequential(&broken).unwrap_err().to_string());
        // A chunk that is not valid YAML: the reference parse reports it, with its line.
        let broken = format!("---\n{}", doc.replace("    name: b\n", "    name: [b\n"));
        let err = load(&broken).unwrap_err().to_string();
        assert_eq!(err, sequential(&broken).unwrap_err().to_string());
        assert!(
            err.starts_with("l.yaml: document 1: invalid YAML/JSON"),
            "{err}"
        );
        assert!(err.contains("at line 31"), "{err}");
    }

    #[test]
    fn lines_keep_their_offsets_and_newlines() {
        let lines = |t| lines_with_offsets(t).collect::<Vec<_>>();
        assert_eq!(lines(""), vec![]);
        assert_eq!(lines("a\n"), vec![(0, "a\n")]);
        assert_eq!(lines("a\r\n\nbc"), vec![(0, "a\r\n"), (3, "\n"), (4, "bc")]);
    }

    #[test]
    fn kinds_are_read_off_the_item_text() {
        assert_eq!(
            yaml_item_head("- apiVersion: v1\r\n  kind: Pod\r\n"),
            Some(("v1", "Pod"))
        );
        assert_eq!(yaml_item_head("- kind: Pod"), None);
        let pod = "- apiVersion: v1\n  kind: Pod\n  metadata:\n    kind: x\n  spec:\n    a: |\n      kind: Service\n";
        assert_eq!(yaml_item_head(pod), Some(("v1", "Pod")));
        assert_eq!(
            yaml_item_head("- kind: Pod\n  apiVersion: v1\n  kind: Service\n"),
            None
        );
        assert_eq!(yaml_item_head("- kind: 'Pod'\n  apiVersion: v1\n"), None);
        assert_eq!(yaml_item_head("- kind: Pod # c\n  apiVersion: v1\n"), None);
        let json = r#"{"metadata": {"kind": "x", "a": ["}"]}, "apiVersion": "v1", "kind": "Pod"}"#;
        assert_eq!(json_item_head(json), Some(("v1", "Pod")));
        assert_eq!(
            json_item_head(r#"{"kind": "Pod", "kind": "Pod", "apiVersion": "v1"}"#),
            None
        );
        // Items of kinds DNS does not read are counted, not parsed (nor checked).
        let mut set = ObjectSet::default();
        set.add_text(
            "kind: List\nitems:\n- apiVersion: apps/v1\n  kind: Deployment\n  spec: {a: [\n- apiVersion: v1\n  kind: Namespace\n  metadata: {name: x}\n",
            Path::new("l.yaml"),
        )
        .unwrap();
        assert_eq!((set.skipped, set.namespaces.len()), (1, 1));
    }

    #[test]
    fn documents_are_numbered_as_the_reference_parse_numbers_them() {
        let bad =
            "apiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: n}\nspec: {ports: 80}\n";
        let ok = "apiVersion: v1\nkind: Namespace\nmetadata: {name: n}\n";
        for text in [
            bad.to_string(),
            format!("---\n{bad}"),
            format!("# leading comment\n---\n{ok}---\n{bad}"),
            format!("{ok}---\n---\n{bad}---\n"),
            format!("{ok}---\n# only a comment\n---\n{bad}"),
            format!("\n\n{ok}---   \n{ok}---\n{bad}"),
        ] {
            let fast = load(&text).unwrap_err().to_string();
            assert_eq!(fast, sequential(&text).unwrap_err().to_string(), "{text}");
        }
    }
}

#[cfg(test)]
mod demo_tests {
    #[test]
    fn the_demo_cluster_loads() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("manifests/examples/demo-cluster.yaml");
        let set = super::load_path(&path).unwrap();
        assert_eq!(set.namespaces.len(), 3);
        assert!(set.services.len() >= 8);
        assert_eq!(set.nodes.len(), 5);
        assert_eq!(set.endpoints.len(), 1);
    }
}
