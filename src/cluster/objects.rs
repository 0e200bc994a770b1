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

/// Parses one file's text into `sink`. A `List`'s items are converted one at a time as the
/// parser reaches them (never the whole list as a tree): a 100 000-pod dump costs one pod's
/// worth of scratch memory on top of what the sink keeps.
pub fn add_text_to<S: Sink>(sink: &mut S, text: &str, path: &Path) -> Result<(), LoadError> {
    for (index, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let document_no = index + 1;
        let mut failed = None;
        let visitor = DocVisitor {
            sink: &mut *sink,
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
