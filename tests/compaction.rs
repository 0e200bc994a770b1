//! The API source's compaction copy after the initial sync goes through the staging region
//! (`clusterdns::malloc`), and nothing of the staged copy outlives it: the region is emptied
//! and the store answers from the heap copies. Its own test binary: the region's counts are
//! process-wide, and no other source may compact beside this one.

mod support;

use std::net::IpAddr;
use std::time::Duration;

use clusterdns::cluster::kube_source::KubeSourceOptions;
use clusterdns::cluster::status::ResourceKind;
use support::apiserver::ApiServer;
use support::kube_source::{quick_options, start};
use support::{headless, namespace, node, pod, service, slice};

const WAIT: Duration = Duration::from_secs(20);
const SERVICES: usize = 300;

#[tokio::test]
async fn the_initial_sync_is_compacted_through_the_staging_region_and_the_region_is_emptied() {
    let server = ApiServer::start().await;
    server.apply(namespace("demo"));
    server.apply(node("node-1"));
    for i in 0..SERVICES {
        let (a, b) = (i / 250, i % 250);
        server.apply(service(
            "demo",
            &format!("svc-{i}"),
            &format!("10.96.{a}.{b}"),
        ));
        server.apply(headless("demo", &format!("web-{i}"), true));
        let ip1 = format!("10.1.{a}.{b}");
        let ip2 = format!("10.2.{a}.{b}");
        server.apply(slice(
            "demo",
            &format!("web-{i}-abc"),
            &format!("web-{i}"),
            &[&ip1, &ip2],
        ));
        server.apply(pod("demo", &format!("web-{i}-0"), &ip1));
    }
    let before = clusterdns::malloc::staging_stats();
    let source = start(
        &server,
        KubeSourceOptions {
            watch_pods: true,
            ..quick_options(&server)
        },
    )
    .await;
    source.wait_ready(WAIT).await;

    let after = clusterdns::malloc::staging_stats();
    // Every object of every kind was staged (a name and an object block each at least).
    let objects = 2 + 4 * SERVICES;
    assert!(
        after.staged_blocks - before.staged_blocks >= 2 * objects,
        "staged {} blocks for {objects} objects",
        after.staged_blocks - before.staged_blocks
    );
    // Nothing staged outlived the copy, so the region was handed back.
    assert_eq!(after.live_blocks, 0, "{after:?}");
    assert!(after.releases > before.releases, "{after:?}");

    // The store answers from the second copy.
    for i in [0, SERVICES / 2, SERVICES - 1] {
        let (a, b) = (i / 250, i % 250);
        let ip = |s: String| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            source.cluster_ips(&format!("svc-{i}.demo")),
            [ip(format!("10.96.{a}.{b}"))]
        );
        assert_eq!(
            source.endpoints(&format!("web-{i}.demo")),
            [ip(format!("10.1.{a}.{b}")), ip(format!("10.2.{a}.{b}"))]
        );
        let snapshot = source.view.snapshot();
        assert!(snapshot.pod_ip_in_namespace(&ip(format!("10.1.{a}.{b}")), "demo"));
    }
    assert_eq!(source.status.count(ResourceKind::Services), 2 * SERVICES);
    assert_eq!(source.status.count(ResourceKind::Pods), SERVICES);
    assert_eq!(source.view.snapshot().store.nodes.len(), 1);
    assert!(source.view.snapshot().namespace_exists("demo"));
}
