//! The JSON API: requests parsed from HTTP method and target, their
//! bodies, and the bearer token that guards the mutating ones.
//!
//! [`route`] maps a method and request target to an [`ApiRequest`] or an
//! [`ApiError`] carrying the HTTP status to answer (400, 404, 405 with the
//! methods allowed, 414). Path segments are percent-decoded; device names
//! are `[A-Za-z0-9_.-]+`. Bodies are read with [`parse_json`] into
//! [`CaptureRequest`] or [`ProbeRequest`], then checked with their
//! `validate`. Every request that changes something
//! ([`requires_auth`]) needs `Authorization: Bearer TOKEN` where the token
//! is [`api_token`] of the deployment's secret ([`bearer_ok`]).
//!
//! ```
//! use shmnet::functions::socket::manager::api::{route, ApiRequest};
//! assert_eq!(
//!     route(b"GET", b"/api/devices/edge%2D1/").unwrap(),
//!     ApiRequest::Device("edge-1".into())
//! );
//! assert_eq!(route(b"POST", b"/api/devices").unwrap_err().status, 405);
//! ```

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Longest request target accepted (414 beyond).
pub const MAX_TARGET: usize = 2048;
/// Most probe exchanges one request may ask for.
pub const MAX_PROBE_COUNT: u32 = 100_000;
/// Longest capture one request may ask for, in seconds.
pub const MAX_CAPTURE_SECONDS: u32 = 3600;

/// A request the API understands.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ApiRequest {
    /// `GET /`: the list of endpoints ([`INDEX`]).
    Index,
    /// `GET /metrics`: Prometheus text.
    Metrics,
    /// `GET /api/devices`: every device, briefly.
    Devices,
    /// `GET /api/devices/{name}`: one device's identity and counters.
    Device(String),
    /// `GET /api/devices/{name}/config`: its configuration.
    DeviceConfig(String),
    /// `PUT /api/devices/{name}/function`: a new function (body: TOML of
    /// the function table).
    SetFunction(String),
    /// `POST /api/devices/{name}/capture`: start a capture
    /// (body: [`CaptureRequest`]).
    CaptureStart(String),
    /// `DELETE /api/devices/{name}/capture?adapter=…`: stop one.
    CaptureStop {
        /// The device.
        device: String,
        /// The adapter whose capture stops.
        adapter: Adapter,
    },
    /// `GET /api/policy`: rules, their states, the last decisions.
    Policy,
    /// `POST /api/policy/reload`: read the policy file again.
    PolicyReload,
    /// `POST /api/probe`: probe a target (body: [`ProbeRequest`]).
    Probe,
}

/// The text `GET /` answers.
pub const INDEX: &str = "shmnet manager\n\
GET    /metrics                          Prometheus metrics\n\
GET    /api/devices                      every device\n\
GET    /api/devices/{name}               one device: identity and counters\n\
GET    /api/devices/{name}/config        its configuration\n\
PUT    /api/devices/{name}/function      set its function (TOML body; auth)\n\
POST   /api/devices/{name}/capture       start a capture (JSON body; auth)\n\
DELETE /api/devices/{name}/capture?adapter=local|global   stop it (auth)\n\
GET    /api/policy                       policy rules and decisions\n\
POST   /api/policy/reload                reload the policy file (auth)\n\
POST   /api/probe                        probe a target (JSON body; auth)\n";

/// Why a request is refused, with the HTTP status to answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status}: {message}")]
pub struct ApiError {
    /// 400 (bad request or body), 404 (no such endpoint), 405 (method not
    /// allowed: answer with `Allow:` [`ApiError::allow`]) or 414 (target
    /// too long).
    pub status: u16,
    /// What was wrong, for the `error` field of the answer.
    pub message: String,
    /// The methods the endpoint allows (405 only): the `Allow` header.
    pub allow: &'static [&'static str],
}

impl ApiError {
    /// A 400 with `message`.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError {
            status: 400,
            message: message.into(),
            allow: &[],
        }
    }

    fn not_found(path: &str) -> ApiError {
        ApiError {
            status: 404,
            message: format!("no endpoint {path} (GET / lists them)"),
            allow: &[],
        }
    }

    fn method(allow: &'static [&'static str]) -> ApiError {
        ApiError {
            status: 405,
            message: format!("method not allowed; use {}", allow.join(", ")),
            allow,
        }
    }
}

/// Maps an HTTP method and request target (origin form, `/path?query`)
/// to a request.
pub fn route(method: &[u8], target: &[u8]) -> Result<ApiRequest, ApiError> {
    if target.len() > MAX_TARGET {
        return Err(ApiError {
            status: 414,
            message: format!("request target longer than {MAX_TARGET} bytes"),
            allow: &[],
        });
    }
    let (path, query) = match target.iter().position(|&b| b == b'?') {
        Some(i) => (&target[..i], parse_query(&target[i + 1..])?),
        None => (target, Vec::new()),
    };
    let shown = String::from_utf8_lossy(path).into_owned();
    if path.first() != Some(&b'/') {
        return Err(ApiError::bad_request(
            "the request target must start with /",
        ));
    }
    let mut segments = Vec::new();
    for s in path[1..].split(|&b| b == b'/') {
        segments.push(percent_decode(s)?);
    }
    // `/a/` is `/a`; `/` is no segment at all.
    if segments.last().is_some_and(String::is_empty) {
        segments.pop();
    }
    if segments.iter().any(String::is_empty) {
        return Err(ApiError::bad_request("empty path segment"));
    }
    let seg: Vec<&str> = segments.iter().map(String::as_str).collect();
    use ApiRequest as R;
    const GET: &[&str] = &["GET"];
    const PUT: &[&str] = &["PUT"];
    const POST: &[&str] = &["POST"];
    const CAPTURE: &[&str] = &["POST", "DELETE"];
    let (allow, req): (&'static [&'static str], _) = match seg[..] {
        [] => (GET, R::Index),
        ["metrics"] => (GET, R::Metrics),
        ["api", "devices"] => (GET, R::Devices),
        ["api", "devices", name] => (GET, R::Device(device_name(name)?)),
        ["api", "devices", name, "config"] => (GET, R::DeviceConfig(device_name(name)?)),
        ["api", "devices", name, "function"] => (PUT, R::SetFunction(device_name(name)?)),
        ["api", "devices", name, "capture"] => {
            let device = device_name(name)?;
            match method {
                b"POST" => return Ok(R::CaptureStart(device)),
                b"DELETE" => {
                    let adapter = match query.iter().find(|(k, _)| k == "adapter") {
                        Some((_, a)) => Adapter::parse(a)?,
                        None => {
                            return Err(ApiError::bad_request(
                                "which capture? add ?adapter=local or ?adapter=global",
                            ));
                        }
                    };
                    return Ok(R::CaptureStop { device, adapter });
                }
                _ => return Err(ApiError::method(CAPTURE)),
            }
        }
        ["api", "policy"] => (GET, R::Policy),
        ["api", "policy", "reload"] => (POST, R::PolicyReload),
        ["api", "probe"] => (POST, R::Probe),
        _ => return Err(ApiError::not_found(&shown)),
    };
    // HEAD is not served: the manager's answers are small.
    if allow.iter().any(|m| m.as_bytes() == method) {
        Ok(req)
    } else {
        Err(ApiError::method(allow))
    }
}

/// Whether `name` may name a device: `[A-Za-z0-9_.-]+`.
pub fn valid_device_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

fn device_name(name: &str) -> Result<String, ApiError> {
    // `.` and `..` would read as paths wherever the name ends up.
    if valid_device_name(name) && name != "." && name != ".." {
        Ok(name.to_string())
    } else {
        Err(ApiError::bad_request(format!(
            "bad device name {name:?}: use letters, digits, _ . -"
        )))
    }
}

/// `%XX` decoded; `+` is kept (it is a space only in forms). The result
/// must be UTF-8.
fn percent_decode(s: &[u8]) -> Result<String, ApiError> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%' {
            let hex = |b: u8| (b as char).to_digit(16);
            match (
                s.get(i + 1).and_then(|&b| hex(b)),
                s.get(i + 2).and_then(|&b| hex(b)),
            ) {
                (Some(h), Some(l)) => out.push((h * 16 + l) as u8),
                _ => return Err(ApiError::bad_request("bad percent-encoding in the target")),
            }
            i += 3;
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| ApiError::bad_request("the target is not UTF-8"))
}

/// `a=1&b=2` as decoded pairs (`+` is a space here); a key without `=`
/// has an empty value.
pub fn parse_query(q: &[u8]) -> Result<Vec<(String, String)>, ApiError> {
    let mut out = Vec::new();
    for pair in q.split(|&b| b == b'&').filter(|p| !p.is_empty()) {
        let spaced: Vec<u8> = pair
            .iter()
            .map(|&b| if b == b'+' { b' ' } else { b })
            .collect();
        let (k, v) = match spaced.iter().position(|&b| b == b'=') {
            Some(i) => (&spaced[..i], &spaced[i + 1..]),
            None => (&spaced[..], &[][..]),
        };
        out.push((percent_decode(k)?, percent_decode(v)?));
    }
    Ok(out)
}

/// One of a device's two networks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Adapter {
    /// The local network's adapter.
    Local,
    /// The global network's adapter.
    Global,
}

impl Adapter {
    /// `local` or `global`.
    pub fn parse(s: &str) -> Result<Adapter, ApiError> {
        match s {
            "local" => Ok(Adapter::Local),
            "global" => Ok(Adapter::Global),
            _ => Err(ApiError::bad_request(format!(
                "adapter {s:?}: use local or global"
            ))),
        }
    }

    /// `local` or `global`.
    pub fn as_str(self) -> &'static str {
        match self {
            Adapter::Local => "local",
            Adapter::Global => "global",
        }
    }
}

/// The body of `POST /api/devices/{name}/capture`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct CaptureRequest {
    /// The adapter to capture (default local).
    #[serde(default = "local")]
    pub adapter: Adapter,
    /// Stop after so many seconds (default 10, at most
    /// [`MAX_CAPTURE_SECONDS`]); a DELETE stops it sooner.
    #[serde(default = "ten")]
    pub seconds: u32,
    /// Where the device writes the pcap: an absolute path ending in `.pcap`.
    pub file: String,
}

fn local() -> Adapter {
    Adapter::Local
}
fn ten() -> u32 {
    10
}

impl CaptureRequest {
    /// Checks the limits: 1..=[`MAX_CAPTURE_SECONDS`] seconds, an absolute
    /// `.pcap` path without `..`.
    pub fn validate(&self) -> Result<(), ApiError> {
        if !(1..=MAX_CAPTURE_SECONDS).contains(&self.seconds) {
            return Err(ApiError::bad_request(format!(
                "seconds must be 1..={MAX_CAPTURE_SECONDS}"
            )));
        }
        let p = std::path::Path::new(&self.file);
        if !p.is_absolute() || !self.file.ends_with(".pcap") || self.file.len() <= ".pcap".len() + 1
        {
            return Err(ApiError::bad_request(
                "file must be an absolute path ending in .pcap",
            ));
        }
        if p.components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
            || self.file.contains('\0')
        {
            return Err(ApiError::bad_request("file must not contain .. or NUL"));
        }
        Ok(())
    }
}

/// What a probe exchanges: the same kinds as a continuous probe's.
pub use super::probes::ProbeKind;

/// The body of `POST /api/probe`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeRequest {
    /// The device that probes (default: the manager itself).
    pub device: Option<String>,
    /// `ADDR:PORT` (ICMP: the port is ignored) or `ADDR`.
    pub target: String,
    /// What to exchange (default tcp).
    #[serde(default)]
    pub kind: ProbeKind,
    /// Exchanges (default 10, 1..=[`MAX_PROBE_COUNT`]).
    #[serde(default = "probe_count")]
    pub count: u32,
    /// Between exchanges, in ms (default 10, at most 60000).
    #[serde(default = "ten")]
    pub interval_ms: u32,
    /// How long one exchange may take, in ms (default 1000, 1..=60000).
    #[serde(default = "thousand")]
    pub timeout_ms: u32,
    /// The HTTP path (default `/`).
    #[serde(default = "root")]
    pub path: String,
}

fn probe_count() -> u32 {
    10
}
fn thousand() -> u32 {
    1000
}
fn root() -> String {
    "/".into()
}

impl ProbeRequest {
    /// Checks the limits and that the target is an address (`ADDR:PORT`,
    /// or `ADDR` for ICMP).
    pub fn validate(&self) -> Result<(), ApiError> {
        if let Some(d) = &self.device {
            device_name(d)?;
        }
        let addr_ok = self.target.parse::<std::net::SocketAddr>().is_ok()
            || (self.kind == ProbeKind::Icmp && self.target.parse::<std::net::IpAddr>().is_ok());
        if !addr_ok {
            return Err(ApiError::bad_request(format!(
                "target {:?}: use ADDR:PORT",
                self.target
            )));
        }
        if !(1..=MAX_PROBE_COUNT).contains(&self.count) {
            return Err(ApiError::bad_request(format!(
                "count must be 1..={MAX_PROBE_COUNT}"
            )));
        }
        if self.interval_ms > 60_000 || !(1..=60_000).contains(&self.timeout_ms) {
            return Err(ApiError::bad_request(
                "interval_ms must be at most 60000, timeout_ms 1..=60000",
            ));
        }
        if !self.path.starts_with('/')
            || self.path.len() > 1024
            || self.path.contains(char::is_control)
        {
            return Err(ApiError::bad_request(
                "path must start with / (at most 1024 bytes, no control characters)",
            ));
        }
        Ok(())
    }
}

/// A JSON body read into `T`; a 400 with serde's message if it does not
/// fit.
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("bad JSON body: {e}")))
}

/// Whether a request changes something, and so needs the token.
pub fn requires_auth(req: &ApiRequest) -> bool {
    use ApiRequest as R;
    match req {
        R::Index | R::Metrics | R::Devices | R::Device(_) | R::DeviceConfig(_) | R::Policy => false,
        R::SetFunction(_) | R::CaptureStart(_) | R::CaptureStop { .. } | R::PolicyReload => true,
        // Probes send traffic from devices on the operator's behalf.
        R::Probe => true,
    }
}

/// The API token of a deployment: lowercase hex of
/// HMAC-SHA256(`secret`, `"shmnet-api-token"`), so the secret itself never
/// travels.
pub fn api_token(secret: &[u8]) -> String {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        // HMAC takes keys of any length; this is never reached.
        return String::new();
    };
    mac.update(b"shmnet-api-token");
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether an `Authorization` header value is `Bearer TOKEN` with the
/// right token (compared in constant time; an empty `token` never
/// matches).
pub fn bearer_ok(authorization: Option<&[u8]>, token: &str) -> bool {
    let Some(value) = authorization else {
        return false;
    };
    let value = value.trim_ascii();
    if value.len() < 7 || !value[..7].eq_ignore_ascii_case(b"bearer ") {
        return false;
    }
    let given = value[7..].trim_ascii_start();
    let want = token.as_bytes();
    if want.is_empty() || given.len() != want.len() {
        return false;
    }
    // No early exit: the time taken does not tell how much matched.
    let diff = given.iter().zip(want).fold(0u8, |d, (a, b)| d | (a ^ b));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use ApiRequest as R;

    fn ok(m: &str, t: &str) -> ApiRequest {
        route(m.as_bytes(), t.as_bytes()).unwrap_or_else(|e| panic!("{m} {t}: {e}"))
    }
    fn status(m: &str, t: &str) -> u16 {
        route(m.as_bytes(), t.as_bytes()).unwrap_err().status
    }

    #[test]
    fn every_route() {
        let e = || "edge".to_string();
        assert_eq!(ok("GET", "/"), R::Index);
        assert_eq!(ok("GET", "/metrics"), R::Metrics);
        assert_eq!(ok("GET", "/api/devices"), R::Devices);
        assert_eq!(ok("GET", "/api/devices/"), R::Devices);
        assert_eq!(ok("GET", "/api/devices/edge"), R::Device(e()));
        assert_eq!(ok("GET", "/api/devices/edge/config"), R::DeviceConfig(e()));
        assert_eq!(ok("PUT", "/api/devices/edge/function"), R::SetFunction(e()));
        assert_eq!(
            ok("POST", "/api/devices/edge/capture"),
            R::CaptureStart(e())
        );
        assert_eq!(
            ok("DELETE", "/api/devices/edge/capture?adapter=global"),
            R::CaptureStop {
                device: e(),
                adapter: Adapter::Global
            }
        );
        assert_eq!(ok("GET", "/api/policy"), R::Policy);
        assert_eq!(ok("POST", "/api/policy/reload/"), R::PolicyReload);
        assert_eq!(ok("POST", "/api/probe"), R::Probe);
        assert_eq!(ok("GET", "/metrics?x=1&y"), R::Metrics);
    }

    #[test]
    fn unknown_paths_are_404_and_wrong_methods_405_with_allow() {
        assert_eq!(status("GET", "/api"), 404);
        assert_eq!(status("GET", "/api/devices/edge/nope"), 404);
        assert_eq!(status("GET", "/metricsx"), 404);
        let e = route(b"DELETE", b"/api/devices/edge").unwrap_err();
        assert_eq!((e.status, e.allow), (405, &["GET"][..]));
        let e = route(b"GET", b"/api/devices/edge/capture").unwrap_err();
        assert_eq!((e.status, e.allow), (405, &["POST", "DELETE"][..]));
        assert_eq!(route(b"GET", b"/api/probe").unwrap_err().allow, ["POST"]);
        assert_eq!(
            route(b"POST", b"/api/devices/e/function")
                .unwrap_err()
                .allow,
            ["PUT"]
        );
        assert_eq!(status("get", "/metrics"), 405);
    }

    #[test]
    fn bad_device_names_targets_and_queries_are_400() {
        for t in [
            "/api/devices/a%20b",
            "/api/devices/a$b",
            "/api/devices/..",
            "/api/devices/%2e",
            "/api/devices/a%2Fb",
            "/api/devices/%zz",
            "/api/devices/%4",
            "/api/devices/%ff",
            "/api//devices",
            "api/devices",
            "",
        ] {
            assert_eq!(status("GET", t), 400, "{t}");
        }
        assert_eq!(status("DELETE", "/api/devices/e/capture"), 400);
        assert_eq!(status("DELETE", "/api/devices/e/capture?adapter=both"), 400);
        let long = format!("/api/devices/{}", "a".repeat(MAX_TARGET));
        assert_eq!(status("GET", &long), 414);
    }

    #[test]
    fn percent_decoding_of_segments_and_queries() {
        assert_eq!(
            ok("GET", "/api/devices/edge%2d1.a_B"),
            R::Device("edge-1.a_B".into())
        );
        assert_eq!(ok("GET", "/api/%64evices"), R::Devices);
        assert_eq!(
            ok("DELETE", "/api/devices/e/capture?x=%26&adapter=loc%61l"),
            R::CaptureStop {
                device: "e".into(),
                adapter: Adapter::Local
            }
        );
        assert_eq!(
            parse_query(b"a=1+2&b&c=%3D").unwrap(),
            [
                ("a".into(), "1 2".into()),
                ("b".into(), String::new()),
                ("c".into(), "=".into())
            ]
        );
    }

    #[test]
    fn bodies_take_defaults_and_refuse_what_is_out_of_limits() {
        let c: CaptureRequest = parse_json(br#"{"file":"/tmp/x.pcap"}"#).unwrap();
        assert_eq!((c.adapter, c.seconds), (Adapter::Local, 10));
        c.validate().unwrap();
        for bad in [
            r#"{"file":"x.pcap"}"#,
            r#"{"file":"/tmp/x.txt"}"#,
            r#"{"file":"/tmp/../etc/x.pcap"}"#,
            r#"{"file":"/x.pcap","seconds":3601}"#,
            r#"{"file":"/x.pcap","seconds":0}"#,
        ] {
            let c: CaptureRequest = parse_json(bad.as_bytes()).unwrap();
            assert_eq!(c.validate().unwrap_err().status, 400, "{bad}");
        }
        for bad in [
            r#"{"file":"/x.pcap","adapter":"both"}"#,
            r#"{"file":1}"#,
            "{",
            r#"{"file":"/x.pcap","x":1}"#,
        ] {
            let e = parse_json::<CaptureRequest>(bad.as_bytes()).unwrap_err();
            assert_eq!(e.status, 400, "{bad}");
            assert!(e.message.starts_with("bad JSON body: "), "{}", e.message);
        }
        let p: ProbeRequest = parse_json(br#"{"target":"10.0.0.3:80"}"#).unwrap();
        assert_eq!(
            (p.kind, p.count, p.timeout_ms, p.path.as_str()),
            (ProbeKind::Tcp, 10, 1000, "/")
        );
        p.validate().unwrap();
        let p: ProbeRequest = parse_json(
            br#"{"device":"edge","target":"10.0.0.3","kind":"icmp","count":100000,"interval_ms":10}"#,
        )
        .unwrap();
        p.validate().unwrap();
        for bad in [
            r#"{"target":"10.0.0.3"}"#,
            r#"{"target":"host:80"}"#,
            r#"{"target":"10.0.0.3:80","count":100001}"#,
            r#"{"target":"10.0.0.3:80","count":0}"#,
            r#"{"target":"10.0.0.3:80","timeout_ms":0}"#,
            r#"{"target":"10.0.0.3:80","device":"a b"}"#,
            r#"{"target":"10.0.0.3:80","kind":"http","path":"x"}"#,
        ] {
            let p: ProbeRequest = parse_json(bad.as_bytes()).unwrap();
            assert_eq!(p.validate().unwrap_err().status, 400, "{bad}");
        }
    }

    #[test]
    fn mutating_requests_need_the_token() {
        for (m, t, auth) in [
            ("GET", "/", false),
            ("GET", "/metrics", false),
            ("GET", "/api/devices/e", false),
            ("GET", "/api/devices/e/config", false),
            ("GET", "/api/policy", false),
            ("PUT", "/api/devices/e/function", true),
            ("POST", "/api/devices/e/capture", true),
            ("DELETE", "/api/devices/e/capture?adapter=local", true),
            ("POST", "/api/policy/reload", true),
            ("POST", "/api/probe", true),
        ] {
            assert_eq!(requires_auth(&ok(m, t)), auth, "{m} {t}");
        }
    }

    #[test]
    fn token_and_bearer_check() {
        // RFC 4231 style check of the construction: HMAC-SHA256 keyed by
        // the secret over the fixed label.
        let t = api_token(b"secret");
        assert_eq!(t.len(), 64);
        assert!(
            t.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        assert_ne!(t, api_token(b"secret2"));
        assert_eq!(
            api_token(b"key"),
            // python3 -c 'import hmac,hashlib;print(hmac.new(b"key",b"shmnet-api-token",hashlib.sha256).hexdigest())'
            HMAC_KEY
        );
        let h = format!("Bearer {t}");
        assert!(bearer_ok(Some(h.as_bytes()), &t));
        assert!(bearer_ok(Some(format!("bearer  {t} ").as_bytes()), &t));
        assert!(!bearer_ok(None, &t));
        assert!(!bearer_ok(Some(t.as_bytes()), &t));
        assert!(!bearer_ok(Some(b"Bearer "), ""));
        assert!(!bearer_ok(
            Some(format!("Bearer {}", &t[1..]).as_bytes()),
            &t
        ));
        assert!(!bearer_ok(Some(format!("Basic {t}").as_bytes()), &t));
        let mut wrong = t.clone().into_bytes();
        wrong[63] ^= 1;
        assert!(!bearer_ok(
            Some(&[b"Bearer ".as_slice(), &wrong].concat()),
            &t
        ));
    }

    const HMAC_KEY: &str = "3c86921edc5d9db8486a3af4cea502354d58f01dd84d4aaafcba41a7196202c6";
}
