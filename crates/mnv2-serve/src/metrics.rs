//! Prometheus metrics in the text exposition format (version 0.0.4), kept by hand: a few
//! counters, gauges and fixed-bucket histograms need no metrics library.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Mutex;

/// Request latency buckets, seconds.
const LATENCY_BUCKETS: [f64; 14] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
/// Images per engine batch.
const BATCH_BUCKETS: [f64; 8] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0];

/// A histogram with fixed upper bounds (cumulative counts are computed when rendering).
#[derive(Clone, Debug)]
struct Histogram {
    bounds: &'static [f64],
    /// Per bucket (not cumulative), plus one for `+Inf`.
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Histogram { bounds, counts: vec![0; bounds.len() + 1], sum: 0.0, count: 0 }
    }

    fn observe(&mut self, v: f64) {
        let i = self.bounds.iter().position(|&b| v <= b).unwrap_or(self.bounds.len());
        self.counts[i] += 1;
        self.sum += v;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cum = 0;
        for (i, b) in self.bounds.iter().enumerate() {
            cum += self.counts[i];
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {cum}");
        }
        cum += self.counts[self.bounds.len()];
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {cum}");
        let braces = if labels.is_empty() { String::new() } else { format!("{{{labels}}}") };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum);
        let _ = writeln!(out, "{name}_count{braces} {}", self.count);
    }
}

#[derive(Clone, Default)]
struct Inner {
    /// (route, status code) -> requests.
    requests: BTreeMap<(String, u16), u64>,
    /// route -> latency.
    latency: BTreeMap<String, Histogram>,
    batch_size: Option<Histogram>,
    inference: Option<Histogram>,
}

/// The server's metrics; shared by the handlers and the batching worker.
#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
    /// Images waiting for the engine.
    queue_depth: AtomicI64,
    /// Requests admitted and not yet answered.
    inflight: AtomicI64,
}

impl Metrics {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain counters behind: still usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One answered request: its route (the matched pattern), status and latency.
    pub fn request(&self, route: &str, status: u16, seconds: f64) {
        let mut g = self.lock();
        *g.requests.entry((route.to_owned(), status)).or_default() += 1;
        g.latency.entry(route.to_owned()).or_insert_with(|| Histogram::new(&LATENCY_BUCKETS)).observe(seconds);
    }

    /// One engine batch of `n` images that took `seconds`.
    pub fn batch(&self, n: usize, seconds: f64) {
        let mut g = self.lock();
        g.batch_size.get_or_insert_with(|| Histogram::new(&BATCH_BUCKETS)).observe(n as f64);
        g.inference.get_or_insert_with(|| Histogram::new(&LATENCY_BUCKETS)).observe(seconds);
    }

    pub fn queue_add(&self, n: i64) {
        self.queue_depth.fetch_add(n, Ordering::Relaxed);
    }

    pub fn inflight_add(&self, n: i64) {
        self.inflight.fetch_add(n, Ordering::Relaxed);
    }

    pub fn queue_depth(&self) -> i64 {
        self.queue_depth.load(Ordering::Relaxed)
    }

    pub fn inflight(&self) -> i64 {
        self.inflight.load(Ordering::Relaxed)
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        // A copy, so rendering does not hold the lock.
        let g = self.lock().clone();
        let mut s = String::new();
        s.push_str("# HELP mnv2_requests_total HTTP requests answered, by route and status code.\n");
        s.push_str("# TYPE mnv2_requests_total counter\n");
        for ((route, code), n) in &g.requests {
            let _ = writeln!(s, "mnv2_requests_total{{route=\"{route}\",code=\"{code}\"}} {n}");
        }
        s.push_str("# HELP mnv2_request_errors_total HTTP requests answered with a 4xx or 5xx status, by route and status code.\n");
        s.push_str("# TYPE mnv2_request_errors_total counter\n");
        for ((route, code), n) in g.requests.iter().filter(|((_, c), _)| *c >= 400) {
            let _ = writeln!(s, "mnv2_request_errors_total{{route=\"{route}\",code=\"{code}\"}} {n}");
        }
        s.push_str("# HELP mnv2_request_duration_seconds Time from the request's arrival to its response, by route.\n");
        s.push_str("# TYPE mnv2_request_duration_seconds histogram\n");
        for (route, h) in &g.latency {
            h.render(&mut s, "mnv2_request_duration_seconds", &format!("route=\"{route}\""));
        }
        s.push_str("# HELP mnv2_batch_size Images per engine batch.\n");
        s.push_str("# TYPE mnv2_batch_size histogram\n");
        g.batch_size.unwrap_or_else(|| Histogram::new(&BATCH_BUCKETS)).render(&mut s, "mnv2_batch_size", "");
        s.push_str("# HELP mnv2_inference_duration_seconds Engine time per batch.\n");
        s.push_str("# TYPE mnv2_inference_duration_seconds histogram\n");
        g.inference.unwrap_or_else(|| Histogram::new(&LATENCY_BUCKETS)).render(
            &mut s,
            "mnv2_inference_duration_seconds",
            "",
        );
        s.push_str("# HELP mnv2_queue_depth Images waiting for the engine.\n");
        s.push_str("# TYPE mnv2_queue_depth gauge\n");
        let _ = writeln!(s, "mnv2_queue_depth {}", self.queue_depth.load(Ordering::Relaxed));
        s.push_str("# HELP mnv2_inflight_requests Inference requests admitted and not yet answered.\n");
        s.push_str("# TYPE mnv2_inflight_requests gauge\n");
        let _ = writeln!(s, "mnv2_inflight_requests {}", self.inflight.load(Ordering::Relaxed));
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let m = Metrics::default();
        m.batch(1, 0.002);
        m.batch(3, 0.02);
        m.batch(200, 0.2);
        let t = m.render();
        assert!(t.contains("mnv2_batch_size_bucket{le=\"1\"} 1\n"), "{t}");
        assert!(t.contains("mnv2_batch_size_bucket{le=\"4\"} 2\n"), "{t}");
        assert!(t.contains("mnv2_batch_size_bucket{le=\"128\"} 2\n"), "{t}");
        assert!(t.contains("mnv2_batch_size_bucket{le=\"+Inf\"} 3\n"), "{t}");
        assert!(t.contains("mnv2_batch_size_sum 204\n"), "{t}");
        assert!(t.contains("mnv2_batch_size_count 3\n"), "{t}");
    }

    #[test]
    fn errors_are_the_4xx_and_5xx_requests() {
        let m = Metrics::default();
        m.request("/v1/classify", 200, 0.01);
        m.request("/v1/classify", 400, 0.001);
        m.request("/v1/classify", 400, 0.001);
        let t = m.render();
        assert!(t.contains("mnv2_requests_total{route=\"/v1/classify\",code=\"200\"} 1\n"), "{t}");
        assert!(t.contains("mnv2_request_errors_total{route=\"/v1/classify\",code=\"400\"} 2\n"), "{t}");
        assert!(!t.contains("mnv2_request_errors_total{route=\"/v1/classify\",code=\"200\"}"), "{t}");
        assert!(t.contains("mnv2_request_duration_seconds_count{route=\"/v1/classify\"} 3\n"), "{t}");
    }
}
