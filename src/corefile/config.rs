//! Typed configuration: what a Corefile means, with CoreDNS's defaults filled in.
//!
//! Zones are lowercase FQDNs with a trailing dot. Where a plugin's zones default to the
//! server block's zones, they are filled in here, so consumers never look at the keys again.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{DNSClass, RecordType};
use ipnet::IpNet;

use super::Pos;

/// A whole Corefile.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub servers: Vec<ServerBlock>,
}

impl Config {
    /// The server block CoreDNS would route this query to: among blocks listening on `port`,
    /// the one with the longest zone that contains `qname` (lowercase, trailing dot optional).
    pub fn block_for(&self, qname_lowercase: &str, port: u16) -> Option<&ServerBlock> {
        let mut best: Option<(&ServerBlock, usize)> = None;
        for block in &self.servers {
            for key in &block.zones {
                if key.port != port || !name_in_zone(qname_lowercase, &key.zone) {
                    continue;
                }
                let labels = label_count(&key.zone);
                if best.is_none_or(|(_, n)| labels > n) {
                    best = Some((block, labels));
                }
            }
        }
        best.map(|(b, _)| b)
    }
}

/// Whether `name` is `zone` or below it (both lowercase; trailing dots optional).
pub fn name_in_zone(name: &str, zone: &str) -> bool {
    let zone = zone.trim_end_matches('.');
    if zone.is_empty() {
        return true;
    }
    let name = name.trim_end_matches('.');
    name == zone
        || (name.len() > zone.len()
            && name.ends_with(zone)
            && name.as_bytes()[name.len() - zone.len() - 1] == b'.')
}

fn label_count(zone: &str) -> usize {
    zone.split('.').filter(|l| !l.is_empty()).count()
}

/// One `ZONE[:PORT] ... { plugins }` block.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerBlock {
    pub zones: Vec<ZoneKey>,
    /// In CoreDNS's fixed execution order (see [`PluginKind::ORDER`]), at most one entry per
    /// plugin; repeatable plugins (log, rewrite, acl, bind, template) are merged into one
    /// entry in line order.
    pub plugins: Vec<PluginConfig>,
    /// Where the block's first key is.
    pub pos: Pos,
    /// Where each plugin is first used, for errors found when the block is built.
    pub plugin_pos: HashMap<PluginKind, Pos>,
}

/// A server block key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ZoneKey {
    pub zone: String,
    pub port: u16,
    /// False when the port is the transport's default; a `-dns.port`-style override may
    /// replace only those.
    pub port_explicit: bool,
    pub transport: Transport,
}

/// How a server block is served (`dns://` unless the key names another scheme).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Transport {
    #[default]
    Dns,
    Tls,
    Grpc,
    Https,
    Quic,
}

impl Transport {
    /// CoreDNS's default port per transport.
    pub fn default_port(self) -> u16 {
        match self {
            Self::Dns => 53,
            Self::Tls | Self::Quic => 853,
            Self::Grpc | Self::Https => 443,
        }
    }

    pub fn scheme(self) -> &'static str {
        match self {
            Self::Dns => "dns://",
            Self::Tls => "tls://",
            Self::Grpc => "grpc://",
            Self::Https => "https://",
            Self::Quic => "quic://",
        }
    }
}

/// A listen address for the HTTP endpoints; an empty host means every interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    pub host: String,
    pub port: u16,
}

impl HostPort {
    pub(crate) fn new(host: &str, port: u16) -> Self {
        Self {
            host: host.to_string(),
            port,
        }
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Which names a plugin passes on to the next plugin instead of answering NXDOMAIN.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Fallthrough {
    #[default]
    Off,
    /// `fallthrough` alone is `["."]`.
    Zones(Vec<String>),
}

impl Fallthrough {
    pub fn applies(&self, qname: &str) -> bool {
        match self {
            Self::Off => false,
            Self::Zones(z) => z.iter().any(|z| name_in_zone(qname, z)),
        }
    }
}

/// A compiled regular expression that compares by its source text.
#[derive(Debug, Clone)]
pub struct Pattern(pub regex::Regex);

impl Pattern {
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_str() == other.0.as_str()
    }
}

impl Eq for Pattern {}

/// The plugins this server understands, in CoreDNS's execution order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PluginKind {
    Timeouts,
    Reload,
    Bind,
    Ready,
    Health,
    Prometheus,
    Errors,
    Log,
    Loadbalance,
    Rewrite,
    Autopath,
    Acl,
    Cache,
    Template,
    Hosts,
    Kubernetes,
    Loop,
    Forward,
}

impl PluginKind {
    /// CoreDNS's `plugin.cfg` order restricted to the supported plugins; the order a query
    /// passes through them, whatever the order of the lines.
    pub const ORDER: [PluginKind; 18] = [
        Self::Timeouts,
        Self::Reload,
        Self::Bind,
        Self::Ready,
        Self::Health,
        Self::Prometheus,
        Self::Errors,
        Self::Log,
        Self::Loadbalance,
        Self::Rewrite,
        Self::Autopath,
        Self::Acl,
        Self::Cache,
        Self::Template,
        Self::Hosts,
        Self::Kubernetes,
        Self::Loop,
        Self::Forward,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Timeouts => "timeouts",
            Self::Reload => "reload",
            Self::Bind => "bind",
            Self::Ready => "ready",
            Self::Health => "health",
            Self::Prometheus => "prometheus",
            Self::Errors => "errors",
            Self::Log => "log",
            Self::Loadbalance => "loadbalance",
            Self::Rewrite => "rewrite",
            Self::Autopath => "autopath",
            Self::Acl => "acl",
            Self::Cache => "cache",
            Self::Template => "template",
            Self::Hosts => "hosts",
            Self::Kubernetes => "kubernetes",
            Self::Loop => "loop",
            Self::Forward => "forward",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ORDER.into_iter().find(|k| k.name() == name)
    }

    /// Plugins CoreDNS lets a server block use several times (each use adds rules).
    pub fn repeatable(self) -> bool {
        matches!(
            self,
            Self::Log | Self::Rewrite | Self::Acl | Self::Bind | Self::Template
        )
    }
}

/// One configured plugin.
#[derive(Debug, Clone, PartialEq)]
pub enum PluginConfig {
    Timeouts(TimeoutsConfig),
    Reload(ReloadConfig),
    Bind(BindConfig),
    Ready(ReadyConfig),
    Health(HealthConfig),
    Prometheus(PrometheusConfig),
    Errors(ErrorsConfig),
    Log(LogConfig),
    Loadbalance(LoadbalanceConfig),
    Rewrite(RewriteConfig),
    Autopath(AutopathConfig),
    Acl(AclConfig),
    Cache(CacheConfig),
    Template(TemplateConfig),
    Hosts(HostsConfig),
    Kubernetes(KubernetesConfig),
    Loop(LoopConfig),
    Forward(ForwardConfig),
}

macro_rules! accessors {
    ($($fn:ident: $variant:ident($ty:ty)),* $(,)?) => {
        impl PluginConfig {
            pub fn kind(&self) -> PluginKind {
                match self {
                    $(Self::$variant(_) => PluginKind::$variant,)*
                }
            }
        }

        impl ServerBlock {
            /// The configured plugin of this kind, if any.
            pub fn plugin(&self, kind: PluginKind) -> Option<&PluginConfig> {
                self.plugins.iter().find(|p| p.kind() == kind)
            }

            $(
                pub fn $fn(&self) -> Option<&$ty> {
                    self.plugins.iter().find_map(|p| match p {
                        PluginConfig::$variant(c) => Some(c),
                        _ => None,
                    })
                }
            )*
        }
    };
}

accessors! {
    timeouts: Timeouts(TimeoutsConfig),
    reload: Reload(ReloadConfig),
    bind: Bind(BindConfig),
    ready: Ready(ReadyConfig),
    health: Health(HealthConfig),
    prometheus: Prometheus(PrometheusConfig),
    errors: Errors(ErrorsConfig),
    log: Log(LogConfig),
    loadbalance: Loadbalance(LoadbalanceConfig),
    rewrite: Rewrite(RewriteConfig),
    autopath: Autopath(AutopathConfig),
    acl: Acl(AclConfig),
    cache: Cache(CacheConfig),
    template: Template(TemplateConfig),
    hosts: Hosts(HostsConfig),
    kubernetes: Kubernetes(KubernetesConfig),
    loop_detect: Loop(LoopConfig),
    forward: Forward(ForwardConfig),
}

/// `timeouts { read DUR write DUR idle DUR }`: DNS-over-TCP timeouts of the block's
/// listeners; those not given keep the process-wide values (the `--tcp-*-timeout` flags).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TimeoutsConfig {
    pub read: Option<Duration>,
    pub write: Option<Duration>,
    pub idle: Option<Duration>,
}

/// `reload [INTERVAL] [JITTER]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadConfig {
    /// Default 30s, at least 2s.
    pub interval: Duration,
    /// Default 15s, at least 1s, at most half the interval.
    pub jitter: Duration,
}

impl Default for ReloadConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(30),
            jitter: Duration::from_secs(15),
        }
    }
}

/// An address or a network interface for `bind`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BindAddr {
    Ip(IpAddr),
    Interface(String),
}

/// `bind ADDR... { except ADDR... }`, all `bind` lines merged.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BindConfig {
    pub addrs: Vec<BindAddr>,
    pub except: Vec<BindAddr>,
}

/// `ready [ADDR]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadyConfig {
    /// Default `:8181`.
    pub addr: HostPort,
}

impl Default for ReadyConfig {
    fn default() -> Self {
        Self {
            addr: HostPort::new("", 8181),
        }
    }
}

/// `health [ADDR] { lameduck DUR }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthConfig {
    /// Default `:8080`.
    pub addr: HostPort,
    /// Keep serving (and answering 200) this long after shutdown starts. Default 0.
    pub lameduck: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            addr: HostPort::new("", 8080),
            lameduck: Duration::ZERO,
        }
    }
}

/// `prometheus [ADDR]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrometheusConfig {
    /// Default `localhost:9153`, as the CoreDNS README documents (the stock Corefiles say
    /// `:9153` explicitly).
    pub addr: HostPort,
}

impl Default for PrometheusConfig {
    fn default() -> Self {
        Self {
            addr: HostPort::new("localhost", 9153),
        }
    }
}

/// Log level for consolidated error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ErrorLevel {
    Debug,
    Info,
    Warning,
    #[default]
    Error,
}

/// `consolidate DUR REGEXP [LEVEL] [show_first]`: errors matching REGEXP are counted and
/// logged once per period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consolidate {
    pub period: Duration,
    pub pattern: Pattern,
    pub level: ErrorLevel,
    pub show_first: bool,
}

/// `errors { consolidate ... }`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ErrorsConfig {
    pub consolidate: Vec<Consolidate>,
}

/// Response classes the `log` plugin can restrict itself to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogClasses {
    pub success: bool,
    pub denial: bool,
    pub error: bool,
}

impl LogClasses {
    pub const ALL: Self = Self {
        success: true,
        denial: true,
        error: true,
    };
    pub const NONE: Self = Self {
        success: false,
        denial: false,
        error: false,
    };
}

/// The CoreDNS `{common}` log format.
pub const COMMON_LOG_FORMAT: &str = "{remote}:{port} - {>id} \"{type} {class} {name} {proto} {size} {>do} {>bufsize}\" {rcode} {>rflags} {rsize} {duration}";
/// The CoreDNS `{combined}` log format.
pub const COMBINED_LOG_FORMAT: &str = "{remote}:{port} - {>id} \"{type} {class} {name} {proto} {size} {>do} {>bufsize}\" {rcode} {>rflags} {rsize} {duration} \"{>opcode}\"";

/// One name scope of a `log` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRule {
    /// Queries at or below this name are logged; default `.`.
    pub name: String,
    /// Placeholders as in CoreDNS; `{common}`/`{combined}` already expanded.
    pub format: String,
    pub classes: LogClasses,
}

/// All `log` lines of a block.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LogConfig {
    pub rules: Vec<LogRule>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LoadbalancePolicy {
    #[default]
    RoundRobin,
}

/// `loadbalance [round_robin]`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LoadbalanceConfig {
    pub policy: LoadbalancePolicy,
}

/// After a rule matched: stop (default) or continue with the next rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RewriteFlow {
    #[default]
    Stop,
    Continue,
}

/// How a `rewrite name` rule matches the query name and what it rewrites it to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameRewrite {
    /// FROM and TO are FQDNs.
    Exact {
        from: String,
        to: String,
    },
    Prefix {
        from: String,
        to: String,
    },
    Suffix {
        from: String,
        to: String,
    },
    Substring {
        from: String,
        to: String,
    },
    /// TO may use `{1}`.. for capture groups.
    Regex {
        from: Pattern,
        to: String,
    },
}

/// How responses are rewritten back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnswerRewrite {
    /// `answer auto`: reverse the name rewrite in the answer.
    Auto,
    /// `answer name FROM TO`: rewrite owner names matching FROM.
    Name { from: Pattern, to: String },
    /// `answer value FROM TO`: rewrite names in RDATA (CNAME, SRV, ...) matching FROM.
    Value { from: Pattern, to: String },
}

/// `rewrite [continue|stop] name [MATCH] FROM TO [answer ...]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RewriteRule {
    pub flow: RewriteFlow,
    pub name: NameRewrite,
    pub answer: Vec<AnswerRewrite>,
}

/// All `rewrite` lines of a block, in line order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RewriteConfig {
    pub rules: Vec<RewriteRule>,
}

/// Where autopath gets the search path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AutopathSource {
    /// `@kubernetes`: from the pod's namespace.
    Kubernetes,
    ResolvConf(PathBuf),
}

/// `autopath [ZONES] @kubernetes|RESOLV-CONF`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AutopathConfig {
    pub zones: Vec<String>,
    pub source: AutopathSource,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AclAction {
    Allow,
    /// Answer REFUSED.
    Block,
    /// Answer an empty NOERROR.
    Filter,
    /// Do not answer.
    Drop,
}

/// `ACTION [type QTYPE...] [net CIDR...]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AclRule {
    pub action: AclAction,
    /// Empty means every type (no `type` section, or `type *`).
    pub qtypes: Vec<RecordType>,
    /// Empty means every source (no `net` section, or `net *`).
    pub nets: Vec<IpNet>,
}

/// One `acl` directive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AclPolicy {
    pub zones: Vec<String>,
    pub rules: Vec<AclRule>,
}

/// All `acl` directives of a block, in line order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AclConfig {
    pub policies: Vec<AclPolicy>,
}

/// Capacity and TTL bounds of one cache bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheBucket {
    /// Maximum number of entries; default 9984.
    pub capacity: u32,
    /// TTLs are capped to this many seconds; default 3600 (success), 1800 (denial).
    pub max_ttl: u32,
    /// TTLs are raised to at least this; default 5.
    pub min_ttl: u32,
}

/// `prefetch AMOUNT [DURATION] [PERCENTAGE%]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prefetch {
    /// Hits within `duration` that make an item eligible; at least 1.
    pub amount: u32,
    /// Default 1m.
    pub duration: Duration,
    /// Refetch when this share of the TTL is left; default 10.
    pub percentage: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StaleMode {
    /// Answer stale data at once and refresh in the background.
    #[default]
    Immediate,
    /// Try to refresh first; answer stale data only if that fails.
    Verify,
}

/// `serve_stale [DURATION] [immediate|verify]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeStale {
    /// Default 1h.
    pub duration: Duration,
    pub mode: StaleMode,
}

/// `cache [TTL] [ZONES] { ... }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheConfig {
    pub zones: Vec<String>,
    pub success: CacheBucket,
    pub denial: CacheBucket,
    pub prefetch: Option<Prefetch>,
    pub serve_stale: Option<ServeStale>,
    /// How long SERVFAIL answers are cached; default 5s, at most 5m, 0 disables.
    pub servfail: Duration,
    /// Zones where positive answers are not cached.
    pub disable_success: Vec<String>,
    /// Zones where negative answers are not cached.
    pub disable_denial: Vec<String>,
    /// Answer with the original TTL instead of counting down.
    pub keepttl: bool,
}

impl CacheConfig {
    pub const DEFAULT_CAPACITY: u32 = 9984;

    pub(crate) fn with_zones(zones: Vec<String>) -> Self {
        Self {
            zones,
            success: CacheBucket {
                capacity: Self::DEFAULT_CAPACITY,
                max_ttl: 3600,
                min_ttl: 5,
            },
            denial: CacheBucket {
                capacity: Self::DEFAULT_CAPACITY,
                max_ttl: 1800,
                min_ttl: 5,
            },
            prefetch: None,
            serve_stale: None,
            servfail: Duration::from_secs(5),
            disable_success: Vec::new(),
            disable_denial: Vec::new(),
            keepttl: false,
        }
    }
}

/// One `template CLASS TYPE [ZONES] { ... }` directive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    /// `ANY` matches every class.
    pub class: DNSClass,
    /// `ANY` matches every type.
    pub qtype: RecordType,
    pub zones: Vec<String>,
    /// Query names must match one of these; default `.*`.
    pub matches: Vec<Pattern>,
    /// Go text/template sources for resource records, kept verbatim.
    pub answers: Vec<String>,
    pub additional: Vec<String>,
    pub authority: Vec<String>,
    /// Default NOERROR.
    pub rcode: ResponseCode,
    pub fallthrough: Fallthrough,
}

/// All `template` directives of a block, in line order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TemplateConfig {
    pub templates: Vec<Template>,
}

/// One inline hosts line: `IP NAME...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostsEntry {
    pub addr: IpAddr,
    /// Lowercase FQDNs.
    pub names: Vec<String>,
}

/// `hosts [FILE [ZONES]] { ... }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostsConfig {
    /// Default `/etc/hosts`.
    pub path: PathBuf,
    pub zones: Vec<String>,
    pub inline: Vec<HostsEntry>,
    /// Seconds; default 3600.
    pub ttl: u32,
    pub no_reverse: bool,
    /// How often the file is checked for changes; default 5s, 0 disables.
    pub reload: Duration,
    pub fallthrough: Fallthrough,
}

/// `pods disabled|insecure|verified`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PodsMode {
    #[default]
    Disabled,
    Insecure,
    Verified,
}

/// `tls CERT KEY CACERT` for the API server connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

/// `kubeconfig FILE [CONTEXT]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kubeconfig {
    pub path: PathBuf,
    pub context: Option<String>,
}

/// `kubernetes [ZONES] { ... }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubernetesConfig {
    pub zones: Vec<String>,
    pub endpoint: Option<String>,
    pub tls: Option<ApiTls>,
    pub kubeconfig: Option<Kubeconfig>,
    /// Empty means every namespace.
    pub namespaces: Vec<String>,
    /// Label selector source, e.g. `environment in (production)`.
    pub namespace_labels: Option<String>,
    pub labels: Option<String>,
    pub pods: PodsMode,
    pub endpoint_pod_names: bool,
    /// Seconds, 0..=3600; default 5.
    pub ttl: u32,
    pub noendpoints: bool,
    pub fallthrough: Fallthrough,
    pub ignore_empty_service: bool,
    /// How long to wait for the first sync before serving anyway; default 5s.
    pub startup_timeout: Duration,
    /// `zonal`: CoreDNS's zone-scoped names of headless services.
    pub zonal: bool,
    /// `zone_first` (ours): every headless service answers with the client's zone first.
    pub zone_first: bool,
}

impl KubernetesConfig {
    pub(crate) fn with_zones(zones: Vec<String>) -> Self {
        Self {
            zones,
            endpoint: None,
            tls: None,
            kubeconfig: None,
            namespaces: Vec::new(),
            namespace_labels: None,
            labels: None,
            pods: PodsMode::Disabled,
            endpoint_pod_names: false,
            ttl: 5,
            noendpoints: false,
            fallthrough: Fallthrough::Off,
            ignore_empty_service: false,
            startup_timeout: Duration::from_secs(5),
            zonal: false,
            zone_first: false,
        }
    }
}

/// `loop` (no options).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LoopConfig {}

/// Where `forward` sends queries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upstream {
    /// A nameserver; `transport` is Dns or Tls.
    Addr {
        transport: Transport,
        addr: SocketAddr,
    },
    /// A resolv.conf-style file whose `nameserver` lines are the upstreams; read by the
    /// forwarder, not here.
    ResolvConf(PathBuf),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ForwardPolicy {
    #[default]
    Random,
    RoundRobin,
    Sequential,
}

/// `tls [CERT KEY] [CA]` for `tls://` upstreams, read as CoreDNS does: no argument = verify
/// with the system roots; `CA`; `CERT KEY` (a client certificate, system roots); `CERT KEY CA`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UpstreamTls {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub ca: Option<PathBuf>,
}

/// `forward FROM TO... { ... }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardConfig {
    pub from: String,
    /// At most 15.
    pub to: Vec<Upstream>,
    pub except: Vec<String>,
    pub force_tcp: bool,
    /// Ignored when `force_tcp` is set, as in CoreDNS.
    pub prefer_udp: bool,
    /// Idle upstream connections are closed after this; default 10s.
    pub expire: Duration,
    /// Failed health checks before an upstream counts as down; default 2, 0 disables.
    pub max_fails: u32,
    /// Default 0.5s.
    pub health_check: Duration,
    /// `health_check DUR no_rec`: send the probe without RD.
    pub health_check_no_rec: bool,
    /// `health_check DUR domain NAME`: probe name; default `.`.
    pub health_check_domain: String,
    pub policy: ForwardPolicy,
    /// Above this many queries in flight, answer REFUSED; None is unlimited.
    pub max_concurrent: Option<u32>,
    pub tls: Option<UpstreamTls>,
    pub tls_servername: Option<String>,
}

impl ForwardConfig {
    pub const MAX_UPSTREAMS: usize = 15;

    pub(crate) fn new(from: String, to: Vec<Upstream>) -> Self {
        Self {
            from,
            to,
            except: Vec::new(),
            force_tcp: false,
            prefer_udp: false,
            expire: Duration::from_secs(10),
            max_fails: 2,
            health_check: Duration::from_millis(500),
            health_check_no_rec: false,
            health_check_domain: ".".to_string(),
            policy: ForwardPolicy::Random,
            max_concurrent: None,
            tls: None,
            tls_servername: None,
        }
    }
}
