//! Corefile front end: stock Corefiles, fixed plugin order, error messages, imports, and
//! robustness against arbitrary input.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clusterdns::corefile::*;

fn no_env(_: &str) -> Option<String> {
    None
}

fn parse(text: &str) -> Config {
    match parse_str(text, Path::new("Corefile"), &no_env) {
        Ok(c) => c,
        Err(e) => panic!("unexpected error: {e}"),
    }
}

fn parse_err(text: &str) -> String {
    match parse_str(text, Path::new("Corefile"), &no_env) {
        Ok(c) => panic!("expected an error, got {c:?}"),
        Err(e) => e.to_string(),
    }
}

fn zones(z: &[&str]) -> Vec<String> {
    z.iter().map(|s| s.to_string()).collect()
}

fn kinds(b: &ServerBlock) -> Vec<&'static str> {
    b.plugins.iter().map(|p| p.kind().name()).collect()
}

const EKS: &str = include_str!("fixtures/corefiles/eks.Corefile");

const KUBEADM: &str = include_str!("fixtures/corefiles/kubeadm.Corefile");

/// The k8s.io NodeLocal DNSCache Corefile with its placeholders filled in.
const NODELOCAL: &str = r#"cluster.local:53 {
    errors
    cache {
            success 9984 30
            denial 9984 5
    }
    reload
    loop
    bind 169.254.20.10 10.96.0.10
    forward . 10.96.0.10 {
            force_tcp
    }
    prometheus :9253
    health 169.254.20.10:8080
    }
in-addr.arpa:53 {
    errors
    cache 30
    reload
    loop
    bind 169.254.20.10 10.96.0.10
    forward . 10.96.0.10 {
            force_tcp
    }
    prometheus :9253
    }
.:53 {
    errors
    cache 30
    reload
    loop
    bind 169.254.20.10 10.96.0.10
    forward . /etc/resolv.conf
    prometheus :9253
    }
"#;

const STOCK_ORDER: [&str; 11] = [
    "reload",
    "ready",
    "health",
    "prometheus",
    "errors",
    "loadbalance",
    "cache",
    "kubernetes",
    "loop",
    "forward",
    // Sentinel so the slice below can be compared by prefix; never a plugin.
    "",
];

#[test]
fn eks_corefile() {
    let c = parse(EKS);
    assert_eq!(c.servers.len(), 1);
    let b = &c.servers[0];
    assert_eq!(
        b.zones,
        vec![ZoneKey {
            zone: ".".into(),
            port: 53,
            port_explicit: true,
            transport: Transport::Dns
        }]
    );
    assert_eq!(kinds(b), STOCK_ORDER[..10]);

    let h = b.health().unwrap();
    assert_eq!(h.lameduck, Duration::from_secs(5));
    assert_eq!(h.addr.to_string(), ":8080");
    assert_eq!(b.ready().unwrap().addr.to_string(), ":8181");
    assert_eq!(b.prometheus().unwrap().addr.to_string(), ":9153");

    let k = b.kubernetes().unwrap();
    assert_eq!(
        k.zones,
        zones(&["cluster.local.", "in-addr.arpa.", "ip6.arpa."])
    );
    assert_eq!(k.pods, PodsMode::Insecure);
    assert_eq!(
        k.fallthrough,
        Fallthrough::Zones(zones(&["in-addr.arpa.", "ip6.arpa."]))
    );
    assert!(k.fallthrough.applies("4.3.2.1.in-addr.arpa."));
    assert!(!k.fallthrough.applies("x.cluster.local."));
    assert_eq!(k.ttl, 5);
    assert_eq!(k.startup_timeout, Duration::from_secs(5));

    let f = b.forward().unwrap();
    assert_eq!(f.from, ".");
    assert_eq!(
        f.to,
        vec![Upstream::ResolvConf(PathBuf::from("/etc/resolv.conf"))]
    );
    assert_eq!(f.expire, Duration::from_secs(10));
    assert_eq!(f.max_fails, 2);
    assert_eq!(f.health_check, Duration::from_millis(500));
    assert_eq!(f.policy, ForwardPolicy::Random);
    assert_eq!(f.max_concurrent, None);

    let cache = b.cache().unwrap();
    assert_eq!(cache.zones, zones(&["."]));
    assert_eq!(
        cache.success,
        CacheBucket {
            capacity: 9984,
            max_ttl: 30,
            min_ttl: 5
        }
    );
    assert_eq!(
        cache.denial,
        CacheBucket {
            capacity: 9984,
            max_ttl: 30,
            min_ttl: 5
        }
    );
    assert_eq!(cache.servfail, Duration::from_secs(5));

    assert_eq!(b.reload().unwrap(), &ReloadConfig::default());
    assert_eq!(
        b.loadbalance().unwrap().policy,
        LoadbalancePolicy::RoundRobin
    );
    assert!(b.loop_detect().is_some());
}

#[test]
fn kubeadm_corefile() {
    let c = parse(KUBEADM);
    let b = &c.servers[0];
    assert_eq!(kinds(b), STOCK_ORDER[..10]);
    assert_eq!(b.health().unwrap().lameduck, Duration::from_secs(5));
    let k = b.kubernetes().unwrap();
    assert_eq!(k.ttl, 30);
    assert_eq!(k.pods, PodsMode::Insecure);
    assert_eq!(
        k.fallthrough,
        Fallthrough::Zones(zones(&["in-addr.arpa.", "ip6.arpa."]))
    );
    assert_eq!(b.forward().unwrap().max_concurrent, Some(1000));
    let cache = b.cache().unwrap();
    assert_eq!(cache.success.max_ttl, 30);
    assert_eq!(cache.denial.max_ttl, 30);
    assert_eq!(cache.success.capacity, CacheConfig::DEFAULT_CAPACITY);
    assert_eq!(cache.disable_success, zones(&["cluster.local."]));
    assert_eq!(cache.disable_denial, zones(&["cluster.local."]));
    assert!(!cache.keepttl);
}

#[test]
fn nodelocal_dns_cache_corefile() {
    let c = parse(NODELOCAL);
    assert_eq!(c.servers.len(), 3);
    let cl = &c.servers[0];
    assert_eq!(cl.zones[0].zone, "cluster.local.");
    assert_eq!(
        kinds(cl),
        [
            "reload",
            "bind",
            "health",
            "prometheus",
            "errors",
            "cache",
            "loop",
            "forward"
        ]
    );
    let cache = cl.cache().unwrap();
    assert_eq!(cache.zones, zones(&["cluster.local."]));
    assert_eq!((cache.success.capacity, cache.success.max_ttl), (9984, 30));
    assert_eq!((cache.denial.capacity, cache.denial.max_ttl), (9984, 5));
    let f = cl.forward().unwrap();
    assert!(f.force_tcp);
    assert_eq!(
        f.to,
        vec![Upstream::Addr {
            transport: Transport::Dns,
            addr: "10.96.0.10:53".parse::<SocketAddr>().unwrap()
        }]
    );
    assert_eq!(
        cl.bind().unwrap().addrs,
        vec![
            BindAddr::Ip("169.254.20.10".parse::<IpAddr>().unwrap()),
            BindAddr::Ip("10.96.0.10".parse::<IpAddr>().unwrap())
        ]
    );
    assert_eq!(cl.prometheus().unwrap().addr.to_string(), ":9253");
    assert_eq!(cl.health().unwrap().addr.to_string(), "169.254.20.10:8080");
    let root = &c.servers[2];
    assert_eq!(root.zones[0].zone, ".");
    assert!(root.health().is_none());
    assert_eq!(root.cache().unwrap().zones, zones(&["."]));
}

#[test]
fn block_for_picks_longest_zone_on_the_port() {
    let c = parse(&format!(
        "{NODELOCAL}\nexample.org:5353 {{\n  errors\n}}\nsub.example.org:53 {{\n  log\n}}\n"
    ));
    let zone_of = |q: &str, port: u16| c.block_for(q, port).map(|b| b.zones[0].zone.as_str());
    assert_eq!(
        zone_of("kube-dns.kube-system.svc.cluster.local.", 53),
        Some("cluster.local.")
    );
    assert_eq!(zone_of("cluster.local.", 53), Some("cluster.local."));
    assert_eq!(zone_of("notcluster.local.", 53), Some("."));
    assert_eq!(
        zone_of("1.0.96.10.in-addr.arpa.", 53),
        Some("in-addr.arpa.")
    );
    assert_eq!(zone_of("www.example.org.", 53), Some("."));
    assert_eq!(zone_of("www.example.org", 5353), Some("example.org."));
    assert_eq!(zone_of("a.sub.example.org.", 53), Some("sub.example.org."));
    assert_eq!(zone_of("example.com.", 5353), None);
    assert_eq!(zone_of("x.", 1), None);
}

#[test]
fn plugin_order_is_fixed_whatever_the_line_order() {
    let base = parse(KUBEADM).servers.remove(0).plugins;
    // Rotate and reverse the top-level directive lines; nested blocks move with their line.
    let lines: Vec<&str> = KUBEADM.lines().collect();
    let body = &lines[1..lines.len() - 1];
    let mut directives: Vec<String> = Vec::new();
    for l in body {
        if l.starts_with("    ") && !l.starts_with("     ") && *l != "    }" {
            directives.push(l.to_string());
        } else if let Some(last) = directives.last_mut() {
            last.push('\n');
            last.push_str(l);
        }
    }
    assert_eq!(directives.len(), 10);
    for variant in 0..4 {
        let mut d = directives.clone();
        match variant {
            0 => d.reverse(),
            1 => d.rotate_left(3),
            2 => d.rotate_right(4),
            _ => d.swap(0, 9),
        }
        let text = format!(".:53 {{\n{}\n}}\n", d.join("\n"));
        let shuffled = parse(&text).servers.remove(0).plugins;
        assert_eq!(shuffled, base, "variant {variant}:\n{text}");
    }
    let order: Vec<PluginKind> = base.iter().map(|p| p.kind()).collect();
    let mut sorted = order.clone();
    sorted.sort_by_key(|k| PluginKind::ORDER.iter().position(|o| o == k));
    assert_eq!(order, sorted);
}

#[test]
fn broken_corefiles_name_file_line_and_column() {
    let cases: &[(&str, &str)] = &[
        (
            ".:53 {\n    errors\n    health {\n        lameduck 5s\n    }\n    ready\n",
            "Corefile:6:10: expected '}' to close the block opened at 1:6",
        ),
        (
            ".:53 {\n    errorz\n}\n",
            "Corefile:2:5: unknown plugin 'errorz' (supported: timeouts, reload, bind, ready, health, prometheus, errors, log, loadbalance, rewrite, autopath, acl, cache, template, hosts, kubernetes, loop, forward)",
        ),
        (
            ".:53 {\n    cache 30 {\n        succes 9984\n    }\n}\n",
            "Corefile:3:9: cache: unknown option 'succes' (supported: success, denial, prefetch, serve_stale, servfail, disable, keepttl)",
        ),
        (
            ".:53 {\n    health {\n        lameduck 5x\n    }\n}\n",
            "Corefile:3:18: health: lameduck: invalid duration '5x': unknown unit 'x' (ns, us, ms, s, m, h)",
        ),
        (
            ".:99999 {\n    errors\n}\n",
            "Corefile:1:1: invalid server address '.:99999': invalid port '99999': expected a number from 0 to 65535",
        ),
        (
            ".:53 {\n    kubernetes cluster.local {\n        ttl 3601\n    }\n}\n",
            "Corefile:3:13: kubernetes: ttl: 3601 is out of range (0..=3600)",
        ),
        (
            ".:53 {\n    forward .\n}\n",
            "Corefile:2:5: forward: missing TO upstream (usage: forward FROM TO... { ... })",
        ),
        (
            ".:53 {\n    kubernetes {\n        ttl\n    }\n}\n",
            "Corefile:3:9: kubernetes: ttl: missing SECONDS (usage: ttl SECONDS)",
        ),
        (
            ".:53 {\n    cache\n    errors\n    cache 30\n}\n",
            "Corefile:4:5: plugin 'cache' may be used only once per server block; first used at 2:5",
        ),
        (
            "(a) {\n    import b\n}\n(b) {\n    import a\n}\n.:53 {\n    import a\n}\n",
            "Corefile:5:12: import cycle: Corefile -> snippet 'a' -> snippet 'b' -> snippet 'a'",
        ),
        (
            ".:53 {\n    import \"missing.conf\"\n}\n",
            "Corefile:2:12: cannot import 'missing.conf': no snippet of that name is defined above and no file missing.conf exists",
        ),
        (
            ".:53 {\n    log \"unterminated\n}\n",
            "Corefile:2:9: unterminated quoted string: expected a closing '\"' before the end of the file",
        ),
        (
            ".:53 {\n    forward . 8.8.8.300\n}\n",
            "Corefile:2:15: forward: '8.8.8.300' is not an IP address, IP:PORT or resolv.conf file",
        ),
        (
            ".:53 {\n    kubernetes {\n        pods secure\n    }\n}\n",
            "Corefile:3:14: kubernetes: pods: invalid value 'secure' (expected disabled | insecure | verified)",
        ),
        (
            ".:53 {\n    errors\n}\n.:53 {\n    log\n}\n",
            "Corefile:4:1: zone '.' on port 53 is already served by the block at 1:1",
        ),
        (
            ".:53 {\n    cache 0\n}\n",
            "Corefile:2:11: cache: TTL 0 is out of range (1..=4294967295)",
        ),
        (
            ".:53 {\n    prometheus 9153\n}\n",
            "Corefile:2:16: prometheus: '9153' is not an address of the form [HOST]:PORT",
        ),
        (
            ".:53 {\n    rewrite name regex (foo bar\n}\n",
            "Corefile:2:24: rewrite: invalid regular expression '(foo': unclosed group",
        ),
        (
            ".:53 {\n    ready :8181 {\n        foo\n    }\n}\n",
            "Corefile:3:9: ready: unknown option 'foo' (ready takes no options)",
        ),
        (
            ".:53 {\n    loop now\n}\n",
            "Corefile:2:10: loop: unexpected argument 'now' (usage: loop)",
        ),
        (
            ".:53 {\n    reload 1s\n}\n",
            "Corefile:2:12: reload: interval '1s' must be at least 2s",
        ),
        (
            "",
            "Corefile:1:1: expected at least one server block, e.g. '.:53 { forward . /etc/resolv.conf }'",
        ),
        ("}\n", "Corefile:1:1: unexpected '}': no block is open here"),
        (
            ".:53 {\n    cache 30 {\n        prefetch 10 1m 5%\n    }\n}\n",
            "Corefile:3:24: cache: prefetch: percentage: 5 is out of range (10..=90)",
        ),
        (
            ".:53 {\n    acl {\n        block type AAAA net 10.0.0.0/33\n    }\n}\n",
            "Corefile:3:29: acl: block: '10.0.0.0/33' is not an IP address or CIDR network",
        ),
        (
            ".:53 {\n  { errors }\n}\n",
            "Corefile:2:3: unexpected '{': expected a plugin name; a block must open on the line it belongs to",
        ),
        (
            ".:53 {\n    health { lameduck 5s } ready\n}\n",
            "Corefile:2:28: unexpected 'ready' after '}': expected the end of the line",
        ),
        (
            "a.org,\n",
            "Corefile:1:7: expected another server address after the trailing ','",
        ),
        (
            "(s) {\n  log\n}\n(s) {\n  errors\n}\n",
            "Corefile:4:1: snippet 's' is already defined at 1:1",
        ),
        (
            ".:53 {\n    forward . 1.1.1.1 {\n        policy fastest\n    }\n}\n",
            "Corefile:3:16: forward: policy: invalid value 'fastest' (expected random | round_robin | sequential)",
        ),
        (
            "http://.:53 {\n}\n",
            "Corefile:1:1: invalid server address 'http://.:53': unknown transport 'http://' (supported: dns://, tls://, grpc://, https://, quic://)",
        ),
        (
            ".:53 {\n    import a b\n}\n",
            "Corefile:2:14: unexpected 'b': import takes exactly one argument (a snippet name, a file or a glob)",
        ),        (
            ".:53 {\n    kubernetes {\n        labels app in (a, b\n    }\n}\n",
            "Corefile:3:28: kubernetes: labels: invalid label selector \"app in (a, b\": at character 13: found 'end of string', expected: ',', ')' or a label value",
        ),
        (
            ".:53 {\n    kubernetes {\n        namespace_labels team=a,  env>1\n    }\n}\n",
            "Corefile:3:38: kubernetes: namespace_labels: invalid label selector \"team=a, env>1\": at character 12: '>' isn't supported in label selectors",
        ),
        (
            ".:53 {\n    kubernetes {\n        labels Tier/app=web\n    }\n}\n",
            "Corefile:3:16: kubernetes: labels: invalid label selector \"Tier/app=web\": at character 1: invalid label key \"Tier/app\": a key's prefix must be a lowercase DNS subdomain (e.g. example.com)",
        ),
        (
            ".:53 {\n    kubernetes {\n        labels\n    }\n}\n",
            "Corefile:3:9: kubernetes: labels: missing SELECTOR (usage: labels SELECTOR)",
        ),
        (
            ".:53 {\n    template IN A example {\n        answer \"{{ .Name }} 60 IN A {{ .Foo }}\"\n    }\n}\n",
            "Corefile:3:16: template: answer: unsupported template action '{{ .Foo }}' (supported: {{ .Name }}, {{ .Zone }}, {{ .Class }}, {{ .Type }}, {{ .Remote }}, {{ index .Match N }}, {{ .Group.NAME }}, {{ .Meta \"KEY\" }}, {{ .Question.Name }}, {{ .Question.Qtype }}, {{ .Question.Qclass }}, {{ .Message.Id }}, {{/* comment */}})",
        ),
        (
            ".:53 {\n    template IN A example {\n        additional \"{{ .Name | printf \\\"%s\\\" }} 60 IN A 10.0.0.1\"\n    }\n}\n",
            "Corefile:3:20: template: additional: unsupported template action '{{ .Name | printf \"%s\" }}' (supported: {{ .Name }}, {{ .Zone }}, {{ .Class }}, {{ .Type }}, {{ .Remote }}, {{ index .Match N }}, {{ .Group.NAME }}, {{ .Meta \"KEY\" }}, {{ .Question.Name }}, {{ .Question.Qtype }}, {{ .Question.Qclass }}, {{ .Message.Id }}, {{/* comment */}})",
        ),
        (
            ".:53 {\n    template IN A example {\n        authority \"{{ .Name }} 60 IN SOA {{ .Zone\"\n    }\n}\n",
            "Corefile:3:19: template: authority: unclosed action '{{ .Zone' (no '}}')",
        ),
        (
            ".:53 {\n    template IN A example {\n        answer \"x.example. 60 IN A 10.0.0.300\"\n    }\n}\n",
            "Corefile:3:16: template: answer: invalid record \"x.example. 60 IN A 10.0.0.300\": bad A data: network address parse error: invalid IPv4 address syntax",
        ),
        (
            ".:53 {\n    template IN A example {\n        answer \"x.example. 60 IN AY 10.0.0.3\"\n    }\n}\n",
            "Corefile:3:16: template: answer: invalid record \"x.example. 60 IN AY 10.0.0.3\": unknown record type \"AY\"",
        ),
        (
            ".:53 {\n    template IN A example {\n        answer \"{{ .Name }} 60 IN A 10.0.0.{{ index .Match 2 }}\"\n        match ^(a)[.]example[.]$ ^b[.]example[.]$\n    }\n}\n",
            "Corefile:3:16: template: answer: '{{ index .Match 2 }}' in \"{{ .Name }} 60 IN A 10.0.0.{{ index .Match 2 }}\": no match regex has group 2 (0 is the whole name)",
        ),
        (
            ".:53 {\n    template IN A example {\n        match ^(?P<a>[0-9]+)[.]example[.]$\n        answer \"{{ .Name }} 60 IN A 10.0.0.{{ .Group.b }}\"\n    }\n}\n",
            "Corefile:4:16: template: answer: '{{ .Group.b }}' in \"{{ .Name }} 60 IN A 10.0.0.{{ .Group.b }}\": no match regex has a group named 'b'",
        ),
    ];
    assert!(cases.len() >= 15);
    for (text, want) in cases {
        assert_eq!(&parse_err(text), want, "for Corefile:\n{text}");
    }
}

#[test]
fn error_display_and_fields() {
    let e = parse_str(
        ".:53 {\n  foo\n}",
        Path::new("/etc/coredns/Corefile"),
        &no_env,
    )
    .unwrap_err();
    assert_eq!(
        (e.file.as_str(), e.line, e.col),
        ("/etc/coredns/Corefile", 2, 3)
    );
    let missing = load(Path::new("/nonexistent/Corefile")).unwrap_err();
    assert!(
        missing
            .to_string()
            .starts_with("/nonexistent/Corefile:0:0: cannot read the Corefile:"),
        "{missing}"
    );
}

#[test]
fn braceless_and_keys() {
    let c = parse("example.org\nerrors\nlog\n");
    assert_eq!(c.servers[0].zones[0].zone, "example.org.");
    assert!(!c.servers[0].zones[0].port_explicit);
    assert_eq!(c.servers[0].zones[0].port, 53);
    assert_eq!(kinds(&c.servers[0]), ["errors", "log"]);

    let c = parse("Example.ORG:1053 dns://b.org,\n tls://c.org 10.0.0.0/15 {\n whoami_is_not_here_so_no_plugins_line\n}\n".replace(" whoami_is_not_here_so_no_plugins_line\n", "").as_str());
    let z: Vec<(String, u16, bool, Transport)> = c.servers[0]
        .zones
        .iter()
        .map(|z| (z.zone.clone(), z.port, z.port_explicit, z.transport))
        .collect();
    assert_eq!(
        z,
        vec![
            ("example.org.".into(), 1053, true, Transport::Dns),
            ("b.org.".into(), 53, false, Transport::Dns),
            ("c.org.".into(), 853, false, Transport::Tls),
            ("0.10.in-addr.arpa.".into(), 53, false, Transport::Dns),
            ("1.10.in-addr.arpa.".into(), 53, false, Transport::Dns),
        ]
    );
    // One-line block forms.
    let c = parse(". { }\nexample.org:53 { errors }\n");
    assert_eq!(c.servers.len(), 2);
    assert_eq!(kinds(&c.servers[1]), ["errors"]);
}

#[test]
fn every_plugin_and_option() {
    let text = r#"
.:1053 {
    reload 10s 2s
    bind 127.0.0.1 lo {
        except ::1
    }
    bind 10.0.0.1
    ready 127.0.0.1:8181
    health [::1]:8080 {
        lameduck 1m30s
    }
    prometheus
    errors {
        consolidate 5m ".* i/o timeout$" warning
    }
    log example.org {combined} {
        class denial error
    }
    log
    loadbalance round_robin
    rewrite name exact Foo.Example.Org. svc.default.svc.cluster.local answer auto
    rewrite continue name regex (.*)\.ext\.org {1}.default.svc.cluster.local answer name (.*)\.default\.svc\.cluster\.local {1}.ext.org answer value x y
    rewrite stop name suffix .Schmoogle.com. .google.com.
    autopath @kubernetes
    acl cluster.local {
        allow net 10.0.0.0/8 192.168.1.1
        block type AAAA ANY net *
        filter type *
        drop
    }
    cache 300 cluster.local {
        success 5000 600 10
        denial 2000
        prefetch 5 30s 20%
        serve_stale 2h verify
        servfail 0
        keepttl
    }
    template IN A example.org {
        match "^(?P<a>[0-9]+)\.example\.org\.$"
        answer "{{ .Name }} 60 IN A 10.0.0.{{ .Group.a }}"
        rcode NXDOMAIN
        fallthrough
    }
    template ANY ANY invalid {
        rcode nxdomain
    }
    hosts /etc/extra-hosts example.org {
        10.0.0.1 Foo.example.org bar.example.org
        fd00::1 v6.example.org
        ttl 60
        no_reverse
        reload 0
        fallthrough
    }
    kubernetes cluster.local 10.0.0.0/8 {
        endpoint https://10.0.0.1:6443
        tls /c /k /ca
        kubeconfig /kc ctx
        namespaces default kube-system
        labels app in (a, b)
        pods verified
        endpoint_pod_names
        ttl 0
        noendpoints
        fallthrough
        ignore empty_service
        startup_timeout 500ms
    }
    loop
    forward . tls://1.1.1.1 dns://[2606:4700::1111]:5353 9.9.9.9:53 8.8.8.8 {
        except corp.example.org
        prefer_udp
        expire 1m
        max_fails 0
        health_check 1s no_rec domain example.org
        policy sequential
        max_concurrent 0
        tls /cert /key
        tls_servername cloudflare-dns.com
    }
}
"#;
    let c = parse(text);
    let b = &c.servers[0];
    assert_eq!(
        kinds(b),
        [
            "reload",
            "bind",
            "ready",
            "health",
            "prometheus",
            "errors",
            "log",
            "loadbalance",
            "rewrite",
            "autopath",
            "acl",
            "cache",
            "template",
            "hosts",
            "kubernetes",
            "loop",
            "forward"
        ]
    );
    assert_eq!(
        b.reload().unwrap(),
        &ReloadConfig {
            interval: Duration::from_secs(10),
            jitter: Duration::from_secs(2)
        }
    );
    let bind = b.bind().unwrap();
    assert_eq!(bind.addrs.len(), 3);
    assert_eq!(bind.addrs[1], BindAddr::Interface("lo".into()));
    assert_eq!(bind.except, vec![BindAddr::Ip("::1".parse().unwrap())]);
    assert_eq!(b.ready().unwrap().addr.to_string(), "127.0.0.1:8181");
    assert_eq!(b.health().unwrap().addr.to_string(), "[::1]:8080");
    assert_eq!(b.health().unwrap().lameduck, Duration::from_secs(90));
    assert_eq!(b.prometheus().unwrap().addr.to_string(), "localhost:9153");

    let cons = &b.errors().unwrap().consolidate[0];
    assert_eq!(cons.period, Duration::from_secs(300));
    assert_eq!(cons.pattern.as_str(), ".* i/o timeout$");
    assert_eq!(cons.level, ErrorLevel::Warning);

    let log = &b.log().unwrap().rules;
    assert_eq!(log.len(), 2);
    assert_eq!(log[0].name, "example.org.");
    assert_eq!(log[0].format, COMBINED_LOG_FORMAT);
    assert_eq!(
        log[0].classes,
        LogClasses {
            success: false,
            denial: true,
            error: true
        }
    );
    assert_eq!(log[1].name, ".");
    assert_eq!(log[1].classes, LogClasses::ALL);
    assert_eq!(log[1].format, COMMON_LOG_FORMAT);

    let rw = &b.rewrite().unwrap().rules;
    assert_eq!(rw.len(), 3);
    assert_eq!(
        rw[0].name,
        NameRewrite::Exact {
            from: "foo.example.org.".into(),
            to: "svc.default.svc.cluster.local.".into()
        }
    );
    assert_eq!(rw[0].answer, vec![AnswerRewrite::Auto]);
    assert_eq!(rw[1].flow, RewriteFlow::Continue);
    let NameRewrite::Regex { from, to } = &rw[1].name else {
        panic!("{:?}", rw[1].name)
    };
    assert!(from.0.is_match("a.ext.org"));
    assert_eq!(to, "{1}.default.svc.cluster.local");
    assert_eq!(rw[1].answer.len(), 2);
    assert!(matches!(&rw[1].answer[1], AnswerRewrite::Value { to, .. } if to == "y"));
    assert_eq!(
        rw[2].name,
        NameRewrite::Suffix {
            from: ".schmoogle.com.".into(),
            to: ".google.com.".into()
        }
    );

    let ap = b.autopath().unwrap();
    assert_eq!(ap.source, AutopathSource::Kubernetes);
    assert_eq!(ap.zones, zones(&["."]));

    let acl = &b.acl().unwrap().policies[0];
    assert_eq!(acl.zones, zones(&["cluster.local."]));
    assert_eq!(acl.rules.len(), 4);
    assert_eq!(acl.rules[0].action, AclAction::Allow);
    assert_eq!(
        acl.rules[0].nets,
        vec![
            "10.0.0.0/8".parse().unwrap(),
            "192.168.1.1/32".parse().unwrap()
        ]
    );
    assert!(acl.rules[0].qtypes.is_empty());
    assert_eq!(acl.rules[1].qtypes.len(), 2);
    assert!(acl.rules[1].nets.is_empty());
    assert!(acl.rules[2].qtypes.is_empty());
    assert_eq!(acl.rules[3].action, AclAction::Drop);

    let cache = b.cache().unwrap();
    assert_eq!(cache.zones, zones(&["cluster.local."]));
    assert_eq!(
        cache.success,
        CacheBucket {
            capacity: 5000,
            max_ttl: 600,
            min_ttl: 10
        }
    );
    assert_eq!(
        cache.denial,
        CacheBucket {
            capacity: 2000,
            max_ttl: 300,
            min_ttl: 5
        }
    );
    assert_eq!(
        cache.prefetch,
        Some(Prefetch {
            amount: 5,
            duration: Duration::from_secs(30),
            percentage: 20
        })
    );
    assert_eq!(
        cache.serve_stale,
        Some(ServeStale {
            duration: Duration::from_secs(7200),
            mode: StaleMode::Verify
        })
    );
    assert_eq!(cache.servfail, Duration::ZERO);
    assert!(cache.keepttl);

    let t = &b.template().unwrap().templates;
    assert_eq!(t.len(), 2);
    assert_eq!(t[0].zones, zones(&["example.org."]));
    assert!(t[0].matches[0].0.is_match("12.example.org."));
    assert_eq!(
        t[0].answers,
        vec!["{{ .Name }} 60 IN A 10.0.0.{{ .Group.a }}"]
    );
    assert_eq!(t[0].rcode, hickory_proto::op::ResponseCode::NXDomain);
    assert_eq!(t[0].fallthrough, Fallthrough::Zones(zones(&["."])));
    assert_eq!(t[1].class, hickory_proto::rr::DNSClass::ANY);
    assert_eq!(t[1].matches[0].as_str(), ".*");

    let h = b.hosts().unwrap();
    assert_eq!(h.path, PathBuf::from("/etc/extra-hosts"));
    assert_eq!(h.inline.len(), 2);
    assert_eq!(
        h.inline[0].names,
        zones(&["foo.example.org.", "bar.example.org."])
    );
    assert_eq!((h.ttl, h.no_reverse, h.reload), (60, true, Duration::ZERO));

    let k = b.kubernetes().unwrap();
    assert_eq!(k.zones, zones(&["cluster.local.", "10.in-addr.arpa."]));
    assert_eq!(k.endpoint.as_deref(), Some("https://10.0.0.1:6443"));
    assert_eq!(
        k.kubeconfig.as_ref().unwrap().context.as_deref(),
        Some("ctx")
    );
    assert_eq!(k.namespaces, zones(&["default", "kube-system"]));
    assert_eq!(k.labels.as_deref(), Some("app in (a, b)"));
    assert_eq!(k.pods, PodsMode::Verified);
    assert!(k.endpoint_pod_names && k.noendpoints && k.ignore_empty_service);
    assert_eq!(k.ttl, 0);
    assert_eq!(k.startup_timeout, Duration::from_millis(500));

    let f = b.forward().unwrap();
    assert_eq!(
        f.to,
        vec![
            Upstream::Addr {
                transport: Transport::Tls,
                addr: "1.1.1.1:853".parse().unwrap()
            },
            Upstream::Addr {
                transport: Transport::Dns,
                addr: "[2606:4700::1111]:5353".parse().unwrap()
            },
            Upstream::Addr {
                transport: Transport::Dns,
                addr: "9.9.9.9:53".parse().unwrap()
            },
            Upstream::Addr {
                transport: Transport::Dns,
                addr: "8.8.8.8:53".parse().unwrap()
            },
        ]
    );
    assert_eq!(f.except, zones(&["corp.example.org."]));
    assert!(f.prefer_udp && !f.force_tcp);
    assert_eq!(f.expire, Duration::from_secs(60));
    assert_eq!(f.max_fails, 0);
    assert_eq!(f.health_check, Duration::from_secs(1));
    assert!(f.health_check_no_rec);
    assert_eq!(f.health_check_domain, "example.org.");
    assert_eq!(f.policy, ForwardPolicy::Sequential);
    assert_eq!(f.max_concurrent, None);
    assert_eq!(
        f.tls,
        Some(UpstreamTls {
            cert: Some("/cert".into()),
            key: Some("/key".into()),
            ca: None
        })
    );
    assert_eq!(f.tls_servername.as_deref(), Some("cloudflare-dns.com"));
}

/// `forward`'s `tls` arguments are read by count, as CoreDNS does: one is the CA.
#[test]
fn forward_tls_arguments_by_count() {
    let tls = |args: &str| {
        let c = parse(&format!(
            ".:53 {{\n forward . tls://10.0.0.1 {{\n tls{args}\n }}\n}}\n"
        ));
        match &c.servers[0].plugins[0] {
            PluginConfig::Forward(f) => f.tls.clone().expect("tls set"),
            p => panic!("not forward: {p:?}"),
        }
    };
    let t = |cert: Option<&str>, key: Option<&str>, ca: Option<&str>| UpstreamTls {
        cert: cert.map(PathBuf::from),
        key: key.map(PathBuf::from),
        ca: ca.map(PathBuf::from),
    };
    assert_eq!(tls(""), t(None, None, None));
    assert_eq!(tls(" /ca"), t(None, None, Some("/ca")));
    assert_eq!(tls(" /c /k"), t(Some("/c"), Some("/k"), None));
    assert_eq!(tls(" /c /k /ca"), t(Some("/c"), Some("/k"), Some("/ca")));
    let e = parse_err(".:53 {\n forward . tls://10.0.0.1 {\n tls /c /k /ca /x\n }\n}\n");
    assert!(e.starts_with("Corefile:3:"), "{e}");
    assert!(e.contains("'/x'") || e.contains("too many"), "{e}");
}

#[test]
fn snippets_and_env() {
    let env = |k: &str| match k {
        "UPSTREAM" => Some("10.0.0.53".to_string()),
        "TTL" => Some("15".to_string()),
        "ZONE" => Some("cluster.local".to_string()),
        _ => None,
    };
    let text = r#"
(common) {
    errors
    cache {$TTL}
}
(fwd) {
    forward . {$UPSTREAM} {%UPSTREAM%}:5353
}
{$ZONE}:53 {
    import common
    kubernetes {
        ttl {%TTL%}
    }
}
.:53 {
    import common
    import fwd
}
"#;
    let c = parse_str(text, Path::new("Corefile"), &env).unwrap();
    assert_eq!(c.servers.len(), 2);
    assert_eq!(c.servers[0].zones[0].zone, "cluster.local.");
    assert_eq!(kinds(&c.servers[0]), ["errors", "cache", "kubernetes"]);
    assert_eq!(c.servers[0].cache().unwrap().success.max_ttl, 15);
    assert_eq!(
        c.servers[0].cache().unwrap().zones,
        zones(&["cluster.local."])
    );
    assert_eq!(c.servers[0].kubernetes().unwrap().ttl, 15);
    assert_eq!(kinds(&c.servers[1]), ["errors", "cache", "forward"]);
    let f = c.servers[1].forward().unwrap();
    assert_eq!(f.to.len(), 2);
    assert!(matches!(
        f.to[1],
        Upstream::Addr { addr, .. } if addr == "10.0.0.53:5353".parse::<SocketAddr>().unwrap()
    ));
    assert!(matches!(
        f.to[0],
        Upstream::Addr { addr, .. } if addr == "10.0.0.53:53".parse::<SocketAddr>().unwrap()
    ));
}

/// An unset variable becomes empty, as in Caddy; as an argument that is a bad value.
#[test]
fn empty_env_argument_is_reported() {
    let err = parse_str(
        ".:53 {\n  forward . {$NOPE}\n}\n",
        Path::new("Corefile"),
        &no_env,
    )
    .unwrap_err()
    .to_string();
    assert_eq!(
        err,
        "Corefile:2:13: forward: '' is not an IP address, IP:PORT or resolv.conf file"
    );
}

#[test]
fn imports_files_globs_and_cycles() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("conf.d")).unwrap();
    std::fs::write(d.join("plugins.conf"), "errors\ncache 30\n").unwrap();
    std::fs::write(
        d.join("conf.d/a.server"),
        "a.example:53 {\n  import ../plugins.conf\n}\n",
    )
    .unwrap();
    std::fs::write(
        d.join("conf.d/b.server"),
        "b.example:53 {\n  forward . 1.1.1.1\n}\n",
    )
    .unwrap();
    std::fs::write(d.join("conf.d/ignored.txt"), "garbage {").unwrap();
    let corefile = d.join("Corefile");
    std::fs::write(
        &corefile,
        ".:53 {\n    import plugins.conf\n    forward . /etc/resolv.conf\n}\nimport conf.d/*.server\nimport nothing/*.matches\n",
    )
    .unwrap();
    let c = load(&corefile).unwrap();
    let names: Vec<&str> = c.servers.iter().map(|s| s.zones[0].zone.as_str()).collect();
    assert_eq!(names, [".", "a.example.", "b.example."]);
    assert_eq!(kinds(&c.servers[0]), ["errors", "cache", "forward"]);
    assert_eq!(kinds(&c.servers[1]), ["errors", "cache"]);
    // Positions of imported blocks point into the imported file.
    assert_eq!(
        c.servers[1].pos.file.as_ref(),
        d.join("conf.d/a.server").as_path()
    );

    // An error inside an imported file names that file.
    std::fs::write(d.join("bad.conf"), "errors\n  cache 0\n").unwrap();
    std::fs::write(&corefile, ".:53 {\n  import bad.conf\n}\n").unwrap();
    let e = load(&corefile).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "{}:2:9: cache: TTL 0 is out of range (1..=4294967295)",
            d.join("bad.conf").display()
        )
    );

    // A file importing itself through another file.
    std::fs::write(d.join("x.conf"), "import y.conf\n").unwrap();
    std::fs::write(d.join("y.conf"), "import x.conf\n").unwrap();
    std::fs::write(&corefile, ".:53 {\n  import x.conf\n}\n").unwrap();
    let e = load(&corefile).unwrap_err().to_string();
    let (x, y) = (d.join("x.conf"), d.join("y.conf"));
    assert_eq!(
        e,
        format!(
            "{}:1:8: import cycle: {} -> {} -> {} -> {}",
            y.display(),
            corefile.display(),
            x.display(),
            y.display(),
            x.display()
        )
    );

    // The Corefile importing itself.
    std::fs::write(&corefile, ".:53 {\n  errors\n}\nimport Corefile\n").unwrap();
    let e = load(&corefile).unwrap_err().to_string();
    assert!(e.contains(":4:8: import cycle: "), "{e}");

    // Globs are limited like Caddy's.
    std::fs::write(&corefile, "import */*.server\n").unwrap();
    let e = load(&corefile).unwrap_err().to_string();
    assert!(
        e.contains(":1:8: import glob may contain at most one '*'"),
        "{e}"
    );

    // Importing a directory.
    std::fs::write(&corefile, "import conf.d\n").unwrap();
    let e = load(&corefile).unwrap_err().to_string();
    assert!(e.ends_with("conf.d': it is a directory"), "{e}");

    // Invalid UTF-8 is reported with a position.
    std::fs::write(&corefile, b".:53 {\n  log \xff\n}\n").unwrap();
    let e = load(&corefile).unwrap_err().to_string();
    assert_eq!(
        e,
        format!("{}:2:7: the file is not valid UTF-8", corefile.display())
    );
}

#[test]
fn snippet_expansion_is_bounded() {
    // Each snippet imports the previous one twice: 2^25 copies if not bounded.
    let mut text = String::from("(s0) {\n  log\n}\n");
    for i in 1..26 {
        text.push_str(&format!(
            "(s{i}) {{\n  import s{}\n  import s{}\n}}\n",
            i - 1,
            i - 1
        ));
    }
    text.push_str(".:53 {\n  import s25\n}\n");
    let e = parse_err(&text);
    assert!(e.contains("imports expand to more than"), "{e}");
}

/// xorshift64*: deterministic and dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

#[test]
fn deep_nesting_is_an_error_not_a_stack_overflow() {
    let text = format!(".:53 {{\n{}", "a {\n".repeat(10_000));
    let e = parse_err(&text);
    assert!(e.contains("blocks are nested too deeply"), "{e}");
    let mut chain = String::from("(s0) {\n  log\n}\n");
    for i in 1..40 {
        chain.push_str(&format!("(s{i}) {{\n  import s{}\n}}\n", i - 1));
    }
    chain.push_str(".:53 {\n  import s39\n}\n");
    let e = parse_err(&chain);
    assert!(e.contains("imports are nested too deeply"), "{e}");
}

#[test]
fn arbitrary_input_never_panics() {
    let env = |k: &str| k.len().is_multiple_of(2).then(|| "{$X}".to_string());
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let alphabet: &[u8] = b"{}\"\\#$%:./,()*? \n\t\rabcdeimport0123456789-_@[]";
    for i in 0..4000 {
        let len = rng.below(200);
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                if i % 2 == 0 {
                    rng.next() as u8
                } else {
                    alphabet[rng.below(alphabet.len())]
                }
            })
            .collect();
        let text = String::from_utf8_lossy(&bytes);
        let _ = parse_str(&text, Path::new("/nonexistent/Corefile"), &env);
    }

    // Mutations of real Corefiles reach deep into the plugin parsers.
    let stock = [EKS, KUBEADM, NODELOCAL];
    let tokens = [
        "{",
        "}",
        "\"",
        "#",
        "import",
        "(s)",
        "0",
        "-1",
        "99999999999",
        "5x",
        ".",
        ":",
        "\n",
        "tls://",
        "*",
        "1.1.1.1",
        "{$A}",
        "\\",
        "answer",
        "regex",
        "(",
    ];
    for i in 0..6000 {
        let mut t: Vec<char> = stock[i % stock.len()].chars().collect();
        for _ in 0..=rng.below(4) {
            let at = rng.below(t.len() + 1);
            match rng.below(4) {
                0 => {
                    if at < t.len() {
                        t.remove(at);
                    }
                }
                1 => {
                    let tok = tokens[rng.below(tokens.len())];
                    for (k, ch) in tok.chars().enumerate() {
                        t.insert(at + k, ch);
                    }
                }
                2 => {
                    // Drop a whole range: unbalanced braces, truncated lines.
                    let end = (at + rng.below(40)).min(t.len());
                    t.drain(at..end);
                }
                _ => {
                    if at < t.len() {
                        t[at] = char::from(rng.next() as u8);
                    }
                }
            }
        }
        let text: String = t.into_iter().collect();
        let _ = parse_str(&text, Path::new("Corefile"), &env);
    }
}
