//! Unit tests for the semantic checks (beside `validate.rs` to keep both files short).

use super::*;
use crate::config::{ByteSize, RedisConfig, TlsConfig};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub(super) fn keys(result: Result<(), ConfigErrors>) -> Vec<String> {
    result
        .err()
        .map(|e| e.issues.into_iter().map(|i| i.key).collect())
        .unwrap_or_default()
}

#[test]
fn defaults_are_valid() {
    Config::default().validate().unwrap();
}

#[test]
fn every_problem_is_reported_at_once() {
    let mut c = Config::default();
    c.server.max_client_connections = 0;
    c.server.max_message_bytes = 10;
    c.server.startup_timeout = Duration::ZERO;
    c.server.shutdown_timeout = Duration::ZERO;
    c.upstream.url = "mysql://u:secret@h".into();
    c.upstream.connect_timeout = Duration::ZERO;
    c.admin.listen = c.server.listen;
    c.cache.secret = Some(SECRET.into());
    c.cache.redis = Some(RedisConfig {
        url: "http://h".into(),
        ..RedisConfig::default()
    });
    c.log.level = "verbose".into();
    c.log.format = "xml".into();
    let err = c.validate().unwrap_err();
    let got: Vec<&str> = err.issues.iter().map(|i| i.key.as_str()).collect();
    assert_eq!(
        got,
        [
            "server.max_client_connections",
            "server.max_message_bytes",
            "server.startup_timeout",
            "server.shutdown_timeout",
            "upstream.url",
            "upstream.connect_timeout",
            "admin.listen",
            "cache.redis.url",
            "log.format",
            "log.level",
        ]
    );
    let text = err.to_string();
    assert_eq!(text.lines().count(), 10, "{text}");
    assert!(text.contains("server.max_client_connections = 0: must be at least 1"));
    assert!(text.contains("server.startup_timeout = \"0s\": must be greater than zero"));
    assert!(text.contains("log.format = \"xml\": must be one of text, json"));
    assert!(!text.contains("secret"), "password leaked: {text}");
}

#[test]
fn message_size_bounds_are_inclusive() {
    let mut c = Config::default();
    for (bytes, ok) in [
        (MIN_MESSAGE_BYTES - 1, false),
        (MIN_MESSAGE_BYTES, true),
        (MAX_MESSAGE_BYTES, true),
        (MAX_MESSAGE_BYTES + 1, false),
    ] {
        c.server.max_message_bytes = bytes;
        assert_eq!(c.validate().is_ok(), ok, "{bytes}");
    }
}

#[test]
fn tls_files_must_exist_and_be_files() {
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("cert.pem");
    std::fs::write(&cert, "not parsed here").unwrap();
    let mut c = Config::default();
    c.server.tls = Some(TlsConfig {
        cert: cert.clone(),
        key: dir.path().join("missing.pem"),
        require: false,
    });
    let err = c.validate().unwrap_err();
    assert_eq!(err.issues.len(), 1, "{err}");
    assert_eq!(err.issues[0].key, "server.tls.key");
    assert!(err.issues[0].why.contains("not found"));
    c.server.tls = Some(TlsConfig {
        cert,
        key: dir.path().to_path_buf(),
        require: false,
    });
    assert_eq!(keys(c.validate()), ["server.tls.key"]);
}

#[test]
fn verify_ca_needs_its_own_root() {
    let mut c = Config::default();
    c.upstream.url = "postgres://h/?sslmode=verify-ca".into();
    let i = issue_for(&c, "upstream.url");
    assert!(i.why.contains("needs sslrootcert"), "{i}");
    c.upstream.url = "postgres://h/?sslmode=verify-full".into();
    c.validate().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, "x").unwrap();
    c.upstream.url = format!(
        "postgres://h/?sslmode=verify-ca&sslrootcert={}",
        ca.display()
    );
    c.validate().unwrap();
}

#[test]
fn sslrootcert_must_exist() {
    let mut c = Config::default();
    c.upstream.url = "postgres://h/?sslmode=verify-full&sslrootcert=/no/such/ca.pem".into();
    let err = c.validate().unwrap_err();
    assert_eq!(err.issues.len(), 1);
    assert_eq!(err.issues[0].key, "upstream.url");
    assert!(err.issues[0].why.starts_with("sslrootcert file not found"));
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, "x").unwrap();
    c.upstream.url = format!("postgres://h/?sslrootcert={}", ca.display());
    c.validate().unwrap();
}

#[test]
fn listener_clashes() {
    let v4 = |ip: Ipv4Addr, port| SocketAddr::new(IpAddr::V4(ip), port);
    let v6 = |ip: Ipv6Addr, port| SocketAddr::new(IpAddr::V6(ip), port);
    let lo = Ipv4Addr::LOCALHOST;
    assert!(listeners_clash(v4(lo, 1), v4(lo, 1)));
    assert!(!listeners_clash(v4(lo, 1), v4(lo, 2)));
    assert!(
        !listeners_clash(v4(lo, 0), v4(lo, 0)),
        "port 0 picks a free port"
    );
    assert!(listeners_clash(v4(Ipv4Addr::UNSPECIFIED, 1), v4(lo, 1)));
    assert!(listeners_clash(v4(lo, 1), v6(Ipv6Addr::UNSPECIFIED, 1)));
    assert!(!listeners_clash(
        v4(Ipv4Addr::UNSPECIFIED, 1),
        v6(Ipv6Addr::LOCALHOST, 1)
    ));
    assert!(!listeners_clash(
        v4(lo, 1),
        v4(Ipv4Addr::new(127, 0, 0, 2), 1)
    ));
}

#[test]
fn redis_schemes() {
    let mut c = Config::default();
    c.cache.secret = Some(SECRET.into());
    for (url, ok) in [
        ("redis://127.0.0.1:6379", true),
        ("rediss://cache.example.com", false),
        ("unix:///run/redis.sock", true),
        ("redis://", false),
        ("http://h", false),
        ("127.0.0.1:6379", false),
    ] {
        c.cache.redis = Some(RedisConfig {
            url: url.into(),
            ..RedisConfig::default()
        });
        assert_eq!(c.validate().is_ok(), ok, "{url}");
    }
    // TLS is refused with why and what to do instead, not as an unknown scheme.
    c.cache.redis = Some(RedisConfig {
        url: "rediss://cache.example.com".into(),
        ..RedisConfig::default()
    });
    let why = issue_for(&c, "cache.redis.url").to_string();
    assert!(
        why.contains("not supported") && why.contains("unix://"),
        "{why}"
    );
}

#[test]
fn redis_settings_are_bounded() {
    let mut c = Config::default();
    c.cache.secret = Some(SECRET.into());
    c.cache.redis = Some(RedisConfig {
        url: "redis://127.0.0.1:7000".into(),
        cluster_nodes: vec!["redis://127.0.0.1:7001".into(), "http://x".into()],
        namespace: "has space".into(),
        timeout: Duration::ZERO,
        write_queue: 0,
        ..RedisConfig::default()
    });
    assert_eq!(
        keys(c.validate()),
        [
            "cache.redis.cluster_nodes",
            "cache.redis.cluster_nodes",
            "cache.redis.namespace",
            "cache.redis.timeout",
            "cache.redis.write_queue",
        ]
    );
    c.cache.redis = Some(RedisConfig {
        url: "redis://127.0.0.1:7000".into(),
        cluster: true,
        cluster_nodes: vec!["redis://127.0.0.1:7001".into()],
        namespace: "prod-eu_1".into(),
        ..RedisConfig::default()
    });
    assert!(c.validate().is_ok());
}

#[test]
fn write_through_max_entries_is_bounded() {
    let mut c = Config::default();
    assert_eq!(c.cache.write_through_max_entries, 32);
    let (lo, hi) = WRITE_THROUGH_MAX_ENTRIES_RANGE;
    assert_eq!((lo, hi), (1, 1024));
    for (n, ok) in [(0, false), (lo, true), (hi, true), (hi + 1, false)] {
        c.cache.write_through_max_entries = n;
        assert_eq!(c.validate().is_ok(), ok, "{n}");
    }
    c.cache.write_through_max_entries = 0;
    let i = issue_for(&c, "cache.write_through_max_entries");
    assert_eq!(i.value, "0");
    assert!(i.why.contains("between 1 and 1024"), "{i}");
}

const SECRET: &str = "0123456789abcdef0123456789abcdef";

#[test]
fn a_shared_tier_needs_a_secret_and_a_ttl_bound_without_cdc() {
    let mut c = Config::default();
    c.cache.redis = Some(RedisConfig {
        url: "redis://127.0.0.1:7000".into(),
        ..RedisConfig::default()
    });
    assert_eq!(keys(c.validate()), ["cache.secret"]);
    c.cache.secret = Some(SECRET.into());
    assert!(c.validate().is_ok());

    // TTL 0 ("until invalidated") is fine with the change stream on or automatic...
    c.cache.ttl = Duration::ZERO;
    c.rules = vec![Rule {
        table: Some("public.t".into()),
        ttl: Some(Duration::ZERO),
        ..Rule::default()
    }];
    assert!(c.validate().is_ok());
    // ...but not when only bumps through Redis keep other instances correct.
    c.invalidation.cdc = crate::config::CdcMode::Off;
    assert_eq!(keys(c.validate()), ["cache.ttl", "rules[1].ttl"]);
    c.cache.redis = None;
    assert!(c.validate().is_ok(), "one instance: bumps are local");
}

#[test]
fn log_filters() {
    for ok in [
        "info",
        "WARN",
        "off",
        "3",
        "info,pgmemo=debug",
        "pgmemo::session=trace",
    ] {
        assert_eq!(check_filter(ok), Ok(()), "{ok}");
    }
    for bad in ["", "  ", "verbose", "pgmemo=loud", "info,chatty"] {
        assert!(check_filter(bad).is_err(), "{bad}");
    }
}

pub(super) fn issue_for(c: &Config, key: &str) -> ConfigIssue {
    let err = c.validate().unwrap_err();
    err.issues
        .iter()
        .find(|i| i.key == key)
        .cloned()
        .unwrap_or_else(|| panic!("no issue for {key}: {err}"))
}

#[test]
fn cache_sizes_are_bounded() {
    let mut c = Config::default();
    for (memory, entry, bad) in [
        (MIN_CACHE_MEMORY, MIN_ENTRY_SIZE, &[][..]),
        (MIN_CACHE_MEMORY, MIN_CACHE_MEMORY, &[]),
        (MIN_CACHE_MEMORY - 1, MIN_ENTRY_SIZE, &["cache.max_memory"]),
        (
            MIN_CACHE_MEMORY,
            MIN_ENTRY_SIZE - 1,
            &["cache.max_entry_size"],
        ),
        (
            MIN_CACHE_MEMORY,
            MIN_CACHE_MEMORY + 1,
            &["cache.max_entry_size"],
        ),
        (0, 0, &["cache.max_memory", "cache.max_entry_size"]),
    ] {
        c.cache.max_memory = ByteSize(memory);
        c.cache.max_entry_size = ByteSize(entry);
        assert_eq!(keys(c.validate()), bad, "{memory} / {entry}");
    }
    let i = issue_for(&c, "cache.max_entry_size");
    assert_eq!(i.value, "0");
    c.cache.max_memory = ByteSize(MIN_CACHE_MEMORY);
    c.cache.max_entry_size = ByteSize(4 << 20);
    let i = issue_for(&c, "cache.max_entry_size");
    assert!(i.why.contains("cache.max_memory = 1048576 (1MiB)"), "{i}");
}

#[test]
fn secret_is_32_hex_digits_and_never_echoed() {
    let mut c = Config::default();
    for (secret, ok) in [
        ("00112233445566778899aabbccddeeff", true),
        ("00112233445566778899AABBCCDDEEFF", true),
        ("00112233445566778899aabbccddeef", false),
        ("00112233445566778899aabbccddeeff0", false),
        ("00112233445566778899aabbccddeefg", false),
        ("", false),
    ] {
        c.cache.secret = Some(secret.into());
        assert_eq!(c.validate().is_ok(), ok, "{secret:?}");
    }
    c.cache.secret = Some("hunter2hunter2".into());
    let i = issue_for(&c, "cache.secret");
    assert!(!i.to_string().contains("hunter2"), "{i}");
    assert!(i.why.contains("32 hex digits"), "{i}");
}

#[test]
fn fill_wait_and_poll_interval_ranges_are_inclusive() {
    let ms = Duration::from_millis;
    let mut c = Config::default();
    for (wait, ok) in [
        (ms(0), false),
        (ms(1), true),
        (ms(600_000), true),
        (ms(600_001), false),
    ] {
        c.cache.fill_wait_timeout = wait;
        assert_eq!(c.validate().is_ok(), ok, "fill_wait_timeout {wait:?}");
    }
    c.cache.fill_wait_timeout = ms(0);
    let i = issue_for(&c, "cache.fill_wait_timeout");
    assert_eq!(
        i.to_string(),
        "cache.fill_wait_timeout = \"0s\": must be between 1ms and 10m"
    );
    c = Config::default();
    for (ratio, ok) in [
        (0.0, true),
        (0.02, true),
        (1.0, true),
        (-0.1, false),
        (1.5, false),
        (f64::NAN, false),
    ] {
        c.cache.min_hit_ratio = ratio;
        assert_eq!(c.validate().is_ok(), ok, "min_hit_ratio {ratio}");
    }
    c = Config::default();
    for (sample, ok) in [
        (0.0, true),
        (0.01, true),
        (1.0, true),
        (-0.01, false),
        (1.01, false),
        (f64::NAN, false),
        (f64::INFINITY, false),
    ] {
        c.cache.verify_sample = sample;
        assert_eq!(c.validate().is_ok(), ok, "verify_sample {sample}");
    }
    let i = issue_for(&c, "cache.verify_sample");
    assert!(i.to_string().contains("from 0"), "{i}");
    c = Config::default();
    for (poll, ok) in [
        (ms(99), false),
        (ms(100), true),
        (ms(3_600_000), true),
        (ms(3_600_001), false),
    ] {
        c.catalog.poll_interval = poll;
        assert_eq!(keys(c.validate()).is_empty(), ok, "poll_interval {poll:?}");
    }
    assert_eq!(keys(c.validate()), ["catalog.poll_interval"]);
}

#[test]
fn ttl_zero_is_accepted_as_until_invalidated() {
    let mut c = Config::default();
    c.cache.ttl = Duration::ZERO;
    c.validate().unwrap();
}
