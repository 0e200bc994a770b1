//! The Kubernetes source against a fake API server speaking the real protocol.

mod support;

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clusterdns::cluster::kube_source::{
    self, InitialList, KubeSourceOptions, ServiceKindLabel, SourceError,
};
use clusterdns::cluster::status::ResourceKind;
use support::apiserver::{ApiServer, Res, WatchList};
use support::kube_source::{quick_options, start};
use support::{eventually, headless, namespace, node, pod, service, slice};

const WAIT: Duration = Duration::from_secs(10);

/// Pods watched too: the tests read them.
fn options(server: &ApiServer) -> KubeSourceOptions {
    KubeSourceOptions {
        watch_pods: true,
        ..quick_options(server)
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// What the view holds once it has every object of [`seed`].
fn assert_serves_the_seed(source: &support::kube_source::Source) {
    assert_eq!(source.cluster_ips("nginx.demo"), [ip("10.96.0.10")]);
    assert_eq!(
        source.endpoints("web.demo"),
        [ip("10.1.0.1"), ip("10.1.0.2")]
    );
    let snapshot = source.view.snapshot();
    assert!(snapshot.namespace_exists("demo"));
    assert!(snapshot.pod_ip_in_namespace(&ip("10.1.0.1"), "demo"));
    assert_eq!(snapshot.store.nodes.len(), 1);
}

/// The demo cluster: a ClusterIP service, a headless one with two endpoints, a pod, a node.
fn seed(server: &ApiServer) {
    server.apply(namespace("demo"));
    server.apply(namespace("default"));
    server.apply(service("demo", "nginx", "10.96.0.10"));
    server.apply(headless("demo", "web", true));
    server.apply(slice("demo", "web-abc", "web", &["10.1.0.1", "10.1.0.2"]));
    server.apply(pod("demo", "web-0", "10.1.0.1"));
    server.apply(node("node-1"));
}

#[tokio::test]
async fn initial_sync_then_the_snapshot_answers() {
    let server = ApiServer::start().await;
    seed(&server);
    let source = start(&server, options(&server)).await;
    source.wait_ready(WAIT).await;

    assert_serves_the_seed(&source);

    let status = &source.status;
    assert!(status.synced_at().is_some());
    assert!(status.stale_since().is_none());
    assert!(status.not_ready_reasons().is_empty());
    assert_eq!(status.count(ResourceKind::Services), 2);
    assert_eq!(status.count(ResourceKind::EndpointSlices), 1);
    assert_eq!(status.count(ResourceKind::Pods), 1);
    assert_eq!(status.count(ResourceKind::Namespaces), 2);

    // Paged lists, then watches that ask for bookmarks.
    let requests = server.requests();
    assert!(requests.iter().any(|r| r
        .starts_with("GET /apis/discovery.k8s.io/v1/endpointslices?")
        && r.contains("limit=500")));
    let server_ref = &server;
    eventually("a services watch", WAIT, || {
        server_ref.open_watches(Res::Services) == 1
    })
    .await;
    assert!(server
        .requests()
        .iter()
        .any(|r| r.starts_with("GET /api/v1/services?")
            && r.contains("watch=true")
            && r.contains("allowWatchBookmarks=true")));
}

#[tokio::test]
async fn create_update_delete_propagate_and_are_timed() {
    let server = ApiServer::start().await;
    seed(&server);
    let programmed: Arc<Mutex<Vec<(ServiceKindLabel, Duration)>>> = Arc::default();
    let record = programmed.clone();
    let opts = KubeSourceOptions {
        on_programmed: Some(Arc::new(move |label, took| {
            record.lock().unwrap().push((label, took));
        })),
        ..options(&server)
    };
    let source = start(&server, opts).await;
    source.wait_ready(WAIT).await;
    let s = &source;

    server.apply(service("demo", "api", "10.96.0.20"));
    eventually("api.demo created", WAIT, || s.has_service("api.demo")).await;
    server.apply(service("demo", "api", "10.96.0.21"));
    eventually("api.demo updated", WAIT, || {
        s.cluster_ips("api.demo") == [ip("10.96.0.21")]
    })
    .await;
    server.apply(slice("demo", "web-abc", "web", &["10.1.0.1", "10.1.0.3"]));
    eventually("web.demo endpoints updated", WAIT, || {
        s.endpoints("web.demo") == [ip("10.1.0.1"), ip("10.1.0.3")]
    })
    .await;
    server.apply(headless("demo", "bare", false));
    server.apply(slice("demo", "bare-1", "bare", &["10.2.0.1"]));
    eventually("bare.demo endpoints", WAIT, || {
        s.endpoints("bare.demo") == [ip("10.2.0.1")]
    })
    .await;
    server.delete(Res::Services, "demo", "api");
    eventually("api.demo deleted", WAIT, || !s.has_service("api.demo")).await;
    server.apply(pod("demo", "web-1", "10.1.0.3"));
    eventually("pod web-1", WAIT, || {
        s.view
            .snapshot()
            .pod_ip_in_namespace(&ip("10.1.0.3"), "demo")
    })
    .await;

    let recorded = programmed.lock().unwrap().clone();
    let labels: Vec<ServiceKindLabel> = recorded.iter().map(|(l, _)| *l).collect();
    assert!(
        labels.contains(&ServiceKindLabel::ClusterIp),
        "{recorded:?}"
    );
    assert!(
        labels.contains(&ServiceKindLabel::HeadlessWithSelector),
        "{recorded:?}"
    );
    assert!(
        labels.contains(&ServiceKindLabel::HeadlessWithoutSelector),
        "{recorded:?}"
    );
    // create, update, delete of api; the web slice; bare and its slice.
    assert!(recorded.len() >= 6, "{recorded:?}");
    for (label, took) in &recorded {
        assert!(*took < Duration::from_millis(50), "{label}: {took:?}");
    }
}

#[tokio::test]
async fn unsynced_until_listed_then_synced_after_startup_timeout_but_not_ready() {
    let server = ApiServer::start().await;
    seed(&server);
    server.stall(true);
    let opts = KubeSourceOptions {
        startup_timeout: Duration::from_millis(300),
        ..options(&server)
    };
    let source = start(&server, opts).await;
    let server_ref = &server;
    eventually("the source to ask for services", WAIT, || {
        server_ref
            .requests()
            .iter()
            .any(|r| r.starts_with("GET /api/v1/services"))
    })
    .await;
    assert!(!source.view.is_synced(), "nothing listed yet: unsynced");
    assert!(!source.status.ready());
    let reasons = source.status.not_ready_reasons();
    assert!(
        reasons
            .iter()
            .any(|r| r == "kubernetes: waiting for initial list of services"),
        "{reasons:?}"
    );

    let view = source.view.clone();
    eventually("the startup timeout to pass", WAIT, || view.is_synced()).await;
    assert!(source.status.startup_timed_out());
    assert!(!source.status.ready(), "readiness waits for the real sync");
    assert!(source.view.snapshot().service("nginx.demo").is_none());

    server.stall(false);
    source.wait_ready(WAIT).await;
    assert_eq!(source.cluster_ips("nginx.demo"), [ip("10.96.0.10")]);
}

/// The first snapshot is built from complete lists (issue 17: snapshots of partial lists
/// fragmented the publisher's memory): services listed while the slices' list fails are not
/// published on their own.
#[tokio::test]
async fn nothing_is_published_until_every_kind_has_listed() {
    let server = ApiServer::start().await;
    seed(&server);
    server.forbid(Res::EndpointSlices, true);
    let opts = KubeSourceOptions {
        startup_timeout: Duration::from_secs(60),
        ..options(&server)
    };
    let source = start(&server, opts).await;
    let server_ref = &server;
    // The services list is answered at once; the slices' list fails and is retried with
    // backoff (20, 40, 80, 160 ms): by the fifth attempt the services have long arrived.
    eventually("five refused lists of endpointslices", WAIT, || {
        let requests = server_ref.requests();
        requests
            .iter()
            .any(|r| r.starts_with("GET /api/v1/services"))
            && requests
                .iter()
                .filter(|r| r.starts_with("GET /apis/discovery.k8s.io/v1/endpointslices"))
                .count()
                >= 5
    })
    .await;
    assert_eq!(
        source.view.generation(),
        0,
        "a partial snapshot was published"
    );
    assert!(source.view.snapshot().service("nginx.demo").is_none());
    assert!(!source.view.is_synced());

    server.forbid(Res::EndpointSlices, false);
    source.wait_ready(WAIT).await;
    assert_eq!(
        source.view.generation(),
        1,
        "one snapshot, from the complete lists"
    );
    assert_eq!(source.cluster_ips("nginx.demo"), [ip("10.96.0.10")]);
    assert_eq!(
        source.endpoints("web.demo"),
        [ip("10.1.0.1"), ip("10.1.0.2")]
    );
}

#[tokio::test]
async fn readiness_names_a_forbidden_resource() {
    // A streaming list asks with the watch verb, a paged one with list.
    readiness_names_a_forbidden(InitialList::Auto, "watch").await;
    readiness_names_a_forbidden(InitialList::Paged, "list").await;
}

async fn readiness_names_a_forbidden(initial_list: InitialList, verb: &str) {
    let server = ApiServer::start().await;
    seed(&server);
    server.forbid(Res::EndpointSlices, true);
    let opts = KubeSourceOptions {
        startup_timeout: Duration::from_millis(200),
        initial_list,
        ..options(&server)
    };
    let source = start(&server, opts).await;
    let status = source.status.clone();
    let expected = format!("kubernetes: waiting for initial list of endpointslices: 403 forbidden: cannot {verb} resource \"endpointslices\" in API group \"discovery.k8s.io\" (as system:serviceaccount:kube-system:clusterdns)");
    eventually("the 403 in the readiness reasons", WAIT, || {
        status.not_ready_reasons() == [expected.as_str()]
    })
    .await;
    assert!(!status.ready());
    // Everything else is served once the startup timeout passed.
    let view = source.view.clone();
    eventually("synced after the startup timeout", WAIT, || {
        view.is_synced() && view.snapshot().service("nginx.demo").is_some()
    })
    .await;
    assert!(status.stale_since().is_some());

    server.forbid(Res::EndpointSlices, false);
    source.wait_ready(WAIT).await;
    assert!(status.stale_since().is_none());
    assert_eq!(
        source.endpoints("web.demo"),
        [ip("10.1.0.1"), ip("10.1.0.2")]
    );
}

/// The API server goes away and comes back with a new history (`rv_base` lower than what the
/// client saw gives "Too large resource version"; higher gives 410 Expired).
async fn outage_and_restart(rv_base: u64) {
    let server = ApiServer::start().await;
    seed(&server);
    // Some history, so the client's resourceVersion is well above a fresh base of 1.
    for i in 0..30 {
        server.apply(service("demo", "churn", &format!("10.96.1.{i}")));
    }
    let source = start(&server, options(&server)).await;
    source.wait_ready(WAIT).await;
    let s = &source;
    eventually("churn.demo", WAIT, || {
        s.cluster_ips("churn.demo") == [ip("10.96.1.29")]
    })
    .await;

    server.stop().await;
    let refused = format!(
        "API server unreachable: connection refused to {}",
        server.url()
    );
    let status = source.status.clone();
    eventually("the outage to be noticed", WAIT, || {
        status.stale_since().is_some()
            && status
                .kinds()
                .iter()
                .any(|k| k.last_error.as_deref() == Some(refused.as_str()))
    })
    .await;
    // Still serving the last complete view.
    assert!(source.view.is_synced());
    assert_eq!(source.cluster_ips("nginx.demo"), [ip("10.96.0.10")]);
    assert_eq!(source.endpoints("web.demo").len(), 2);
    assert!(
        source.status.ready(),
        "an outage after sync keeps readiness"
    );

    // Changes while the client cannot see them.
    server.delete(Res::Services, "demo", "nginx");
    server.apply(service("demo", "late", "10.96.0.30"));
    server.restart(rv_base).await;

    eventually("recovery with the new history", WAIT, || {
        !s.has_service("nginx.demo")
            && s.cluster_ips("late.demo") == [ip("10.96.0.30")]
            && s.status.stale_since().is_none()
    })
    .await;
    // And the watches work again afterwards.
    server.apply(service("demo", "after", "10.96.0.31"));
    eventually("a change after recovery", WAIT, || {
        s.has_service("after.demo")
    })
    .await;
    assert_eq!(source.endpoints("web.demo").len(), 2);
}

#[tokio::test]
async fn api_server_restart_with_a_lower_resource_version_history() {
    outage_and_restart(1).await;
}

#[tokio::test]
async fn api_server_restart_with_a_higher_resource_version_history() {
    outage_and_restart(1_000_000).await;
}

#[tokio::test]
async fn gone_during_watch_relists_without_lost_or_phantom_records() {
    let server = ApiServer::start().await;
    seed(&server);
    server.apply(service("demo", "a", "10.96.0.1"));
    server.apply(service("demo", "b", "10.96.0.2"));
    let source = start(&server, options(&server)).await;
    source.wait_ready(WAIT).await;
    let server_ref = &server;
    eventually("a services watch", WAIT, || {
        server_ref.open_watches(Res::Services) == 1
    })
    .await;
    let lists_before = service_lists(&server);

    // The client's watch breaks; while it cannot reconnect, `a` is deleted, `c` created and the
    // history compacted: the reconnect gets 410 and only a relist can find out about `a`.
    server.stall(true);
    server.drop_watches();
    server.delete(Res::Services, "demo", "a");
    server.apply(service("demo", "c", "10.96.0.3"));
    server.compact();
    server.stall(false);

    let s = &source;
    eventually("the relist", WAIT, || {
        !s.has_service("a.demo") && s.has_service("b.demo") && s.has_service("c.demo")
    })
    .await;
    assert!(service_lists(&server) > lists_before, "a relist happened");
    assert_eq!(source.cluster_ips("nginx.demo"), [ip("10.96.0.10")]);

    // A 410 ERROR event on an open watch also relists, keeping everything.
    eventually("the services watch again", WAIT, || {
        server_ref.open_watches(Res::Services) == 1
    })
    .await;
    let lists_before = service_lists(&server);
    server.expire_watches();
    eventually("another relist", WAIT, || {
        service_lists(server_ref) > lists_before
    })
    .await;
    server.apply(service("demo", "d", "10.96.0.4"));
    eventually("d after the relist", WAIT, || s.has_service("d.demo")).await;
    for key in ["b.demo", "c.demo", "nginx.demo", "web.demo"] {
        assert!(source.has_service(key), "{key}");
    }
    assert!(!source.has_service("a.demo"));
}

fn service_lists(server: &ApiServer) -> usize {
    server
        .requests()
        .iter()
        .filter(|r| r.starts_with("GET /api/v1/services?") && !r.contains("watch="))
        .count()
}

#[tokio::test]
async fn a_service_moved_between_namespaces() {
    let server = ApiServer::start().await;
    seed(&server);
    server.apply(namespace("other"));
    server.apply(service("demo", "mover", "10.96.0.40"));
    server.apply(slice("demo", "mover-1", "mover", &["10.1.1.1"]));
    let source = start(&server, options(&server)).await;
    source.wait_ready(WAIT).await;
    assert_eq!(source.endpoints("mover.demo"), [ip("10.1.1.1")]);

    server.delete(Res::EndpointSlices, "demo", "mover-1");
    server.delete(Res::Services, "demo", "mover");
    server.apply(service("other", "mover", "10.96.0.41"));
    server.apply(slice("other", "mover-1", "mover", &["10.1.1.2"]));
    let s = &source;
    eventually("mover in other", WAIT, || {
        !s.has_service("mover.demo")
            && s.cluster_ips("mover.other") == [ip("10.96.0.41")]
            && s.endpoints("mover.other") == [ip("10.1.1.2")]
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_cluster_syncs_and_answers() {
    const NAMESPACES: usize = 50;
    const SERVICES: usize = 5_000;
    const PODS: usize = 50_000;
    let server = ApiServer::start().await;
    server.apply_all((0..NAMESPACES).map(|n| namespace(&format!("ns-{n}"))));
    server.apply_all((0..SERVICES).map(|i| {
        service(
            &format!("ns-{}", i % NAMESPACES),
            &format!("svc-{i}"),
            &format!("10.96.{}.{}", i / 250, i % 250 + 1),
        )
    }));
    server.apply_all((0..PODS).map(|i| {
        pod(
            &format!("ns-{}", i % NAMESPACES),
            &format!("pod-{i}"),
            &format!(
                "10.{}.{}.{}",
                100 + i / 62_500,
                (i / 250) % 250,
                i % 250 + 1
            ),
        )
    }));
    let opts = KubeSourceOptions {
        startup_timeout: Duration::from_secs(120),
        ..options(&server)
    };
    let source = start(&server, opts).await;
    let status = source.status.clone();
    eventually("the big sync", Duration::from_secs(120), || status.ready()).await;

    assert_eq!(status.count(ResourceKind::Services), SERVICES);
    assert_eq!(status.count(ResourceKind::Pods), PODS);
    assert!(status.sync_duration().is_some());
    let snapshot = source.view.snapshot();
    assert_eq!(snapshot.service_count(), SERVICES);
    for i in [0, 1, 2_499, 4_999] {
        let key = format!("svc-{i}.ns-{}", i % NAMESPACES);
        let entry = snapshot.service(&key).unwrap_or_else(|| panic!("{key}"));
        assert_eq!(
            entry.service.cluster_ips,
            [ip(&format!("10.96.{}.{}", i / 250, i % 250 + 1))]
        );
    }
    for i in [0, 12_345, 49_999] {
        let pod_ip = ip(&format!(
            "10.{}.{}.{}",
            100 + i / 62_500,
            (i / 250) % 250,
            i % 250 + 1
        ));
        assert!(snapshot.pod_ip_in_namespace(&pod_ip, &format!("ns-{}", i % NAMESPACES)));
    }
    // A change still propagates quickly in a cluster this size.
    drop(snapshot);
    server.apply(service("ns-0", "fresh", "10.97.0.1"));
    let s = &source;
    eventually("a new service in the big cluster", WAIT, || {
        s.has_service("fresh.ns-0")
    })
    .await;
}

#[tokio::test]
async fn client_configuration_errors_name_the_file_and_context() {
    let server = ApiServer::start().await;
    let missing = server.dir().join("nope");
    match kube_source::client(Some(&missing), None).await {
        Err(e @ SourceError::Kubeconfig { .. }) => {
            assert!(e.to_string().contains("nope"), "{e}")
        }
        other => panic!("expected a kubeconfig error, got {:?}", other.map(|_| ())),
    }
    let path = server.kubeconfig_path();
    assert!(kube_source::client(Some(&path), Some("fake")).await.is_ok());
    assert!(kube_source::client(Some(&path), Some("absent"))
        .await
        .is_err());
}

/// The fake server itself: paging, namespaced paths, Status errors, as kube-rs sees them.
#[tokio::test]
async fn the_fake_api_server_speaks_kubernetes() {
    use futures::{StreamExt, TryStreamExt};
    use k8s_openapi::api::core::v1::Service;
    use kube::api::{Api, ListParams, WatchEvent, WatchParams};

    let server = ApiServer::start().await;
    seed(&server);
    server.apply(service("other", "x", "10.96.9.9"));
    let client = kube_source::client(Some(&server.kubeconfig_path()), None)
        .await
        .unwrap();
    let all: Api<Service> = Api::all(client.clone());

    let first = all.list(&ListParams::default().limit(2)).await.unwrap();
    assert_eq!(first.items.len(), 2);
    let token = first.metadata.continue_.clone().expect("a continue token");
    let rest = all
        .list(&ListParams::default().limit(2).continue_token(&token))
        .await
        .unwrap();
    assert_eq!(rest.items.len(), 1);
    assert_eq!(
        rest.metadata.resource_version,
        first.metadata.resource_version
    );
    assert!(rest.metadata.continue_.is_none());

    let demo: Api<Service> = Api::namespaced(client.clone(), "demo");
    assert_eq!(
        demo.list(&ListParams::default()).await.unwrap().items.len(),
        2
    );
    assert_eq!(
        demo.get("nginx").await.unwrap().metadata.name.as_deref(),
        Some("nginx")
    );
    let kube::Error::Api(status) = demo.get("missing").await.unwrap_err() else {
        panic!("expected a Status");
    };
    assert_eq!((status.code, status.reason.as_str()), (404, "NotFound"));

    // Expired continue tokens and watch versions.
    server.compact();
    let kube::Error::Api(status) = all
        .list(&ListParams::default().limit(2).continue_token(&token))
        .await
        .unwrap_err()
    else {
        panic!("expected a Status");
    };
    assert_eq!((status.code, status.reason.as_str()), (410, "Expired"));
    let mut stream = all
        .watch(&WatchParams::default(), "1")
        .await
        .unwrap()
        .boxed();
    match stream.try_next().await.unwrap() {
        Some(WatchEvent::Error(status)) => assert_eq!(status.code, 410),
        other => panic!("expected a 410 ERROR event, got {other:?}"),
    }
    let kube::Error::Api(status) = all
        .watch(&WatchParams::default(), "999999")
        .await
        .map(|_| ())
        .unwrap_err()
    else {
        panic!("expected a Status");
    };
    assert_eq!(status.code, 504);

    // A live watch sees changes and bookmarks.
    server.set_bookmark_interval(Duration::from_millis(20));
    let rv = server.resource_version().to_string();
    let mut stream = all
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    server.apply(service("demo", "new", "10.96.9.10"));
    let mut saw_added = false;
    let mut saw_bookmark = false;
    while !(saw_added && saw_bookmark) {
        let next = tokio::time::timeout(WAIT, stream.next()).await;
        match next
            .expect("events in time")
            .expect("the watch stays open")
            .unwrap()
        {
            WatchEvent::Added(s) => saw_added |= s.metadata.name.as_deref() == Some("new"),
            WatchEvent::Bookmark(_) => saw_bookmark = true,
            other => panic!("unexpected {other:?}"),
        }
    }

    server.forbid(Res::Services, true);
    let kube::Error::Api(status) = all.list(&ListParams::default()).await.unwrap_err() else {
        panic!("expected a Status");
    };
    assert_eq!((status.code, status.reason.as_str()), (403, "Forbidden"));
}

/// What every real API server is: HTTPS with its own CA, and a bearer token. The source's
/// HTTP stack (cluster::http_client, built beside kube's) must keep TLS, the kubeconfig's CA
/// and the token.
#[tokio::test]
async fn an_https_api_server_with_a_bearer_token_is_followed() {
    let server = ApiServer::start_secure("s3cret-token").await;
    assert!(server.url().starts_with("https://"));
    seed(&server);
    let source = start(&server, options(&server)).await;
    source.wait_ready(WAIT).await;
    assert_eq!(source.cluster_ips("nginx.demo"), [ip("10.96.0.10")]);

    // The watch runs over the same TLS connection stack.
    server.apply(service("demo", "added", "10.96.0.77"));
    let s = &source;
    eventually("the watched service", WAIT, || {
        s.cluster_ips("added.demo") == [ip("10.96.0.77")]
    })
    .await;
}

#[tokio::test]
async fn a_wrong_token_is_refused_and_readiness_says_so() {
    let server = ApiServer::start_secure("s3cret-token").await;
    seed(&server);
    let kubeconfig = server.dir().join("wrong-token");
    std::fs::write(
        &kubeconfig,
        server
            .kubeconfig()
            .replace("token: s3cret-token", "token: not-it"),
    )
    .unwrap();
    let client = kube_source::client(Some(&kubeconfig), None).await.unwrap();
    let view = clusterdns::cluster::view::ClusterView::new();
    let status = Arc::new(clusterdns::cluster::status::SourceStatus::new());
    let _task = kube_source::spawn(client, view, status.clone(), options(&server));
    eventually("a 401 in the readiness reasons", WAIT, || {
        status
            .not_ready_reasons()
            .iter()
            .any(|r| r.contains("401") || r.to_lowercase().contains("unauthorized"))
    })
    .await;
    assert!(!status.ready());
}

/// The source's connections read through a capped buffer (cluster::http_client): objects
/// several times its size still arrive whole, in a list page and as a watch event.
#[tokio::test]
async fn objects_larger_than_the_read_buffer_arrive_by_list_and_watch() {
    let big = "x".repeat(4 * clusterdns::cluster::http_client::MAX_READ_BUFFER);
    let with_annotation = |name: &str, ip: &str| {
        let mut svc = service("demo", name, ip);
        svc["metadata"]["annotations"] = serde_json::json!({ "example.com/big": big });
        svc
    };
    let server = ApiServer::start().await;
    seed(&server);
    server.apply(with_annotation("listed", "10.96.0.21"));
    let source = start(&server, options(&server)).await;
    source.wait_ready(WAIT).await;
    assert_eq!(source.cluster_ips("listed.demo"), [ip("10.96.0.21")]);

    server.apply(with_annotation("watched", "10.96.0.22"));
    let s = &source;
    eventually("the big watched service", WAIT, || {
        s.cluster_ips("watched.demo") == [ip("10.96.0.22")]
    })
    .await;
}

/// Requests of `path` (e.g. `/api/v1/services`) that are lists (no `watch=`).
fn lists_of(server: &ApiServer, path: &str) -> usize {
    let prefix = format!("GET {path}?");
    server
        .requests()
        .iter()
        .filter(|r| r.starts_with(&prefix) && !r.contains("watch="))
        .count()
}

/// Streaming lists (watches with `sendInitialEvents=true`) of `path`.
fn streaming_lists_of(server: &ApiServer, path: &str) -> usize {
    let prefix = format!("GET {path}?");
    server
        .requests()
        .iter()
        .filter(|r| r.starts_with(&prefix) && r.contains("sendInitialEvents=true"))
        .count()
}

const PATHS: [&str; 5] = [
    "/api/v1/namespaces",
    "/api/v1/services",
    "/apis/discovery.k8s.io/v1/endpointslices",
    "/api/v1/pods",
    "/api/v1/nodes",
];

/// An API server that offers streaming lists (1.32, 1.34+): every kind syncs from one watch
/// each, with no list request at all, and goes on watching on it; a 410 streams again.
#[tokio::test]
async fn a_streaming_list_syncs_every_kind_without_a_list_request() {
    let server = ApiServer::start().await;
    server.set_watch_list(WatchList::Offered);
    seed(&server);
    let source = start(&server, options(&server)).await;
    source.wait_ready(WAIT).await;
    assert_serves_the_seed(&source);
    assert!(source.status.not_ready_reasons().is_empty());
    for path in PATHS {
        assert_eq!(lists_of(&server, path), 0, "{path} was listed");
        assert_eq!(streaming_lists_of(&server, path), 1, "{path}");
    }

    // Changes come on the same watch: no second request for services.
    server.apply(service("demo", "later", "10.96.0.30"));
    let s = &source;
    eventually("the later service", WAIT, || {
        s.cluster_ips("later.demo") == [ip("10.96.0.30")]
    })
    .await;
    let services_requests = |server: &ApiServer| {
        server
            .requests()
            .iter()
            .filter(|r| r.starts_with("GET /api/v1/services?"))
            .count()
    };
    assert_eq!(services_requests(&server), 1);

    // History lost while disconnected: the relist streams too, and drops what went.
    server.stall(true);
    server.drop_watches();
    server.delete(Res::Services, "demo", "later");
    server.apply(service("demo", "newer", "10.96.0.31"));
    server.compact();
    server.stall(false);
    eventually("the relist", WAIT, || {
        !s.has_service("later.demo") && s.has_service("newer.demo")
    })
    .await;
    assert_eq!(lists_of(&server, "/api/v1/services"), 0);
    assert!(streaming_lists_of(&server, "/api/v1/services") >= 2);
    assert_eq!(source.cluster_ips("nginx.demo"), [ip("10.96.0.10")]);
}

/// The API server's default before 1.32 and in 1.33: 422 Invalid for `sendInitialEvents`.
/// `auto` lists in pages instead, without reporting a failure, and does not ask again.
#[tokio::test]
async fn a_refused_streaming_list_falls_back_to_pages() {
    refused_streaming_list_falls_back(WatchList::Refused).await;
}

/// The same refusal as a 500 from the watch cache (the gate off where validation did not
/// look): also a fall back, not a failure retried forever.
#[tokio::test]
async fn a_streaming_list_refused_by_the_watch_cache_falls_back_to_pages() {
    refused_streaming_list_falls_back(WatchList::RefusedByCache).await;
}

async fn refused_streaming_list_falls_back(refusal: WatchList) {
    let server = ApiServer::start().await;
    server.set_watch_list(refusal);
    seed(&server);
    let source = start(&server, options(&server)).await;
    source.wait_ready(WAIT).await;
    assert_eq!(source.cluster_ips("nginx.demo"), [ip("10.96.0.10")]);
    assert!(source.status.not_ready_reasons().is_empty());
    assert!(source.status.stale_since().is_none());
    for path in PATHS {
        assert_eq!(streaming_lists_of(&server, path), 1, "{path}");
        assert!(lists_of(&server, path) >= 1, "{path} was not listed");
    }
    let server_ref = &server;
    eventually("a services watch", WAIT, || {
        server_ref.open_watches(Res::Services) == 1
    })
    .await;
    let lists = lists_of(&server, "/api/v1/services");
    server.expire_watches();
    eventually("the relist", WAIT, || {
        lists_of(server_ref, "/api/v1/services") > lists
    })
    .await;
    assert_eq!(streaming_lists_of(&server, "/api/v1/services"), 1);
}

/// A server from before 1.27 ignores `sendInitialEvents`: the watch sends every object and
/// never the bookmark that ends them. `auto` lists in pages once they stop coming.
#[tokio::test]
async fn a_server_that_ignores_streaming_lists_is_listed_in_pages() {
    let server = ApiServer::start().await;
    server.set_watch_list(WatchList::Ignored);
    seed(&server);
    let opts = KubeSourceOptions {
        initial_events_patience: Duration::from_millis(300),
        ..options(&server)
    };
    let source = start(&server, opts).await;
    source.wait_ready(WAIT).await;
    assert_eq!(source.cluster_ips("nginx.demo"), [ip("10.96.0.10")]);
    for path in PATHS {
        assert!(lists_of(&server, path) >= 1, "{path} was not listed");
    }
    server.apply(service("demo", "later", "10.96.0.30"));
    let s = &source;
    eventually("the later service", WAIT, || {
        s.cluster_ips("later.demo") == [ip("10.96.0.30")]
    })
    .await;
}

/// `--initial-list streaming` against a server that refuses it: readiness says why and what
/// to do, and nothing is listed in pages.
#[tokio::test]
async fn forced_streaming_lists_name_the_refusal_in_readiness() {
    let server = ApiServer::start().await;
    server.set_watch_list(WatchList::Refused);
    seed(&server);
    let opts = KubeSourceOptions {
        initial_list: InitialList::Streaming,
        startup_timeout: Duration::from_millis(200),
        ..options(&server)
    };
    let source = start(&server, opts).await;
    let status = source.status.clone();
    eventually("the 422 in the readiness reasons", WAIT, || {
        status.not_ready_reasons().iter().any(|r| {
            r.contains("422 Invalid")
                && r.contains("WatchList feature gate")
                && r.contains("--initial-list auto or paged")
        })
    })
    .await;
    assert!(!status.ready());
    assert_eq!(lists_of(&server, "/api/v1/services"), 0);

    // The gate turned on: the same source syncs.
    server.set_watch_list(WatchList::Offered);
    source.wait_ready(WAIT).await;
    assert_eq!(source.cluster_ips("nginx.demo"), [ip("10.96.0.10")]);
}

/// `--initial-list paged` never asks for a streaming list.
#[tokio::test]
async fn paged_lists_never_ask_for_a_stream() {
    let server = ApiServer::start().await;
    server.set_watch_list(WatchList::Offered);
    seed(&server);
    let opts = KubeSourceOptions {
        initial_list: InitialList::Paged,
        ..options(&server)
    };
    let source = start(&server, opts).await;
    source.wait_ready(WAIT).await;
    for path in PATHS {
        assert_eq!(streaming_lists_of(&server, path), 0, "{path}");
        assert!(lists_of(&server, path) >= 1, "{path} was not listed");
    }
}

/// The fake API server's streaming lists, as kube-rs's own API sees them: ADDED for every
/// object, then a BOOKMARK annotated `k8s.io/initial-events-end` at the current
/// resourceVersion, then changes; and 422 Invalid where the gate is off.
#[tokio::test]
async fn the_fake_api_server_streams_lists_as_kubernetes_does() {
    use futures::{StreamExt, TryStreamExt};
    use k8s_openapi::api::core::v1::Service;
    use kube::api::{Api, WatchEvent, WatchParams};

    let server = ApiServer::start().await;
    seed(&server);
    let client = kube_source::client(Some(&server.kubeconfig_path()), None)
        .await
        .unwrap();
    let all: Api<Service> = Api::all(client);
    let params = WatchParams::streaming_lists();

    let kube::Error::Api(status) = all.watch(&params, "0").await.map(|_| ()).unwrap_err() else {
        panic!("expected a Status");
    };
    assert_eq!((status.code, status.reason.as_str()), (422, "Invalid"));
    assert!(
        status.message.contains("WatchList feature gate"),
        "{}",
        status.message
    );

    server.set_watch_list(WatchList::Offered);
    let rv = server.resource_version().to_string();
    let mut stream = all.watch(&params, "0").await.unwrap().boxed();
    let mut added = Vec::new();
    loop {
        match tokio::time::timeout(WAIT, stream.try_next())
            .await
            .unwrap()
            .unwrap()
        {
            Some(WatchEvent::Added(s)) => added.push(s.metadata.name.unwrap()),
            Some(WatchEvent::Bookmark(b)) => {
                assert_eq!(
                    b.metadata
                        .annotations
                        .get("k8s.io/initial-events-end")
                        .map(String::as_str),
                    Some("true")
                );
                assert_eq!(b.metadata.resource_version, rv);
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    added.sort();
    assert_eq!(added, ["nginx", "web"]);
    server.apply(service("demo", "new", "10.96.9.10"));
    loop {
        match tokio::time::timeout(WAIT, stream.try_next())
            .await
            .unwrap()
            .unwrap()
        {
            Some(WatchEvent::Added(s)) => {
                assert_eq!(s.metadata.name.as_deref(), Some("new"));
                break;
            }
            Some(WatchEvent::Bookmark(_)) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}
