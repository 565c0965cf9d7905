//! Prometheus metrics: an HTTP endpoint (`metrics_address` in the
//! configuration) serving the counters `podswitch stats` reports, in the
//! OpenMetrics text format Prometheus scrapes. A scrape reads the same
//! snapshots as `stats` does — the workers' counter blocks with relaxed
//! loads, the tables under their lock for a moment — so it never stops or
//! slows a worker; it runs on a thread of its own.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

use crate::control::protocol::{PeerStatus, StatsReport};
use crate::control_plane::{ControlPlane, RequestCount};
use crate::stats::{BATCH_BUCKETS, WorkerTraffic, worker_traffic};

/// The path Prometheus scrapes.
pub const METRICS_PATH: &str = "/metrics";

/// The OpenMetrics text format's content type.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// How often the server looks up from waiting for a request to see
/// whether the daemon is stopping.
const STOP_CHECK: Duration = Duration::from_millis(200);

/// The batch-size buckets' labels, as `stats` groups them.
const BATCH_LABELS: [&str; BATCH_BUCKETS] = ["1", "2-3", "4-7", "8-15", "16-31", "32-63", "64"];

/// Everything a scrape reports, read at one moment.
pub struct Snapshot {
    /// What `podswitch stats` reports.
    pub stats: StatsReport,
    /// Per worker: the frames and bytes it received and sent, all ports.
    pub traffic: Vec<WorkerTraffic>,
    /// The peers and their next-hop state.
    pub peers: Vec<PeerStatus>,
    /// Routes in the FIB.
    pub fib_routes: usize,
    /// Control-socket requests carried out, by operation and outcome.
    pub requests: Vec<RequestCount>,
}

impl Snapshot {
    /// Read the control plane's counters and tables.
    pub fn take(plane: &ControlPlane) -> Snapshot {
        Snapshot {
            stats: plane.stats(),
            traffic: plane
                .workers()
                .iter()
                .map(|w| worker_traffic(&w.stats))
                .collect(),
            peers: plane.peers(),
            fib_routes: plane.fib_size(),
            requests: plane.request_counts(),
        }
    }
}

/// Label names and values of one sample.
type Labels = Vec<(&'static str, String)>;

/// A registry being filled with one scrape's samples.
struct Exposition {
    registry: Registry,
}

impl Exposition {
    /// Register a counter family `name` (the encoder appends `_total`)
    /// with `samples`.
    fn counters(
        &mut self,
        name: &str,
        help: &str,
        unit: Option<Unit>,
        samples: impl IntoIterator<Item = (Labels, u64)>,
    ) {
        let family = Family::<Labels, Counter<u64>>::default();
        for (labels, value) in samples {
            family.get_or_create(&labels).inc_by(value);
        }
        self.register(name, help, unit, family);
    }

    /// Register a gauge family `name` with `samples`.
    fn gauges(
        &mut self,
        name: &str,
        help: &str,
        unit: Option<Unit>,
        samples: impl IntoIterator<Item = (Labels, u64)>,
    ) {
        let family = Family::<Labels, Gauge<u64, AtomicU64>>::default();
        for (labels, value) in samples {
            family.get_or_create(&labels).set(value);
        }
        self.register(name, help, unit, family);
    }

    /// Register an unlabelled counter.
    fn counter(&mut self, name: &str, help: &str, value: u64) {
        let counter = Counter::<u64>::default();
        counter.inc_by(value);
        self.register(name, help, None, counter);
    }

    /// Register an unlabelled gauge.
    fn gauge(&mut self, name: &str, help: &str, value: u64) {
        let gauge = Gauge::<u64, AtomicU64>::default();
        gauge.set(value);
        self.register(name, help, None, gauge);
    }

    fn register(
        &mut self,
        name: &str,
        help: &str,
        unit: Option<Unit>,
        metric: impl prometheus_client::registry::Metric,
    ) {
        match unit {
            Some(unit) => self.registry.register_with_unit(name, help, unit, metric),
            None => self.registry.register(name, help, metric),
        }
    }
}

fn label(name: &'static str, value: impl ToString) -> Labels {
    vec![(name, value.to_string())]
}

/// The snapshot in the OpenMetrics text format, every name prefixed
/// `podswitch_`.
pub fn exposition(s: &Snapshot) -> Result<String> {
    let mut e = Exposition {
        registry: Registry::with_prefix("podswitch"),
    };
    let ports = &s.stats.ports;
    let per_port = |field: fn(&crate::stats::PortReport) -> u64| {
        ports
            .iter()
            .map(move |(name, p)| (label("port", name), field(p)))
    };
    e.counters(
        "port_received_packets",
        "Frames the switch received from a port",
        None,
        per_port(|p| p.rx_packets),
    );
    e.counters(
        "port_received",
        "Bytes the switch received from a port",
        Some(Unit::Bytes),
        per_port(|p| p.rx_bytes),
    );
    e.counters(
        "port_sent_packets",
        "Frames the switch sent on a port",
        None,
        per_port(|p| p.tx_packets),
    );
    e.counters(
        "port_sent",
        "Bytes the switch sent on a port",
        Some(Unit::Bytes),
        per_port(|p| p.tx_bytes),
    );
    e.counters(
        "port_drops",
        "Frames received on a port and dropped, by reason (reasons with no drops are left out)",
        None,
        ports.iter().flat_map(|(name, p)| {
            p.drops.iter().map(move |(reason, n)| {
                (vec![("port", name.clone()), ("reason", reason.clone())], *n)
            })
        }),
    );
    e.counters(
        "port_kernel_events",
        "The kernel's AF_XDP counters on a port's sockets: rx_dropped, rx_ring_full, \
         fill_ring_empty, invalid_descs",
        None,
        ports.iter().flat_map(|(name, p)| {
            let k = p.kernel;
            [
                ("rx_dropped", k.rx_dropped),
                ("rx_ring_full", k.rx_ring_full),
                ("fill_ring_empty", k.fill_ring_empty),
                ("invalid_descs", k.invalid_descs),
            ]
            .map(|(event, n)| (vec![("port", name.clone()), ("event", event.into())], n))
        }),
    );
    e.counters(
        "port_interface_rx_dropped_packets",
        "Frames the kernel dropped at a port's interface before XDP saw them",
        None,
        per_port(|p| p.interface_rx_dropped),
    );
    e.counters(
        "port_tap_queue_dropped_packets",
        "Frames a TAP pod's kernel dropped because the switch had not read its queue yet",
        None,
        per_port(|p| p.tap_queue_dropped),
    );
    e.counters(
        "port_super_frames_cut",
        "Super-frames received on a port and cut into segments",
        None,
        per_port(|p| p.offload.super_frames_cut),
    );
    e.counters(
        "port_super_frames_sent",
        "Super-frames sent on a port (coalesced, or passed through whole)",
        None,
        per_port(|p| p.offload.super_frames_sent),
    );

    let workers = || s.stats.workers.iter().enumerate();
    let traffic = |field: fn(&WorkerTraffic) -> u64| {
        s.traffic
            .iter()
            .enumerate()
            .map(move |(w, t)| (label("worker", w), field(t)))
    };
    e.counters(
        "worker_received_packets",
        "Frames a worker received, all its ports",
        None,
        traffic(|t| t.rx_packets),
    );
    e.counters(
        "worker_received",
        "Bytes a worker received, all its ports",
        Some(Unit::Bytes),
        traffic(|t| t.rx_bytes),
    );
    e.counters(
        "worker_sent_packets",
        "Frames a worker sent, all ports",
        None,
        traffic(|t| t.tx_packets),
    );
    e.counters(
        "worker_sent",
        "Bytes a worker sent, all ports",
        Some(Unit::Bytes),
        traffic(|t| t.tx_bytes),
    );
    e.counters(
        "worker_polls",
        "Passes of a worker's poll loop that found work (busy) or none (idle)",
        None,
        workers().flat_map(|(w, r)| {
            [("busy", r.busy_polls), ("idle", r.idle_polls)].map(|(result, n)| {
                (
                    vec![("worker", w.to_string()), ("result", result.into())],
                    n,
                )
            })
        }),
    );
    e.counters(
        "worker_sleeps",
        "Times a worker slept waiting for traffic",
        None,
        workers().map(|(w, r)| (label("worker", w), r.sleeps)),
    );
    e.counters(
        "worker_priority_raised",
        "Times a worker fell behind its senders and took overload_nice",
        None,
        workers().map(|(w, r)| (label("worker", w), r.raised)),
    );
    e.counters(
        "worker_batches",
        "Batches a worker took off one socket, by size (frames)",
        None,
        workers().flat_map(|(w, r)| {
            BATCH_LABELS.iter().zip(r.batches).map(move |(size, n)| {
                (vec![("worker", w.to_string()), ("size", (*size).into())], n)
            })
        }),
    );
    e.gauges(
        "worker_ring_frames",
        "Frames a worker last saw on its sockets' rings, by ring",
        None,
        workers().flat_map(|(w, r)| {
            let g = r.rings;
            [
                ("fill", g.fill),
                ("rx", g.rx),
                ("tx", g.tx),
                ("completion", g.completion),
            ]
            .map(|(ring, n)| (vec![("worker", w.to_string()), ("ring", ring.into())], n))
        }),
    );

    let f = &s.stats.frames;
    e.gauges(
        "frames",
        "Buffer frames by place",
        None,
        [
            ("free", f.free),
            ("fill", f.fill),
            ("rx", f.rx),
            ("in_flight", f.in_flight),
            ("tx", f.tx),
            ("completion", f.completion),
            ("queued", f.queued),
        ]
        .map(|(place, n)| (label("place", place), n)),
    );
    e.counter(
        "frame_violations",
        "Frame moves that did not start where the frame was (0 unless broken; counted only \
         with check_frames)",
        f.violations,
    );
    e.counters(
        "uplink_xdp_packets",
        "The uplink XDP program's verdicts: tunnel packets redirected to the switch, TCP tunnel \
         packets passed to the kernel for the tunnel port, others passed to the kernel",
        None,
        [
            ("redirected", s.stats.uplink_redirected),
            ("to_kernel", s.stats.uplink_to_kernel),
            ("passed", s.stats.uplink_passed),
        ]
        .map(|(verdict, n)| (label("verdict", verdict), n)),
    );
    if let Some(services) = &s.stats.services {
        e.counter(
            "service_connections",
            "Connections the switch translated to a Service endpoint \
             (service_translation = \"switch\")",
            services.connections_translated,
        );
        e.gauge(
            "service_connections_active",
            "Connections in the switch's connection table",
            services.connections_active,
        );
    }

    let resolved = |p: &PeerStatus| p.next_hop_mac.is_some();
    e.gauges(
        "peer_up",
        "1 if a peer's underlay next hop is resolved (traffic to it flows), else 0",
        None,
        s.peers.iter().map(|p| {
            (
                vec![
                    ("peer", p.node_ip.to_string()),
                    ("pod_cidr", p.pod_cidr.to_string()),
                ],
                u64::from(resolved(p)),
            )
        }),
    );
    let state = |p: &PeerStatus| match (p.next_hop, resolved(p)) {
        (_, true) => "resolved",
        (Some(_), false) => "resolving",
        (None, false) => "no_route",
    };
    e.gauges(
        "peers",
        "Peers by state: resolved, resolving (route known, next-hop MAC not yet), no_route",
        None,
        ["resolved", "resolving", "no_route"].map(|st| {
            let n = s.peers.iter().filter(|p| state(p) == st).count();
            (label("state", st), n as u64)
        }),
    );
    e.gauge("fib_routes", "Routes in the FIB", s.fib_routes as u64);
    e.counters(
        "control_requests",
        "Control-socket requests carried out, by operation and result (ok or error)",
        None,
        s.requests.iter().map(|r| {
            (
                vec![
                    ("op", r.op.clone()),
                    ("result", if r.ok { "ok" } else { "error" }.into()),
                ],
                r.count,
            )
        }),
    );

    let mut text = String::new();
    encode(&mut text, &e.registry).map_err(|_| anyhow!("encoding the metrics"))?;
    Ok(text)
}

/// What a request to the metrics server gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `GET /metrics` (a query string is ignored): the exposition.
    Metrics,
    /// Another path: 404.
    NotFound,
    /// `/metrics` with another method than GET or HEAD: 405.
    MethodNotAllowed,
}

/// Where `method` and `url` lead.
pub fn route(method: &tiny_http::Method, url: &str) -> Route {
    let path = url.split(['?', '#']).next().unwrap_or_default();
    if path != METRICS_PATH {
        return Route::NotFound;
    }
    match method {
        tiny_http::Method::Get | tiny_http::Method::Head => Route::Metrics,
        _ => Route::MethodNotAllowed,
    }
}

fn header(name: &str, value: &str) -> tiny_http::Header {
    tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes())
        .expect("the server's own header names and values are ASCII")
}

/// Answer one request.
fn answer(request: tiny_http::Request, plane: &ControlPlane) {
    let text = |status: u16, body: String| {
        tiny_http::Response::from_string(body)
            .with_status_code(status)
            .with_header(header("Content-Type", "text/plain; charset=utf-8"))
    };
    let response = match route(request.method(), request.url()) {
        Route::Metrics => match exposition(&Snapshot::take(plane)) {
            Ok(body) => tiny_http::Response::from_string(body)
                .with_header(header("Content-Type", CONTENT_TYPE)),
            Err(e) => text(500, format!("{e:#}\n")),
        },
        Route::NotFound => text(404, format!("not found: metrics are at {METRICS_PATH}\n")),
        Route::MethodNotAllowed => text(405, "method not allowed: use GET\n".into())
            .with_header(header("Allow", "GET, HEAD")),
    };
    if let Err(e) = request.respond(response) {
        tracing::debug!("answering a metrics scrape: {e}");
    }
}

/// The metrics endpoint, listening (bound at startup, so a taken
/// address stops the daemon before it touches any interface).
pub struct MetricsServer {
    server: tiny_http::Server,
}

impl MetricsServer {
    /// Listen on `address`.
    pub fn bind(address: SocketAddr) -> Result<MetricsServer> {
        let server = tiny_http::Server::http(address).map_err(|e| {
            anyhow!("config key `metrics_address`: cannot listen on {address}: {e}")
        })?;
        Ok(MetricsServer { server })
    }

    /// Answer scrapes on a thread of its own until `stop` is set.
    pub fn serve(self, plane: Arc<ControlPlane>, stop: Arc<AtomicBool>) -> Result<JoinHandle<()>> {
        let server = self.server;
        if let Some(address) = server.server_addr().to_ip() {
            tracing::info!(%address, path = METRICS_PATH, "serving metrics");
        }
        std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match server.recv_timeout(STOP_CHECK) {
                        Ok(Some(request)) => answer(request, &plane),
                        Ok(None) => {}
                        Err(e) => {
                            tracing::warn!("metrics server: {e}");
                            std::thread::sleep(STOP_CHECK);
                        }
                    }
                }
            })
            .context("spawning the metrics thread")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::protocol::{FrameReport, ServiceCounters};
    use crate::stats::{PortReport, WorkerReport};

    fn snapshot() -> Snapshot {
        let mut port = PortReport {
            rx_packets: 10,
            rx_bytes: 1000,
            tx_packets: 7,
            tx_bytes: 700,
            ..PortReport::default()
        };
        port.drops.insert("bad_ipv4".into(), 3);
        Snapshot {
            stats: StatsReport {
                ports: [("veth1".to_string(), port)].into(),
                workers: vec![WorkerReport {
                    busy_polls: 5,
                    idle_polls: 9,
                    batches: [1, 0, 0, 0, 0, 0, 2],
                    ..WorkerReport::default()
                }],
                frames: FrameReport::new(Default::default(), 0, 0, 0, false),
                uplink_redirected: 4,
                uplink_passed: 1,
                uplink_to_kernel: 0,
                services: Some(ServiceCounters {
                    connections_translated: 7,
                    connections_active: 2,
                }),
            },
            traffic: vec![WorkerTraffic {
                rx_packets: 10,
                ..WorkerTraffic::default()
            }],
            peers: vec![PeerStatus {
                pod_cidr6: None,
                node_ip: "10.1.0.12".parse().unwrap(),
                pod_cidr: "10.244.2.0/24".parse().unwrap(),
                vtep_mac: "0a:70:0a:01:00:0c".parse().unwrap(),
                next_hop: Some("10.1.0.12".parse().unwrap()),
                next_hop_mac: None,
            }],
            fib_routes: 3,
            requests: vec![RequestCount {
                op: "port_add".into(),
                ok: false,
                count: 2,
            }],
        }
    }

    #[test]
    fn exposition_names_follow_prometheus_conventions() {
        let text = exposition(&snapshot()).unwrap();
        for line in [
            "# TYPE podswitch_port_received_packets counter",
            "podswitch_port_received_packets_total{port=\"veth1\"} 10",
            "# UNIT podswitch_port_received_bytes bytes",
            "podswitch_port_received_bytes_total{port=\"veth1\"} 1000",
            "podswitch_port_drops_total{port=\"veth1\",reason=\"bad_ipv4\"} 3",
            "podswitch_worker_polls_total{worker=\"0\",result=\"busy\"} 5",
            "podswitch_worker_batches_total{worker=\"0\",size=\"64\"} 2",
            "podswitch_worker_received_packets_total{worker=\"0\"} 10",
            "podswitch_uplink_xdp_packets_total{verdict=\"redirected\"} 4",
            "podswitch_peer_up{peer=\"10.1.0.12\",pod_cidr=\"10.244.2.0/24\"} 0",
            "podswitch_peers{state=\"resolving\"} 1",
            "podswitch_fib_routes 3",
            "podswitch_control_requests_total{op=\"port_add\",result=\"error\"} 2",
            "# HELP podswitch_fib_routes Routes in the FIB.",
            "podswitch_frame_violations_total 0",
            "podswitch_service_connections_total 7",
            "podswitch_service_connections_active 2",
            "# EOF",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }

    /// The Grafana dashboard is valid JSON and queries only metrics the
    /// exposition has.
    #[test]
    fn dashboard_queries_served_metrics() {
        let dashboard = include_str!("../../deploy/grafana/podswitch-dashboard.json");
        let json: serde_json::Value = serde_json::from_str(dashboard).unwrap();
        let panels = json["panels"].as_array().unwrap();
        assert!(panels.len() >= 4);
        let text = exposition(&snapshot()).unwrap();
        let served: std::collections::BTreeSet<&str> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split(['{', ' ']).next())
            .collect();
        let mut queried = 0;
        for panel in panels {
            for target in panel["targets"].as_array().unwrap() {
                let expr = target["expr"].as_str().unwrap();
                for (i, _) in expr.match_indices("podswitch_") {
                    let name: String = expr[i..]
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    assert!(served.contains(name.as_str()), "{name} is not served");
                    queried += 1;
                }
            }
        }
        assert!(queried > 0);
    }

    #[test]
    fn only_get_or_head_on_the_metrics_path() {
        use tiny_http::Method;
        assert_eq!(route(&Method::Get, "/metrics"), Route::Metrics);
        assert_eq!(route(&Method::Head, "/metrics?x=1"), Route::Metrics);
        assert_eq!(route(&Method::Post, "/metrics"), Route::MethodNotAllowed);
        assert_eq!(route(&Method::Get, "/"), Route::NotFound);
        assert_eq!(route(&Method::Get, "/metrics/x"), Route::NotFound);
        assert_eq!(route(&Method::Get, ""), Route::NotFound);
    }
}
