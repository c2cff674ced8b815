//! What a web page may make the server do. Every page the user opens can send requests to
//! 127.0.0.1, so on top of the API key:
//! - on a loopback bind, the `Host` must name this machine: DNS rebinding points a foreign
//!   name at 127.0.0.1, and then the page's requests carry that foreign name;
//! - a request with a browser `Origin` is refused unless the user allowed that origin
//!   (`--cors-origin`), and only allowed origins get CORS headers;
//! - request bodies must be JSON: a page may POST `text/plain` or a form to any address
//!   without asking the server first, but not `application/json`.
//!
//! The decisions here are pure; `app` applies them to requests.

use std::net::IpAddr;

/// Which hosts and origins the server answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrowserPolicy {
    /// `Host` names accepted besides loopback ones (`*`: any; `.example.com`: that domain
    /// and its subdomains); `None` accepts every host (the server listens beyond loopback).
    pub allowed_hosts: Option<Vec<String>>,
    /// Origins a browser may call the API from; `*` allows any.
    pub cors_origins: Vec<String>,
}

impl Default for BrowserPolicy {
    /// A loopback server that no web page may call.
    fn default() -> Self {
        BrowserPolicy {
            allowed_hosts: Some(Vec::new()),
            cors_origins: Vec::new(),
        }
    }
}

impl BrowserPolicy {
    /// The policy of a server bound to a loopback address or not. Host names only guard a
    /// loopback bind: beyond it clients reach the server by names of their own, and the
    /// API key guards it.
    pub fn new(loopback_bind: bool, allowed_hosts: Vec<String>, cors_origins: Vec<String>) -> Self {
        BrowserPolicy {
            allowed_hosts: loopback_bind.then_some(allowed_hosts),
            cors_origins,
        }
    }

    /// Whether a request with this `Host` (name or address, with or without a port) is
    /// answered. A request without one is not a browser's: browsers always send it.
    pub fn host_allowed(&self, host: Option<&str>) -> bool {
        let (Some(allowed), Some(host)) = (&self.allowed_hosts, host) else {
            return true;
        };
        let name = host_name(host).to_ascii_lowercase();
        is_loopback_name(&name) || allowed.iter().any(|a| host_matches(a, &name))
    }

    /// Whether a browser page of `origin` may call the API.
    pub fn origin_allowed(&self, origin: &str) -> bool {
        let origin = origin.trim_end_matches('/');
        self.cors_origins
            .iter()
            .any(|a| a == "*" || a.trim_end_matches('/').eq_ignore_ascii_case(origin))
    }
}

/// The name or address of a `Host` value: without its port, an IPv6 address without
/// brackets.
fn host_name(host: &str) -> &str {
    let host = host.trim();
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

/// Names that always mean this machine: `localhost` (and `*.localhost`, which browsers
/// resolve to loopback themselves) and loopback addresses.
fn is_loopback_name(name: &str) -> bool {
    let name = name.trim_end_matches('.');
    name == "localhost"
        || name.ends_with(".localhost")
        || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn host_matches(allowed: &str, name: &str) -> bool {
    let allowed = allowed.trim().to_ascii_lowercase();
    let name = name.trim_end_matches('.');
    if allowed == "*" {
        return true;
    }
    match allowed.strip_prefix('.') {
        Some(domain) => name == domain || name.ends_with(&allowed),
        None => host_name(&allowed) == name,
    }
}

/// Whether a `Content-Type` value declares JSON (`application/json`, any parameters).
pub fn is_json(content_type: Option<&str>) -> bool {
    content_type.is_some_and(|v| {
        v.split(';')
            .next()
            .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loopback(hosts: &[&str], origins: &[&str]) -> BrowserPolicy {
        BrowserPolicy::new(
            true,
            hosts.iter().map(|s| s.to_string()).collect(),
            origins.iter().map(|s| s.to_string()).collect(),
        )
    }

    #[test]
    fn loopback_names_and_addresses_are_answered() {
        let p = BrowserPolicy::default();
        for host in [
            "localhost",
            "localhost:7777",
            "LOCALHOST:7777",
            "app.localhost:7777",
            "localhost.",
            "127.0.0.1:7777",
            "127.0.0.1",
            "127.1.2.3:80",
            "[::1]:7777",
            "[::1]",
        ] {
            assert!(p.host_allowed(Some(host)), "{host}");
        }
        assert!(p.host_allowed(None));
    }

    #[test]
    fn foreign_names_are_refused_on_a_loopback_bind() {
        let p = BrowserPolicy::default();
        for host in [
            "evil.example:7777",
            "evil.example",
            "localhost.evil.example",
            "127.0.0.1.evil.example",
            "192.168.1.5:7777",
            "0.0.0.0:7777",
            "[::2]:7777",
            "",
            "localhost:7777:7777",
        ] {
            assert!(!p.host_allowed(Some(host)), "{host}");
        }
    }

    #[test]
    fn allowed_hosts_add_names() {
        let p = loopback(&["box.lan", ".tail.net"], &[]);
        assert!(p.host_allowed(Some("box.lan:7777")));
        assert!(p.host_allowed(Some("BOX.LAN")));
        assert!(p.host_allowed(Some("tail.net")));
        assert!(p.host_allowed(Some("gpu.tail.net:7777")));
        assert!(!p.host_allowed(Some("evil.lan")));
        assert!(!p.host_allowed(Some("eviltail.net")));
        assert!(loopback(&["*"], &[]).host_allowed(Some("anything:1")));
    }

    #[test]
    fn a_bind_beyond_loopback_answers_every_host() {
        let p = BrowserPolicy::new(false, vec![], vec![]);
        assert!(p.host_allowed(Some("gpu1.example:7777")));
    }

    #[test]
    fn origins_are_allowed_only_when_listed() {
        let none = BrowserPolicy::default();
        for origin in [
            "http://localhost:3000",
            "http://127.0.0.1:7777",
            "null",
            "https://evil.example",
        ] {
            assert!(!none.origin_allowed(origin), "{origin}");
        }
        let one = loopback(&[], &["http://localhost:3000/"]);
        assert!(one.origin_allowed("http://localhost:3000"));
        assert!(one.origin_allowed("HTTP://LOCALHOST:3000"));
        assert!(!one.origin_allowed("http://localhost:3001"));
        assert!(!one.origin_allowed("https://localhost:3000"));
        assert!(loopback(&[], &["*"]).origin_allowed("https://any.example"));
    }

    #[test]
    fn only_json_bodies_are_accepted() {
        for ok in [
            "application/json",
            "application/json; charset=utf-8",
            "Application/JSON;charset=UTF-8",
        ] {
            assert!(is_json(Some(ok)), "{ok}");
        }
        for refused in [
            None,
            Some(""),
            Some("text/plain"),
            Some("text/plain;charset=UTF-8"),
            Some("application/x-www-form-urlencoded"),
            Some("multipart/form-data; boundary=x"),
            Some("application/jsonp"),
        ] {
            assert!(!is_json(refused), "{refused:?}");
        }
    }
}
