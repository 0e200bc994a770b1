//! What the API source decodes list and watch items into: the fields
//! [`model`](super::model)'s `from_api` reads, nothing else.
//!
//! ```text
//!  list page / watch line ─serde─> Api* (these types) ─into_api─> k8s-openapi ─from_api─> model
//!                           skips managedFields, status, container specs, annotations
//!                           not read, without allocating (serde's IgnoredAny)
//! ```
//!
//! Why not decode the k8s-openapi types: a Service from a real API server carries
//! `managedFields` several times the size of what DNS keeps, a Pod its whole container spec
//! and status, a Node its image list. Decoding all that on the runtime threads and dropping it
//! a moment later left the arenas of those threads fragmented (bench/RESULTS.md, "Memory: API
//! source against file source"): the live heap matched the file source's but the RSS did not.
//! These types keep the decoding garbage to the few fields the model reads; kube's watcher
//! takes any type that implements k8s-openapi's `Resource` and `Metadata` (kube-core has a
//! blanket `kube::Resource` impl for them), so the list/watch protocol is unchanged.
//!
//! Each type converts into its k8s-openapi type (moves, no copies) so the model keeps one
//! conversion for the file and the API sources: the same answers from both.

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

use super::demand::CAPACITY_ANNOTATION;
use super::model::{POD_SG_ANNOTATION, TOPOLOGY_HINTS_ANNOTATION, TOPOLOGY_MODE_ANNOTATION};

/// The annotations any `from_api` reads; others (`kubectl.kubernetes.io/last-applied-
/// configuration` holds the whole object again) are skipped undecoded.
const KEPT_ANNOTATIONS: &[&str] = &[
    POD_SG_ANNOTATION,
    CAPACITY_ANNOTATION,
    TOPOLOGY_MODE_ANNOTATION,
    TOPOLOGY_HINTS_ANNOTATION,
];

/// `metadata` without `managedFields`, `uid`, timestamps, owner references: name, namespace,
/// resourceVersion (the watcher resumes from it), labels (selectors, Fargate profiles) and
/// [`KEPT_ANNOTATIONS`].
fn lean_meta<'de, D: Deserializer<'de>>(d: D) -> Result<ObjectMeta, D::Error> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Meta {
        name: Option<String>,
        namespace: Option<String>,
        resource_version: Option<String>,
        labels: Option<BTreeMap<String, String>>,
        annotations: Option<KeptAnnotations>,
    }
    let m = Meta::deserialize(d)?;
    Ok(ObjectMeta {
        name: m.name,
        namespace: m.namespace,
        resource_version: m.resource_version,
        labels: m.labels,
        annotations: m.annotations.map(|a| a.0).filter(|a| !a.is_empty()),
        ..ObjectMeta::default()
    })
}

struct KeptAnnotations(BTreeMap<String, String>);

impl<'de> Deserialize<'de> for KeptAnnotations {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Map;
        impl<'de> Visitor<'de> for Map {
            type Value = KeptAnnotations;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map of annotations")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<KeptAnnotations, A::Error> {
                let mut out = BTreeMap::new();
                while let Some(key) = m.next_key_seed(KeptKey)? {
                    match key {
                        Some(k) => {
                            out.insert(k.to_string(), m.next_value::<String>()?);
                        }
                        None => {
                            m.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(KeptAnnotations(out))
            }
        }
        d.deserialize_map(Map)
    }
}

/// An annotation key: which of [`KEPT_ANNOTATIONS`] it is, without allocating.
struct KeptKey;

impl<'de> DeserializeSeed<'de> for KeptKey {
    type Value = Option<&'static str>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl Visitor<'_> for KeptKey {
    type Value = Option<&'static str>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an annotation key")
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(KEPT_ANNOTATIONS.iter().copied().find(|k| *k == v))
    }
}

/// kube's watcher needs k8s-openapi's `Resource` (URL, kind) and `Metadata` (name,
/// resourceVersion): those of the k8s-openapi type `$api`.
macro_rules! api_resource {
    ($t:ty, $api:ty) => {
        impl k8s_openapi::Resource for $t {
            const API_VERSION: &'static str = <$api as k8s_openapi::Resource>::API_VERSION;
            const GROUP: &'static str = <$api as k8s_openapi::Resource>::GROUP;
            const KIND: &'static str = <$api as k8s_openapi::Resource>::KIND;
            const VERSION: &'static str = <$api as k8s_openapi::Resource>::VERSION;
            const URL_PATH_SEGMENT: &'static str =
                <$api as k8s_openapi::Resource>::URL_PATH_SEGMENT;
            type Scope = <$api as k8s_openapi::Resource>::Scope;
        }
        impl k8s_openapi::Metadata for $t {
            type Ty = ObjectMeta;
            fn metadata(&self) -> &ObjectMeta {
                &self.metadata
            }
            fn metadata_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }
        }
    };
}

/// A Namespace: metadata only.
#[derive(Debug, Clone, Deserialize)]
pub struct ApiNamespace {
    #[serde(default, deserialize_with = "lean_meta")]
    pub metadata: ObjectMeta,
}
api_resource!(ApiNamespace, core::Namespace);

impl ApiNamespace {
    pub fn into_api(self) -> core::Namespace {
        core::Namespace {
            metadata: self.metadata,
            ..Default::default()
        }
    }
}

/// A Node: metadata only (its status holds the node's image list).
#[derive(Debug, Clone, Deserialize)]
pub struct ApiNode {
    #[serde(default, deserialize_with = "lean_meta")]
    pub metadata: ObjectMeta,
}
api_resource!(ApiNode, core::Node);

impl ApiNode {
    pub fn into_api(self) -> core::Node {
        core::Node {
            metadata: self.metadata,
            ..Default::default()
        }
    }
}

/// A Service: its spec (small; every field but status is read), no status.
#[derive(Debug, Clone, Deserialize)]
pub struct ApiService {
    #[serde(default, deserialize_with = "lean_meta")]
    pub metadata: ObjectMeta,
    pub spec: Option<core::ServiceSpec>,
}
api_resource!(ApiService, core::Service);

impl ApiService {
    pub fn into_api(self) -> core::Service {
        core::Service {
            metadata: self.metadata,
            spec: self.spec,
            status: None,
        }
    }
}

/// An EndpointSlice; endpoints without `deprecatedTopology` and with only the kind and name
/// of their target.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiEndpointSlice {
    #[serde(default, deserialize_with = "lean_meta")]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub address_type: String,
    #[serde(default)]
    pub endpoints: Option<Vec<LeanEndpoint>>,
    pub ports: Option<Vec<discovery::EndpointPort>>,
}
api_resource!(ApiEndpointSlice, discovery::EndpointSlice);

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LeanEndpoint {
    #[serde(default)]
    addresses: Vec<String>,
    conditions: Option<discovery::EndpointConditions>,
    hints: Option<LeanHints>,
    hostname: Option<String>,
    node_name: Option<String>,
    target_ref: Option<LeanRef>,
    zone: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct LeanHints {
    for_zones: Option<Vec<discovery::ForZone>>,
}

#[derive(Debug, Clone, Deserialize)]
struct LeanRef {
    kind: Option<String>,
    name: Option<String>,
}

impl ApiEndpointSlice {
    pub fn into_api(self) -> discovery::EndpointSlice {
        discovery::EndpointSlice {
            metadata: self.metadata,
            address_type: self.address_type,
            endpoints: Some(
                self.endpoints
                    .unwrap_or_default()
                    .into_iter()
                    .map(|e| discovery::Endpoint {
                        addresses: e.addresses,
                        conditions: e.conditions,
                        hints: e.hints.map(|h| discovery::EndpointHints {
                            for_zones: h.for_zones,
                            ..Default::default()
                        }),
                        hostname: e.hostname,
                        node_name: e.node_name,
                        target_ref: e.target_ref.map(|r| core::ObjectReference {
                            kind: r.kind,
                            name: r.name,
                            ..Default::default()
                        }),
                        zone: e.zone,
                        ..Default::default()
                    })
                    .collect(),
            ),
            ports: self.ports,
        }
    }
}

/// A Pod: where it runs, its addresses and phase, and of its containers only the resources
/// (micro-VM sizing); not the rest of the container specs, volumes or container statuses.
#[derive(Debug, Clone, Deserialize)]
pub struct ApiPod {
    #[serde(default, deserialize_with = "lean_meta")]
    pub metadata: ObjectMeta,
    spec: Option<LeanPodSpec>,
    status: Option<LeanPodStatus>,
}
api_resource!(ApiPod, core::Pod);

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct LeanPodSpec {
    #[serde(default)]
    containers: Vec<LeanContainer>,
    init_containers: Option<Vec<LeanContainer>>,
    host_network: Option<bool>,
    hostname: Option<String>,
    node_name: Option<String>,
    scheduler_name: Option<String>,
    subdomain: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct LeanContainer {
    #[serde(default)]
    name: String,
    resources: Option<core::ResourceRequirements>,
    restart_policy: Option<String>,
}

impl LeanContainer {
    fn into_api(self) -> core::Container {
        core::Container {
            name: self.name,
            resources: self.resources,
            restart_policy: self.restart_policy,
            ..Default::default()
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct LeanPodStatus {
    phase: Option<String>,
    #[serde(rename = "podIP")]
    pod_ip: Option<String>,
    #[serde(rename = "podIPs")]
    pod_ips: Option<Vec<core::PodIP>>,
}

impl ApiPod {
    pub fn into_api(self) -> core::Pod {
        core::Pod {
            metadata: self.metadata,
            spec: self.spec.map(|s| core::PodSpec {
                containers: s
                    .containers
                    .into_iter()
                    .map(LeanContainer::into_api)
                    .collect(),
                init_containers: s
                    .init_containers
                    .map(|c| c.into_iter().map(LeanContainer::into_api).collect()),
                host_network: s.host_network,
                hostname: s.hostname,
                node_name: s.node_name,
                scheduler_name: s.scheduler_name,
                subdomain: s.subdomain,
                ..Default::default()
            }),
            status: self.status.map(|s| core::PodStatus {
                phase: s.phase,
                pod_ip: s.pod_ip,
                pod_ips: s.pod_ips,
                ..Default::default()
            }),
        }
    }

    /// Only what zone-aware answers need: the pod's addresses (none for host-network pods,
    /// which share their node's) and its node.
    pub fn placement(&self) -> (Vec<std::net::IpAddr>, Option<&str>) {
        let spec = self.spec.as_ref();
        if spec.and_then(|s| s.host_network).unwrap_or(false) {
            return (Vec::new(), None);
        }
        let status = self.status.as_ref();
        let mut ips: Vec<std::net::IpAddr> = status
            .and_then(|s| s.pod_ips.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|p| p.ip.trim().parse().ok())
            .collect();
        if ips.is_empty() {
            ips.extend(
                status
                    .and_then(|s| s.pod_ip.as_deref())
                    .and_then(|ip| ip.trim().parse::<std::net::IpAddr>().ok()),
            );
        }
        (ips, spec.and_then(|s| s.node_name.as_deref()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::model::{EndpointSlice, Node, Pod, Service};
    use serde_json::json;

    /// The lean types give the model exactly what the full k8s-openapi types give it.
    fn same<W, A, M>(v: serde_json::Value, into: fn(W) -> A, from: fn(&A) -> Option<M>)
    where
        W: serde::de::DeserializeOwned,
        A: serde::de::DeserializeOwned,
        M: PartialEq + fmt::Debug,
    {
        let lean: W = serde_json::from_value(v.clone()).expect("lean decode");
        let full: A = serde_json::from_value(v).expect("full decode");
        assert_eq!(from(&into(lean)), from(&full));
    }

    fn meta(kind_extra: serde_json::Value) -> serde_json::Value {
        let mut m = json!({
            "name": "x", "namespace": "ns", "resourceVersion": "42", "uid": "u-1",
            "labels": {"app": "a", "kubernetes.io/service-name": "svc",
                       "eks.amazonaws.com/compute-type": "fargate",
                       "topology.kubernetes.io/zone": "eu-west-1a"},
            "annotations": {
                "kubectl.kubernetes.io/last-applied-configuration": "{\"huge\": true}",
                "service.kubernetes.io/topology-mode": "Auto",
                "fargate.amazonaws.com/pod-sg": "sg-1",
                "CapacityProvisioned": "0.25vCPU 0.5GB",
                "other": {"not": "a string"}
            },
            "managedFields": [{"manager": "m", "fieldsV1": {"f:spec": {".": {}}}}]
        });
        if let (Some(m), Some(extra)) = (m.as_object_mut(), kind_extra.as_object()) {
            m.extend(extra.clone());
        }
        m
    }

    #[test]
    fn lean_decoding_gives_the_model_what_full_decoding_gives() {
        let mut m = meta(json!({}));
        // A non-string annotation value is invalid for the full type: keep the valid case.
        m["annotations"].as_object_mut().unwrap().remove("other");
        same(
            json!({"apiVersion": "v1", "kind": "Service", "metadata": m,
                   "spec": {"clusterIP": "None", "ports": [{"name": "http", "port": 80}],
                            "selector": {"app": "a"}, "publishNotReadyAddresses": true},
                   "status": {"loadBalancer": {}}}),
            ApiService::into_api,
            Service::from_api,
        );
        same(
            json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "metadata": m,
                   "addressType": "IPv4",
                   "endpoints": [{"addresses": ["10.0.0.1"], "conditions": {"ready": false},
                                  "hostname": "h", "nodeName": "n1", "zone": "z",
                                  "hints": {"forZones": [{"name": "z"}], "forNodes": [{"name": "n1"}]},
                                  "deprecatedTopology": {"a": "b"},
                                  "targetRef": {"kind": "Pod", "name": "p", "uid": "u"}}],
                   "ports": [{"name": "http", "port": 80, "protocol": "UDP"}]}),
            ApiEndpointSlice::into_api,
            EndpointSlice::from_api,
        );
        same(
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": m,
                   "spec": {"nodeName": "n1", "hostname": "h", "subdomain": "s",
                            "schedulerName": "fargate-scheduler",
                            "containers": [{"name": "c", "image": "i", "env": [{"name": "A", "value": "1"}],
                                            "resources": {"requests": {"cpu": "250m", "memory": "1Gi"}}}],
                            "initContainers": [{"name": "i", "restartPolicy": "Always",
                                                "resources": {"limits": {"cpu": "1"}}}]},
                   "status": {"phase": "Running", "podIP": "10.0.0.1",
                              "podIPs": [{"ip": "10.0.0.1"}, {"ip": "fd00::1"}],
                              "containerStatuses": [{"name": "c", "ready": true, "restartCount": 0,
                                                     "image": "i", "imageID": ""}]}}),
            ApiPod::into_api,
            Pod::from_api,
        );
        same(
            json!({"apiVersion": "v1", "kind": "Node", "metadata": m,
                   "status": {"images": [{"names": ["a"], "sizeBytes": 1}]}}),
            ApiNode::into_api,
            Node::from_api,
        );
    }

    #[test]
    fn unused_metadata_and_annotations_are_skipped() {
        let s: ApiService =
            serde_json::from_value(json!({"metadata": meta(json!({}))})).expect("decode");
        let a = s.metadata.annotations.expect("kept annotations");
        assert_eq!(
            a.keys().map(String::as_str).collect::<Vec<_>>(),
            vec![
                "CapacityProvisioned",
                "fargate.amazonaws.com/pod-sg",
                "service.kubernetes.io/topology-mode"
            ]
        );
        assert!(s.metadata.managed_fields.is_none() && s.metadata.uid.is_none());
        assert_eq!(s.metadata.resource_version.as_deref(), Some("42"));
        // Null maps are what some clients send: no error.
        let n: ApiNode = serde_json::from_value(
            json!({"metadata": {"name": "n", "labels": null, "annotations": null}}),
        )
        .expect("nulls");
        assert_eq!(n.metadata.name.as_deref(), Some("n"));
    }

    #[test]
    fn pod_placement_skips_host_network_pods() {
        let p: ApiPod = serde_json::from_value(json!({"metadata": {"name": "p"},
            "spec": {"nodeName": "n1", "containers": []},
            "status": {"podIP": "10.0.0.7"}}))
        .expect("decode");
        assert_eq!(
            p.placement(),
            (vec!["10.0.0.7".parse().unwrap()], Some("n1"))
        );
        let h: ApiPod = serde_json::from_value(json!({"metadata": {"name": "p"},
            "spec": {"nodeName": "n1", "hostNetwork": true, "containers": []},
            "status": {"podIP": "10.0.0.7"}}))
        .expect("decode");
        assert_eq!(h.placement().0, Vec::<std::net::IpAddr>::new());
    }
}
