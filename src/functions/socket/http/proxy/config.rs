//! The HTTP proxy's configuration, and what it compiles to: pools of
//! upstreams with their balancing, and the routes that pick a pool by
//! `Host` and path prefix.

use std::hash::{Hash, Hasher};
use std::net::SocketAddr;

use smoltcp::time::Instant;
use smoltcp::wire::{IpAddress, IpEndpoint};

use crate::functions::FunctionError;
use crate::functions::common::invalid;
use crate::functions::matching::{ConfigDuration, quoted};
use crate::functions::socket::{Balance, check_tcp_buffer};

use super::super::codec::{Limits, MAX_HEADERS, RequestHead};

/// `[function] kind = "http-proxy"`; a field left out takes its value
/// from [`HttpProxyConfig::default`].
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpProxyConfig {
    /// TCP port to accept requests on (80).
    pub port: u16,
    /// Names this proxy in the `Via` field it adds (`"shmnet"`).
    pub name: String,
    /// The pools of upstreams.
    pub pools: Vec<PoolConfig>,
    /// Which pool serves a request: the route with the longest matching
    /// path prefix among those naming the request's host, else among those
    /// naming no host. No route: 404.
    pub routes: Vec<RouteConfig>,
    /// Applications: requests counted and policed per application
    /// (see `HttpProxy`).
    pub apps: Vec<super::apps::AppConfig>,
    /// Give up on connecting to an upstream after this long: 504 (5s).
    pub connect_timeout: ConfigDuration,
    /// Give up waiting for a response head after this long: 504 (30s).
    pub response_timeout: ConfigDuration,
    /// Close a client connection idle between requests this long, and
    /// kept upstream connections unused this long (60s).
    pub idle_timeout: ConfigDuration,
    /// An upstream that failed `eject_after` times in a row is skipped for
    /// this long (10s).
    pub eject_for: ConfigDuration,
    /// Consecutive failures (refused, timed out, reset before answering)
    /// that eject an upstream (3).
    pub eject_after: u32,
    /// Client connections at once (256); beyond it clients are refused.
    pub max_connections: usize,
    /// Sockets kept listening for new clients (4).
    pub backlog: usize,
    /// Idle keep-alive connections kept per upstream for reuse (8).
    pub max_idle_per_upstream: usize,
    /// Bytes of each socket's buffers each way (default: the device's
    /// `[sockets] tcp_buffer`).
    pub tcp_buffer: Option<usize>,
    /// Longest request line: 414 beyond (8 KiB).
    pub max_request_line: usize,
    /// Largest request or response head: 431 beyond (32 KiB).
    pub max_head: usize,
    /// Most header fields in a head: 431 beyond (100).
    pub max_headers: usize,
    /// Bytes of the HTTP cache (responses with explicit freshness kept and
    /// served while fresh); 0, the default, turns it off.
    pub cache_bytes: usize,
    /// The largest response body the cache keeps (1 MiB).
    pub cache_max_object: usize,
}

impl Default for HttpProxyConfig {
    fn default() -> Self {
        let limits = Limits::default();
        HttpProxyConfig {
            port: 80,
            name: "shmnet".into(),
            pools: Vec::new(),
            routes: Vec::new(),
            connect_timeout: ConfigDuration::from_secs(5),
            response_timeout: ConfigDuration::from_secs(30),
            idle_timeout: ConfigDuration::from_secs(60),
            eject_for: ConfigDuration::from_secs(10),
            eject_after: 3,
            max_connections: 256,
            backlog: 4,
            max_idle_per_upstream: 8,
            tcp_buffer: None,
            max_request_line: limits.max_request_line,
            max_head: limits.max_head,
            max_headers: limits.max_headers,
            cache_bytes: 0,
            cache_max_object: 1 << 20,
            apps: Vec::new(),
        }
    }
}

/// One `[[pools]]` entry.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    /// The pool's name, for routes and counters.
    pub name: String,
    /// Upstreams as "ip:port".
    pub upstreams: Vec<String>,
    /// How to pick one.
    #[serde(default)]
    pub balance: Balance,
    /// With `balance = "hash"`: the request field whose value is hashed.
    pub hash_header: Option<String>,
    /// With `balance = "hash"`: the cookie whose value is hashed (sticky
    /// sessions).
    pub hash_cookie: Option<String>,
    /// Active health checks of the upstreams (none: passive only).
    pub health: Option<super::health::HealthConfig>,
}

/// One `[[routes]]` entry.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// The `Host` it serves (any case, without the port); none: any host.
    pub host: Option<String>,
    /// Path prefix (`"/"`: everything).
    #[serde(default = "root")]
    pub path: String,
    /// The pool that serves it.
    pub pool: String,
}

fn root() -> String {
    "/".into()
}

/// An upstream of a pool and what the proxy knows of it.
#[derive(Debug)]
pub(super) struct Upstream {
    pub(super) ep: IpEndpoint,
    /// Requests in progress on it.
    pub(super) active: u32,
    /// Failures in a row.
    pub(super) failures: u32,
    pub(super) down_until: Option<Instant>,
    /// Its active checks, if the pool has them.
    pub(super) checker: Option<super::health::Checker>,
}

/// What the hash of a pool reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum HashKey {
    Header(Vec<u8>),
    Cookie(Vec<u8>),
}

/// A pool made ready.
#[derive(Debug)]
pub(super) struct Pool {
    pub(super) name: String,
    pub(super) balance: Balance,
    pub(super) key: Option<HashKey>,
    pub(super) upstreams: Vec<Upstream>,
    pub(super) next: usize,
}

/// A route made ready.
#[derive(Debug)]
pub(super) struct Route {
    host: Option<Vec<u8>>,
    path: Vec<u8>,
    pub(super) pool: usize,
}

/// Checks `cfg`; its pools and routes, errors naming the field.
pub(super) fn compile(cfg: &HttpProxyConfig) -> Result<(Vec<Pool>, Vec<Route>), FunctionError> {
    let bad = invalid("http-proxy");
    if cfg.port == 0 {
        return Err(bad("port must be 1..=65535".into()));
    }
    if cfg.name.is_empty() || !cfg.name.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad(format!(
            "name {} must be printable ASCII without spaces",
            quoted(&cfg.name)
        )));
    }
    if cfg.pools.is_empty() {
        return Err(bad("give at least one [[pools]] entry".into()));
    }
    let mut pools = Vec::new();
    for (i, p) in cfg.pools.iter().enumerate() {
        if p.name.is_empty() || cfg.pools[..i].iter().any(|q| q.name == p.name) {
            return Err(bad(format!(
                "pools[{i}].name {} is empty or used twice",
                quoted(&p.name)
            )));
        }
        if p.upstreams.is_empty() {
            return Err(bad(format!("pools[{i}].upstreams is empty")));
        }
        let mut upstreams = Vec::new();
        for u in &p.upstreams {
            let a: SocketAddr = u
                .parse()
                .map_err(|_| bad(format!("pools[{i}]: upstream {} is not ip:port", quoted(u))))?;
            if a.port() == 0 {
                return Err(bad(format!("pools[{i}]: upstream {}: port 0", quoted(u))));
            }
            upstreams.push(Upstream {
                ep: IpEndpoint::new(IpAddress::from(a.ip()), a.port()),
                active: 0,
                failures: 0,
                down_until: None,
                checker: p
                    .health
                    .clone()
                    .map(|h| super::health::Checker::new(h, Instant::ZERO)),
            });
        }
        if let Some(h) = &p.health {
            h.check().map_err(|e| bad(format!("pools[{i}].{e}")))?;
        }
        let key = match (p.balance, &p.hash_header, &p.hash_cookie) {
            (Balance::Hash, Some(h), None) => Some(HashKey::Header(h.as_bytes().to_vec())),
            (Balance::Hash, None, Some(c)) => Some(HashKey::Cookie(c.as_bytes().to_vec())),
            (Balance::Hash, _, _) => {
                return Err(bad(format!(
                    "pools[{i}]: balance = \"hash\" needs one of hash_header and hash_cookie"
                )));
            }
            (_, None, None) => None,
            _ => {
                return Err(bad(format!(
                    "pools[{i}]: hash_header and hash_cookie go with balance = \"hash\""
                )));
            }
        };
        pools.push(Pool {
            name: p.name.clone(),
            balance: p.balance,
            key,
            upstreams,
            next: 0,
        });
    }
    let mut routes = Vec::new();
    for (i, r) in cfg.routes.iter().enumerate() {
        let Some(pool) = cfg.pools.iter().position(|p| p.name == r.pool) else {
            return Err(bad(format!(
                "routes[{i}].pool {} is not a pool",
                quoted(&r.pool)
            )));
        };
        if !r.path.starts_with('/') {
            return Err(bad(format!(
                "routes[{i}].path {} must start with /",
                quoted(&r.path)
            )));
        }
        routes.push(Route {
            host: r.host.as_ref().map(|h| h.to_ascii_lowercase().into_bytes()),
            path: r.path.as_bytes().to_vec(),
            pool,
        });
    }
    if routes.is_empty() {
        return Err(bad("give at least one [[routes]] entry".into()));
    }
    let timeouts =
        smoltcp::time::Duration::from_millis(1)..=smoltcp::time::Duration::from_secs(86400);
    for (name, d) in [
        ("connect_timeout", cfg.connect_timeout),
        ("response_timeout", cfg.response_timeout),
        ("idle_timeout", cfg.idle_timeout),
        ("eject_for", cfg.eject_for),
    ] {
        d.within(name, timeouts.clone()).map_err(bad)?;
    }
    for (name, v, range) in [
        ("eject_after", cfg.eject_after as usize, 1..=1000),
        ("max_connections", cfg.max_connections, 1..=65536),
        ("backlog", cfg.backlog, 1..=64),
        ("max_idle_per_upstream", cfg.max_idle_per_upstream, 0..=1024),
        ("max_request_line", cfg.max_request_line, 64..=(1 << 20)),
        ("max_head", cfg.max_head, 256..=(1 << 20)),
        ("max_headers", cfg.max_headers, 1..=MAX_HEADERS),
        ("cache_bytes", cfg.cache_bytes, 0..=(16 << 30)),
        ("cache_max_object", cfg.cache_max_object, 1..=(1 << 30)),
    ] {
        if !range.contains(&v) {
            return Err(bad(format!(
                "{name} must be {}..={}",
                range.start(),
                range.end()
            )));
        }
    }
    check_tcp_buffer("http-proxy", cfg.tcp_buffer)?;
    Ok((pools, routes))
}

/// The codec limits of `cfg`.
pub(super) fn limits(cfg: &HttpProxyConfig) -> Limits {
    Limits {
        max_request_line: cfg.max_request_line,
        max_head: cfg.max_head,
        max_headers: cfg.max_headers,
        ..Limits::default()
    }
}

/// The pool serving `req`: the longest path prefix among the routes of
/// its host, else among the routes of any host.
pub(super) fn route(routes: &[Route], req: &RequestHead) -> Option<usize> {
    let host = host_of(req);
    let path = req.path();
    let best = |specific: bool| {
        routes
            .iter()
            .filter(|r| match (&r.host, &host) {
                (Some(rh), Some(h)) => specific && rh == h,
                (None, _) => !specific,
                _ => false,
            })
            .filter(|r| path.starts_with(&r.path))
            .max_by_key(|r| r.path.len())
            .map(|r| r.pool)
    };
    best(true).or_else(|| best(false))
}

/// The request's host, lowercased, without its port.
pub(super) fn host_of(req: &RequestHead) -> Option<Vec<u8>> {
    req.fields().get(b"host").map(|h| {
        let h = h.trim_ascii();
        // Without the port (and an IPv6 literal's brackets kept whole).
        let end = match h.iter().rposition(|&b| b == b':') {
            Some(i) if !h[i..].contains(&b']') => i,
            _ => h.len(),
        };
        h[..end].to_ascii_lowercase()
    })
}

/// The upstream of `pool` for `req`, if any is not ejected (or, when all
/// are, any).
pub(super) fn pick(pool: &mut Pool, req: &RequestHead, now: Instant) -> Option<usize> {
    let n = pool.upstreams.len();
    let up = |u: &Upstream| {
        u.down_until.is_none_or(|t| now >= t) && !u.checker.as_ref().is_some_and(|c| c.down)
    };
    let all_down = !pool.upstreams.iter().any(up);
    let usable = |i: usize| all_down || up(&pool.upstreams[i]);
    if pool.balance == Balance::Hash
        && let Some(key) = pool.key.as_ref().and_then(|k| hash_value(k, req))
    {
        // Rendezvous: the highest score of (key, upstream) wins.
        return (0..n).filter(|&i| usable(i)).max_by_key(|&i| {
            let mut h = std::hash::DefaultHasher::new();
            key.hash(&mut h);
            pool.upstreams[i].ep.hash(&mut h);
            h.finish()
        });
    }
    let order = (0..n).map(|k| (pool.next + k) % n).filter(|&i| usable(i));
    let chosen = match pool.balance {
        Balance::LeastConnections => order.min_by_key(|&i| pool.upstreams[i].active),
        _ => order.into_iter().next(),
    }?;
    pool.next = (chosen + 1) % n;
    Some(chosen)
}

/// The value `key` names in `req`: a field's, or a cookie's.
fn hash_value<'a>(key: &HashKey, req: &'a RequestHead) -> Option<&'a [u8]> {
    match key {
        HashKey::Header(name) => req.fields().get(name),
        HashKey::Cookie(name) => req.fields().get_all(b"cookie").find_map(|v| {
            v.split(|&b| b == b';').find_map(|pair| {
                let pair = pair.trim_ascii();
                let eq = pair.iter().position(|&b| b == b'=')?;
                (pair[..eq] == name[..]).then(|| &pair[eq + 1..])
            })
        }),
    }
}
