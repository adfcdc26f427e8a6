//! The cache hit ratio from pgmemo's admin `/metrics` (Prometheus text format), for the
//! bench report: `pgmemo_cache_hits_total / (hits + misses)`.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::CheckerError;

const HITS: &str = "pgmemo_cache_hits_total";
const MISSES: &str = "pgmemo_cache_misses_total";
/// Bound on the whole HTTP exchange.
const METRICS_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on the response size (a metrics page is a few KiB to a few hundred).
const MAX_RESPONSE: u64 = 16 << 20;

/// Fetches `http://ADMIN/metrics` and returns the hit ratio in 0..=1, or `None` when pgmemo
/// exports no cache counters (no cache yet, or disabled) or has done no lookup yet.
pub async fn hit_ratio_from_metrics(admin_addr: SocketAddr) -> Result<Option<f64>, CheckerError> {
    let body = tokio::time::timeout(METRICS_TIMEOUT, fetch_metrics(admin_addr))
        .await
        .map_err(|_| {
            CheckerError::Timeout(format!("GET http://{admin_addr}/metrics"), METRICS_TIMEOUT)
        })??;
    Ok(parse_hit_ratio(&body))
}

async fn fetch_metrics(admin_addr: SocketAddr) -> Result<String, CheckerError> {
    let request = format!("GET /metrics HTTP/1.0\r\nHost: {admin_addr}\r\n\r\n");
    exchange(admin_addr, "/metrics", &request).await
}

/// `POST /invalidate {"all": true}`: pgmemo drops every entry and its catalog memos.
pub async fn flush_all(admin_addr: SocketAddr) -> Result<(), CheckerError> {
    let body = r#"{"all": true}"#;
    let request = format!(
        "POST /invalidate HTTP/1.0\r\nHost: {admin_addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    tokio::time::timeout(
        METRICS_TIMEOUT,
        exchange(admin_addr, "/invalidate", &request),
    )
    .await
    .map_err(|_| {
        CheckerError::Timeout(
            format!("POST http://{admin_addr}/invalidate"),
            METRICS_TIMEOUT,
        )
    })?
    .map(|_| ())
}

/// Sends one HTTP/1.0 `request` to the admin address and returns the body of a 200 answer.
async fn exchange(
    admin_addr: SocketAddr,
    path: &str,
    request: &str,
) -> Result<String, CheckerError> {
    let io = |e: std::io::Error| CheckerError::Metrics(format!("{admin_addr}: {e}"));
    let mut stream = TcpStream::connect(admin_addr).await.map_err(io)?;
    stream.write_all(request.as_bytes()).await.map_err(io)?;
    let mut response = Vec::new();
    stream
        .take(MAX_RESPONSE)
        .read_to_end(&mut response)
        .await
        .map_err(io)?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| CheckerError::Metrics(format!("{admin_addr}: malformed HTTP response")))?;
    let status = head.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("200") {
        return Err(CheckerError::Metrics(format!(
            "{admin_addr}{path}: {status}"
        )));
    }
    Ok(body.to_string())
}

/// The hit ratio from Prometheus text: every sample of the two counters is summed (they may
/// carry labels). `None` when either counter is absent or both are zero.
pub fn parse_hit_ratio(text: &str) -> Option<f64> {
    let hits = sum_samples(text, HITS)?;
    let misses = sum_samples(text, MISSES)?;
    let lookups = hits + misses;
    (lookups > 0.0).then(|| hits / lookups)
}

/// Sum of the samples of metric `name` (`name value` or `name{labels} value` lines, an
/// optional timestamp after the value); `None` if there is no sample.
fn sum_samples(text: &str, name: &str) -> Option<f64> {
    let mut total = None;
    for line in text.lines() {
        let line = line.trim();
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let rest = match rest.chars().next() {
            // Label values may contain `}` but the value after the labels is a number, so
            // the last `}` closes them.
            Some('{') => match rest.rsplit_once('}') {
                Some((_, after)) => after,
                None => continue,
            },
            Some(c) if c.is_whitespace() => rest,
            // A longer name sharing the prefix, e.g. `..._total_created`.
            _ => continue,
        };
        if let Some(value) = rest
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        {
            total = Some(total.unwrap_or(0.0) + value);
        }
    }
    total
}
