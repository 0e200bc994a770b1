//! The stripped store back as API objects holding only the fields kept: what the prober and
//! the placement view read, so they work the same on the API source (which keeps no full
//! objects) as on files.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::demand::CAPACITY_ANNOTATION;

use super::model::{Port, ServiceKind, POD_SG_ANNOTATION, SERVICE_NAME_LABEL};
use super::objects::ObjectSet;
use super::snapshot::Store;

fn meta(ns: Option<&str>, name: &str, labels: BTreeMap<String, String>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: ns.map(str::to_string),
        labels: (!labels.is_empty()).then_some(labels),
        ..Default::default()
    }
}

fn protocol(p: &Port) -> String {
    p.protocol.as_str().to_ascii_uppercase()
}

fn name_of(p: &Port) -> Option<String> {
    (!p.name.is_empty()).then(|| p.name.to_string())
}

impl Store {
    pub fn to_objects(&self) -> ObjectSet {
        let mut set = ObjectSet::default();
        for ns in self.namespaces.values() {
            set.namespaces.push(core::Namespace {
                metadata: meta(None, &ns.name, ns.labels.clone()),
                ..Default::default()
            });
        }
        for svc in self.services.values() {
            let ips: Vec<String> = svc.cluster_ips.iter().map(|ip| ip.to_string()).collect();
            let (type_, cluster_ip, cluster_ips) = match svc.kind {
                ServiceKind::ClusterIp => ("ClusterIP", ips.first().cloned(), Some(ips)),
                ServiceKind::Headless => (
                    "ClusterIP",
                    Some("None".to_string()),
                    Some(vec!["None".to_string()]),
                ),
                ServiceKind::ExternalName => ("ExternalName", None, None),
            };
            set.services.push(core::Service {
                metadata: meta(Some(&svc.namespace), &svc.name, svc.labels.to_map()),
                spec: Some(core::ServiceSpec {
                    type_: Some(type_.to_string()),
                    cluster_ip,
                    cluster_ips,
                    external_name: svc.external_name.as_deref().map(str::to_string),
                    publish_not_ready_addresses: Some(svc.publish_not_ready),
                    traffic_distribution: svc.prefer_close.then(|| "PreferClose".to_string()),
                    // Only whether there is a selector is kept, not the selector itself.
                    selector: svc.has_selector.then(|| {
                        BTreeMap::from([(
                            "clusterdns.io/selector".to_string(),
                            "kept-as-flag".to_string(),
                        )])
                    }),
                    ports: Some(
                        svc.ports
                            .iter()
                            .map(|p| core::ServicePort {
                                name: name_of(p),
                                port: i32::from(p.port),
                                protocol: Some(protocol(p)),
                                ..Default::default()
                            })
                            .collect(),
                    ),
                    ..Default::default()
                }),
                ..Default::default()
            });
        }
        for slice in self.slices.values() {
            let labels =
                BTreeMap::from([(SERVICE_NAME_LABEL.to_string(), slice.service.to_string())]);
            let family = match slice.endpoints.first().and_then(|e| e.addresses.first()) {
                Some(ip) if ip.is_ipv6() => "IPv6",
                _ => "IPv4",
            };
            set.endpoint_slices.push(discovery::EndpointSlice {
                metadata: meta(Some(&slice.namespace), &slice.name, labels),
                address_type: family.to_string(),
                endpoints: slice
                    .endpoints
                    .iter()
                    .map(|e| discovery::Endpoint {
                        addresses: e.addresses.iter().map(|a| a.to_string()).collect(),
                        conditions: Some(discovery::EndpointConditions {
                            ready: Some(e.ready),
                            serving: Some(e.serving),
                            terminating: Some(e.terminating),
                        }),
                        hostname: e.hostname().map(str::to_string),
                        node_name: e.node_name().map(str::to_string),
                        zone: e.zone().map(str::to_string),
                        hints: e.for_zones().map(|z| discovery::EndpointHints {
                            for_zones: Some(
                                z.iter()
                                    .map(|z| discovery::ForZone {
                                        name: z.to_string(),
                                    })
                                    .collect(),
                            ),
                            ..Default::default()
                        }),
                        target_ref: slice.pod_name(e).map(|n| core::ObjectReference {
                            kind: Some("Pod".to_string()),
                            name: Some(n.to_string()),
                            namespace: Some(slice.namespace.to_string()),
                            ..Default::default()
                        }),
                        ..Default::default()
                    })
                    .collect::<Vec<_>>()
                    .into(),
                ports: Some(
                    slice
                        .ports
                        .iter()
                        .map(|p| discovery::EndpointPort {
                            name: name_of(p),
                            port: Some(i32::from(p.port)),
                            protocol: Some(protocol(p)),
                            ..Default::default()
                        })
                        .collect(),
                ),
            });
        }
        for pod in self.pods.values() {
            let mut m = meta(Some(&pod.namespace), &pod.name, pod.labels.clone());
            let mut annotations = BTreeMap::new();
            if let Some(sg) = &pod.pod_security_groups {
                annotations.insert(POD_SG_ANNOTATION.to_string(), sg.to_string());
            }
            if let Some(c) = &pod.capacity {
                annotations.insert(CAPACITY_ANNOTATION.to_string(), c.to_string());
            }
            m.annotations = (!annotations.is_empty()).then_some(annotations);
            // One container asking for the pod's whole demand sizes exactly like the original.
            let containers = match &pod.demand {
                Some(d) => vec![core::Container {
                    name: "demand".to_string(),
                    resources: Some(core::ResourceRequirements {
                        requests: Some(BTreeMap::from([
                            ("cpu".to_string(), Quantity(format!("{}m", d.cpu_millis))),
                            ("memory".to_string(), Quantity(d.memory_bytes.to_string())),
                        ])),
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
                None => Vec::new(),
            };
            set.pods.push(core::Pod {
                metadata: m,
                spec: Some(core::PodSpec {
                    node_name: pod.node_name.as_deref().map(str::to_string),
                    hostname: pod.hostname.as_deref().map(str::to_string),
                    subdomain: pod.subdomain.as_deref().map(str::to_string),
                    scheduler_name: pod.scheduler_name.as_deref().map(str::to_string),
                    containers,
                    ..Default::default()
                }),
                status: Some(core::PodStatus {
                    pod_ip: pod.ips.first().map(|ip| ip.to_string()),
                    pod_ips: Some(
                        pod.ips
                            .iter()
                            .map(|ip| core::PodIP { ip: ip.to_string() })
                            .collect(),
                    ),
                    phase: pod.phase.as_deref().map(str::to_string),
                    ..Default::default()
                }),
            });
        }
        for node in self.nodes.values() {
            let mut labels = node.labels.clone();
            if let Some(z) = &node.zone {
                labels
                    .entry(crate::cluster::model::ZONE_LABEL.to_string())
                    .or_insert_with(|| z.to_string());
            }
            set.nodes.push(core::Node {
                metadata: meta(None, &node.name, labels),
                ..Default::default()
            });
        }
        set
    }
}

#[cfg(test)]
mod tests {
    use crate::cluster::file_source::embedded_objects;
    use crate::cluster::Store;

    #[test]
    fn the_round_trip_keeps_what_dns_and_the_prober_use() {
        let store = Store::from_objects(&embedded_objects().unwrap());
        let again = Store::from_objects(&store.to_objects());
        assert_eq!(again.services, store.services);
        assert_eq!(again.slices, store.slices);
        assert_eq!(again.pods, store.pods);
        assert_eq!(again.nodes, store.nodes);
        assert_eq!(again.namespaces, store.namespaces);
    }

    #[test]
    fn placement_is_the_same_from_the_stripped_store() {
        let objects = embedded_objects().unwrap();
        let profiles = crate::fargate::load_profiles(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("manifests/examples/fargate-profiles"),
        )
        .unwrap();
        let direct = crate::fargate::run_placement(&objects, &profiles, true);
        let stripped = Store::from_objects(&objects).to_objects();
        assert_eq!(
            crate::fargate::run_placement(&stripped, &profiles, true),
            direct
        );
    }
}
