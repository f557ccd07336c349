//! The service graph: requests, failures and durations per edge (client service, server
//! service), in the form Grafana's and Tempo's service graphs read
//! (`traces_service_graph_request_total`, `..._failed_total`, `..._server_seconds`,
//! `..._client_seconds`).
//!
//! An edge is known for sure when both ends are traced on this host: the server's span has
//! the client's span as its parent (a same-host link, or the `traceparent` the client sent).
//! Each end waits up to [`PAIR_WAIT_NS`] for the other; then a client whose server was not
//! seen is an edge to its server's address (a node for what is not traced here), and a server
//! whose client was not seen is an edge from `unknown` (a caller on another host); a server
//! request without any parent is an edge from `user`, as Tempo names the outside world.

use super::red::{Attributes, BOUNDS, Histogram, OVERFLOW, TTL_NS};
use crate::{
    conn::FastMap,
    correlate::span::{HttpSpan, Kind},
};

/// How long one end of an edge waits for the other.
pub const PAIR_WAIT_NS: u64 = 10_000_000_000;
/// Ends waiting at once; past this, a new end is counted as unpaired at once.
pub const MAX_WAITING: usize = 50_000;

/// The caller of a server request that came with no trace context.
pub const USER: &str = "user";
/// The caller of a server request whose parent span was not made here.
pub const UNKNOWN: &str = "unknown";

/// One end, waiting for the other.
#[derive(Debug, Clone)]
struct End {
    service: String,
    seconds: f64,
    failed: bool,
    /// Clients: their server's address, the edge's other node if no server shows up.
    peer: String,
    /// Kernel monotonic time it finished (ns).
    at_ns: u64,
}

/// One edge's numbers.
#[derive(Debug, Clone, PartialEq)]
pub struct Edge {
    pub total: u64,
    pub failed: u64,
    pub server: Histogram,
    pub client: Histogram,
    pub updated_ns: u64,
}

impl Edge {
    fn new(now_ns: u64) -> Self {
        Edge {
            total: 0,
            failed: 0,
            server: Histogram::new(now_ns),
            client: Histogram::new(now_ns),
            updated_ns: now_ns,
        }
    }
}

/// What one finished pairing (or give-up) adds to an edge.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    pub client: String,
    pub server: String,
    pub failed: bool,
    pub server_seconds: Option<f64>,
    pub client_seconds: Option<f64>,
}

/// The service graph of every exchange so far.
#[derive(Debug, Clone)]
pub struct Graph {
    limit: usize,
    /// Servers by their parent's span id.
    servers: FastMap<[u8; 8], End>,
    /// Clients by their own span id.
    clients: FastMap<[u8; 8], End>,
    pub edges: FastMap<Attributes, Edge>,
    /// Observations that went to the overflow edge because the limit was reached.
    pub overflowed: u64,
    /// Ends given up on at once because too many were waiting.
    pub waiting_full: u64,
    /// Edges dropped because they stopped updating.
    pub expired: u64,
}

impl Default for Graph {
    fn default() -> Self {
        Graph::new(super::red::DEFAULT_LIMIT)
    }
}

fn failed(span: &HttpSpan) -> bool {
    span.error_type().is_some()
}

fn seconds(span: &HttpSpan) -> f64 {
    span.end_ns.saturating_sub(span.start_ns) as f64 / 1e9
}

impl Graph {
    /// At most `limit` edges (at least 2: one, and the overflow edge).
    pub fn new(limit: usize) -> Self {
        Graph {
            limit: limit.max(2),
            servers: FastMap::default(),
            clients: FastMap::default(),
            edges: FastMap::default(),
            overflowed: 0,
            waiting_full: 0,
            expired: 0,
        }
    }

    /// A copy of the edges and counts, without the ends waiting (what a scrape renders).
    pub fn edges_only(&self) -> Graph {
        Graph {
            limit: self.limit,
            servers: FastMap::default(),
            clients: FastMap::default(),
            edges: self.edges.clone(),
            overflowed: self.overflowed,
            waiting_full: self.waiting_full,
            expired: self.expired,
        }
    }

    /// Take one finished span; returns what it added to the graph now, each with the
    /// attributes of the edge it went to (a span may also complete an edge later, when its
    /// other end arrives or waits too long).
    pub fn record(&mut self, span: &HttpSpan) -> Vec<(Attributes, Observation)> {
        let end = End {
            service: span.process.service_name().to_string(),
            seconds: seconds(span),
            failed: failed(span),
            peer: span.server().0,
            at_ns: span.end_ns,
        };
        let mut out = Vec::new();
        match span.kind {
            Kind::Server => match span.parent_span_id {
                None => out.push(Observation {
                    client: USER.to_string(),
                    server: end.service,
                    failed: end.failed,
                    server_seconds: Some(end.seconds),
                    client_seconds: None,
                }),
                Some(parent) => match self.clients.remove(&parent) {
                    Some(client) => out.push(paired(client, end)),
                    None => self.wait(true, parent, end, &mut out),
                },
            },
            Kind::Client => match self.servers.remove(&span.span_id) {
                Some(server) => out.push(paired(end, server)),
                None => self.wait(false, span.span_id, end, &mut out),
            },
        }
        out.into_iter()
            .map(|o| (self.observe(&o, span.end_ns), o))
            .collect()
    }

    fn wait(&mut self, server: bool, key: [u8; 8], end: End, out: &mut Vec<Observation>) {
        let waiting = self.servers.len() + self.clients.len();
        if waiting >= MAX_WAITING {
            self.waiting_full += 1;
            out.push(unpaired(server, end));
        } else if server {
            self.servers.insert(key, end);
        } else {
            self.clients.insert(key, end);
        }
    }

    /// Give up on the ends that waited longer than [`PAIR_WAIT_NS`] (recorded as unpaired),
    /// and drop the edges not updated for [`TTL_NS`]. Returns what was recorded.
    pub fn expire(&mut self, now_ns: u64) -> Vec<(Attributes, Observation)> {
        let cutoff = now_ns.saturating_sub(PAIR_WAIT_NS);
        let mut out = Vec::new();
        for (server, map) in [(true, &mut self.servers), (false, &mut self.clients)] {
            let old: Vec<[u8; 8]> = map
                .iter()
                .filter(|(_, e)| e.at_ns < cutoff)
                .map(|(k, _)| *k)
                .collect();
            for k in old {
                if let Some(end) = map.remove(&k) {
                    out.push(unpaired(server, end));
                }
            }
        }
        let out = out
            .into_iter()
            .map(|o| (self.observe(&o, now_ns), o))
            .collect();
        let ttl = now_ns.saturating_sub(TTL_NS);
        let before = self.edges.len();
        self.edges.retain(|_, e| e.updated_ns >= ttl);
        self.expired += (before - self.edges.len()) as u64;
        out
    }

    /// Returns the attributes of the edge it went to.
    fn observe(&mut self, o: &Observation, now_ns: u64) -> Attributes {
        let key = key_of(o);
        let overflow: Attributes = vec![(OVERFLOW.0, OVERFLOW.1.to_string())];
        let regular = self.edges.len() - usize::from(self.edges.contains_key(&overflow));
        let key = if self.edges.contains_key(&key) || regular < self.limit - 1 {
            key
        } else {
            self.overflowed += 1;
            overflow
        };
        let e = self
            .edges
            .entry(key.clone())
            .or_insert_with(|| Edge::new(now_ns));
        e.total += 1;
        e.failed += u64::from(o.failed);
        if let Some(s) = o.server_seconds {
            e.server.observe(s, now_ns);
        }
        if let Some(s) = o.client_seconds {
            e.client.observe(s, now_ns);
        }
        e.updated_ns = e.updated_ns.max(now_ns);
        key
    }
}

/// The attributes of an observation's edge.
pub fn key_of(o: &Observation) -> Attributes {
    vec![("client", o.client.clone()), ("server", o.server.clone())]
}

fn paired(client: End, server: End) -> Observation {
    Observation {
        client: client.service,
        server: server.service,
        failed: client.failed || server.failed,
        server_seconds: Some(server.seconds),
        client_seconds: Some(client.seconds),
    }
}

fn unpaired(server: bool, end: End) -> Observation {
    if server {
        Observation {
            client: UNKNOWN.to_string(),
            server: end.service,
            failed: end.failed,
            server_seconds: Some(end.seconds),
            client_seconds: None,
        }
    } else {
        Observation {
            client: end.service,
            server: end.peer,
            failed: end.failed,
            server_seconds: None,
            client_seconds: Some(end.seconds),
        }
    }
}

/// The graph as Prometheus/OpenMetrics families, in a stable order.
#[derive(Debug)]
pub struct Families(pub Graph);

impl prometheus_client::collector::Collector for Families {
    fn encode(&self, mut enc: prometheus_client::encoding::DescriptorEncoder) -> std::fmt::Result {
        use prometheus_client::{
            encoding::{EncodeMetric as _, NoLabelSet},
            metrics::{MetricType, counter::ConstCounter},
            registry::Unit,
        };
        if self.0.edges.is_empty() {
            return Ok(());
        }
        let mut edges: Vec<_> = self.0.edges.iter().collect();
        edges.sort_by(|a, b| a.0.cmp(b.0));
        let labels = |a: &Attributes| -> Vec<(String, String)> {
            a.iter()
                .map(|(k, v)| (k.replace('.', "_"), v.clone()))
                .collect()
        };
        for (name, help, pick) in [
            (
                "traces_service_graph_request",
                "Requests per edge of the service graph (client service to server service)",
                0,
            ),
            (
                "traces_service_graph_request_failed",
                "Failed requests per edge of the service graph (either end's status an error)",
                1,
            ),
        ] {
            let mut family = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (a, e) in &edges {
                let n = if pick == 0 { e.total } else { e.failed };
                ConstCounter::new(n).encode(family.encode_family(&labels(a))?)?;
            }
        }
        let mut buckets: Vec<(f64, u64)> = BOUNDS.iter().map(|&b| (b, 0)).collect();
        buckets.push((f64::INFINITY, 0));
        for (name, help, server) in [
            (
                "traces_service_graph_request_server",
                "Durations of the service graph's requests as their servers saw them",
                true,
            ),
            (
                "traces_service_graph_request_client",
                "Durations of the service graph's requests as their clients saw them",
                false,
            ),
        ] {
            let mut family =
                enc.encode_descriptor(name, help, Some(&Unit::Seconds), MetricType::Histogram)?;
            for (a, e) in &edges {
                let h = if server { &e.server } else { &e.client };
                if h.count == 0 {
                    continue;
                }
                for (slot, &count) in buckets.iter_mut().zip(&h.buckets) {
                    slot.1 = count;
                }
                family
                    .encode_family(&labels(a))?
                    .encode_histogram::<NoLabelSet>(h.sum, h.count, &buckets, None)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::correlate::span::tests::sample;

    fn span(kind: Kind, service: &str, id: u8, parent: Option<u8>, at: u64) -> HttpSpan {
        let mut s = sample(kind);
        s.response.as_mut().unwrap().status = Some(200);
        s.span_id = [id; 8];
        s.parent_span_id = parent.map(|p| [p; 8]);
        // 5 ms, ending 5 ms after `at`.
        s.start_ns = at;
        s.end_ns = at + 5_000_000;
        let mut p = (*s.process).clone();
        p.service.name = Some(service.to_string());
        s.process = Arc::new(p);
        s
    }

    fn edge<'a>(g: &'a Graph, client: &str, server: &str) -> &'a Edge {
        g.edges
            .get(&vec![
                ("client", client.to_string()),
                ("server", server.to_string()),
            ])
            .unwrap_or_else(|| panic!("no edge {client} -> {server}: {:?}", g.edges.keys()))
    }

    #[test]
    fn two_ends_make_one_edge_in_either_order() {
        let mut g = Graph::default();
        // Server first (the usual order), then its client.
        assert!(
            g.record(&span(Kind::Server, "api", 2, Some(1), 100))
                .is_empty()
        );
        let o = g.record(&span(Kind::Client, "web", 1, None, 110));
        assert_eq!(o.len(), 1);
        assert_eq!(
            (o[0].1.client.as_str(), o[0].1.server.as_str()),
            ("web", "api")
        );
        // Client first.
        assert!(
            g.record(&span(Kind::Client, "web", 3, None, 120))
                .is_empty()
        );
        g.record(&span(Kind::Server, "api", 4, Some(3), 125));
        let e = edge(&g, "web", "api");
        assert_eq!(
            (e.total, e.failed, e.server.count, e.client.count),
            (2, 0, 2, 2)
        );
        assert_eq!(e.server.sum, 0.01);
        assert!(g.servers.is_empty() && g.clients.is_empty());
    }

    #[test]
    fn ends_without_the_other_become_edges_to_the_outside() {
        let mut g = Graph::default();
        let o = g.record(&span(Kind::Server, "api", 2, None, 100));
        assert_eq!(o[0].1.client, USER);
        g.record(&span(Kind::Server, "api", 3, Some(9), 100));
        let mut c = span(Kind::Client, "web", 4, None, 100);
        c.host = Some("payments.example:8443".into());
        g.record(&c);
        assert!(g.expire(100 + PAIR_WAIT_NS / 2).is_empty(), "still waiting");
        let late = g.expire(10_000_000 + PAIR_WAIT_NS);
        assert_eq!(late.len(), 2);
        assert_eq!(edge(&g, USER, "api").total, 1);
        assert_eq!(edge(&g, UNKNOWN, "api").total, 1);
        let out = edge(&g, "web", "payments.example");
        assert_eq!((out.total, out.client.count, out.server.count), (1, 1, 0));
    }

    #[test]
    fn failures_and_the_edge_limit() {
        let mut g = Graph::new(3);
        let mut s = span(Kind::Server, "api", 2, None, 100);
        s.response.as_mut().unwrap().status = Some(503);
        g.record(&s);
        assert_eq!(edge(&g, USER, "api").failed, 1);
        for (i, name) in ["a", "b", "c"].iter().enumerate() {
            g.record(&span(Kind::Server, name, 10 + i as u8, None, 100));
        }
        // The limit counts the overflow edge: api, a, then overflow.
        assert_eq!(g.edges.len(), 3);
        assert_eq!(g.overflowed, 2);
        assert_eq!(
            g.edges[&vec![(OVERFLOW.0, OVERFLOW.1.to_string())]].total,
            2
        );
    }
}
