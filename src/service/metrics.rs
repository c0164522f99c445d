//! Prometheus text exposition for `/metrics`, from lock-free counters.
//!
//! Request metrics are fixed arrays of atomics indexed by route and status,
//! so recording one costs a few relaxed increments and never a lock: the
//! decision path must stay fast. Agent figures (decisions, outcomes, pending)
//! are read from the agent when scraped, not duplicated here.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::agent::Agent;

use super::store::CheckpointStore;

/// The label of a request no route matched (a 404 before routing).
const UNMATCHED: &str = "unmatched";

/// The route labels, as the router matches them (`MatchedPath`): the
/// paths of the OpenAPI table, which the service tests hold equal to the
/// router's routes, so no route can be missing here; then `unmatched`.
fn route_labels() -> Vec<&'static str> {
    let mut labels: Vec<&'static str> = Vec::new();
    for op in super::openapi::OPERATIONS {
        if !labels.contains(&op.path) {
            labels.push(op.path);
        }
    }
    labels.push(UNMATCHED);
    labels
}

/// Upper bounds of the latency histogram, in seconds.
const BUCKETS: [f64; 16] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Status codes are counted in an array of this size; real codes are 100..=599.
const STATUSES: usize = 600;

struct RouteMetrics {
    /// Cumulative counts are computed at render time; these are per bucket (last = +Inf).
    buckets: [AtomicU64; BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
    count: AtomicU64,
    statuses: Box<[AtomicU64]>,
}

impl RouteMetrics {
    fn new() -> Self {
        RouteMetrics {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_nanos: AtomicU64::new(0),
            count: AtomicU64::new(0),
            statuses: (0..STATUSES).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

pub struct Metrics {
    /// Latency is kept per route: `labels[i]`'s figures are `routes[i]`.
    labels: Vec<&'static str>,
    routes: Vec<RouteMetrics>,
    /// Undeclared features decisions sent, per (module, feature).
    pub undeclared: super::undeclared::UndeclaredFeatures,
    store_errors: AtomicU64,
    unauthorized: AtomicU64,
    connections: AtomicU64,
    started: std::time::Instant,
}

impl Default for Metrics {
    fn default() -> Self {
        let labels = route_labels();
        Metrics {
            routes: labels.iter().map(|_| RouteMetrics::new()).collect(),
            labels,
            undeclared: Default::default(),
            store_errors: AtomicU64::new(0),
            unauthorized: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            started: std::time::Instant::now(),
        }
    }
}

impl Metrics {
    /// Index of a matched route (the request's `MatchedPath`) among the
    /// labels; anything else is `unmatched`, the last.
    pub fn route_index(&self, matched: Option<&str>) -> usize {
        matched.and_then(|m| self.labels.iter().position(|r| *r == m)).unwrap_or(self.labels.len() - 1)
    }

    pub fn observe(&self, route: usize, status: u16, seconds: f64) {
        let r = &self.routes[route];
        let bucket = BUCKETS.iter().position(|&b| seconds <= b).unwrap_or(BUCKETS.len());
        r.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        r.sum_nanos.fetch_add((seconds * 1e9) as u64, Ordering::Relaxed);
        r.count.fetch_add(1, Ordering::Relaxed);
        if let Some(c) = r.statuses.get(status as usize) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn store_error(&self) {
        self.store_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a refused token; returns how many there were, this one included.
    pub fn unauthorized(&self) -> u64 {
        self.unauthorized.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub fn store_errors(&self) -> u64 {
        self.store_errors.load(Ordering::Relaxed)
    }

    pub fn connection_accepted(&self) {
        self.connections.fetch_add(1, Ordering::Relaxed);
    }

    pub fn connections_accepted(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    /// The whole exposition, in the Prometheus text format 0.0.4.
    pub fn render(&self, agent: &Agent, store: Option<&dyn CheckpointStore>) -> String {
        let mut out = String::with_capacity(8 * 1024);
        let modules: Vec<String> = agent.modules().map(|s| s.name.clone()).collect();
        let per_module = |out: &mut String, name: &str, kind: &str, help: &str, f: &dyn Fn(&str) -> String| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for m in &modules {
                let _ = writeln!(out, "{name}{{module=\"{m}\"}} {}", f(m));
            }
        };
        let counter = |m: &str, pick: fn(&crate::agent::ModuleCounters) -> &AtomicU64| {
            agent.counters(m).map(|c| pick(c).load(Ordering::Relaxed).to_string()).unwrap_or_else(|_| "NaN".into())
        };
        per_module(&mut out, "paramopt_decisions_total", "counter", "Decisions served.", &|m| {
            counter(m, |c| &c.decisions)
        });
        per_module(&mut out, "paramopt_outcomes_total", "counter", "Outcomes accepted.", &|m| {
            counter(m, |c| &c.outcomes)
        });
        per_module(&mut out, "paramopt_outcomes_rejected_total", "counter", "Outcomes refused by the agent.", &|m| {
            counter(m, |c| &c.rejected_outcomes)
        });
        per_module(
            &mut out,
            "paramopt_decisions_expired_total",
            "counter",
            "Pending decisions dropped after their TTL.",
            &|m| counter(m, |c| &c.expired),
        );
        per_module(
            &mut out,
            "paramopt_decisions_refused_full_total",
            "counter",
            "Decisions refused with 429 because the module's open decisions were full (none is evicted).",
            &|m| counter(m, |c| &c.refused_full),
        );
        per_module(
            &mut out,
            "paramopt_rewards_clipped_total",
            "counter",
            "Rewards beyond the module's reward.clip, learned clipped (a return_pct sent in percent lands here).",
            &|m| counter(m, |c| &c.clipped_rewards),
        );
        per_module(
            &mut out,
            "paramopt_features_out_of_range_total",
            "counter",
            "Features sent outside their declared range; the policy network clips them.",
            &|m| counter(m, |c| &c.features_out_of_range),
        );
        per_module(&mut out, "paramopt_pending_decisions", "gauge", "Decisions waiting for their outcome.", &|m| {
            agent.pending_count(m).map(|n| n.to_string()).unwrap_or_else(|_| "NaN".into())
        });
        per_module(&mut out, "paramopt_policy_generation", "gauge", "Generation of the served policy.", &|m| {
            agent.view(m).map(|v| v.generation.to_string()).unwrap_or_else(|_| "NaN".into())
        });
        per_module(&mut out, "paramopt_ab_test_running", "gauge", "Whether an A/B test is running.", &|m| {
            agent.view(m).map(|v| u8::from(v.ab.is_some()).to_string()).unwrap_or_else(|_| "NaN".into())
        });
        per_module(&mut out, "paramopt_ab_promotions_total", "counter", "Challengers promoted by A/B tests.", &|m| {
            store.map_or(0, |s| s.rollout_counts(m).0).to_string()
        });
        per_module(
            &mut out,
            "paramopt_automatic_rollbacks_total",
            "counter",
            "Rollbacks made by the rollback watch (the log and ml_learning_events say why).",
            &|m| store.map_or(0, |s| s.rollout_counts(m).1).to_string(),
        );
        per_module(
            &mut out,
            "paramopt_rolling_reward",
            "gauge",
            "Mean reward of the live policy's recent decisions (the rollback watch's window); NaN before any.",
            &|m| match agent.view(m) {
                Ok(v) if v.rolling.n > 0.0 => format!("{}", v.rolling.mean),
                _ => "NaN".into(),
            },
        );
        let budget = |m: &str, pick: fn(&crate::agent::BudgetStatus) -> String| {
            agent.budget(m).map(|b| pick(&b)).unwrap_or_else(|_| "NaN".into())
        };
        per_module(
            &mut out,
            "paramopt_exploring",
            "gauge",
            "1 while the loss budget lets the module explore; 0 while it serves its incumbents only.",
            &|m| budget(m, |b| u8::from(b.exploring).to_string()),
        );
        per_module(
            &mut out,
            "paramopt_loss_budget_remaining",
            "gauge",
            "The loss budget left (reward units): the budget plus the lower bound of realised minus the defaults' reward.",
            &|m| budget(m, |b| format!("{}", b.remaining)),
        );
        per_module(
            &mut out,
            "paramopt_shortfall_lower_bound",
            "gauge",
            "Lower confidence bound on the realised reward minus what the defaults would have earned, summed over closed decisions.",
            &|m| budget(m, |b| format!("{}", b.shortfall_lower)),
        );
        per_module(
            &mut out,
            "paramopt_open_exploring_decisions",
            "gauge",
            "Open decisions that explored, each reserved in the budget at its worst case.",
            &|m| budget(m, |b| b.open_exploring.to_string()),
        );
        per_module(
            &mut out,
            "paramopt_held_by_budget_total",
            "counter",
            "Exploring decisions served at the incumbents because the loss budget had no room.",
            &|m| budget(m, |b| b.held_by_budget.to_string()),
        );
        per_module(
            &mut out,
            "paramopt_checkpoint_age_seconds",
            "gauge",
            "Seconds since the newest checkpoint; NaN while no store is configured or none exists.",
            &|m| match store.and_then(|s| s.checkpoint_age_secs(m)) {
                Some(age) => format!("{age}"),
                None => "NaN".into(),
            },
        );
        let _ = writeln!(
            out,
            "# HELP paramopt_store_configured Whether a checkpoint store is configured.\n\
             # TYPE paramopt_store_configured gauge\nparamopt_store_configured {}",
            u8::from(store.is_some())
        );
        let _ = writeln!(
            out,
            "# HELP paramopt_unauthorized_total Requests refused for a missing or wrong token.\n\
             # TYPE paramopt_unauthorized_total counter\nparamopt_unauthorized_total {}",
            self.unauthorized.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP paramopt_store_errors_total Failed store operations.\n\
             # TYPE paramopt_store_errors_total counter\nparamopt_store_errors_total {}",
            // Failures answered to a request, and those of the background
            // checkpointer, which no request sees: an outage shows here too.
            self.store_errors() + store.map_or(0, |s| s.background_errors())
        );
        let log = store.map(|s| s.log_counts()).unwrap_or_default();
        let _ = writeln!(
            out,
            "# HELP paramopt_log_records_total Records the decision log wrote to the store.\n\
             # TYPE paramopt_log_records_total counter\n\
             paramopt_log_records_total{{kind=\"decision\"}} {}\n\
             paramopt_log_records_total{{kind=\"settlement\"}} {}\n\
             paramopt_log_records_total{{kind=\"trade\"}} {}\n\
             # HELP paramopt_log_dropped_total Decision-log entries dropped because the store could not keep up or failed.\n\
             # TYPE paramopt_log_dropped_total counter\nparamopt_log_dropped_total {}",
            log.decisions, log.settlements, log.trades, log.dropped
        );
        let _ = writeln!(
            out,
            "# HELP paramopt_connections_accepted_total TCP connections accepted.\n\
             # TYPE paramopt_connections_accepted_total counter\nparamopt_connections_accepted_total {}",
            self.connections_accepted()
        );
        let _ = writeln!(
            out,
            "# HELP paramopt_uptime_seconds Seconds since the service started.\n\
             # TYPE paramopt_uptime_seconds gauge\nparamopt_uptime_seconds {}",
            self.started.elapsed().as_secs_f64()
        );

        let _ = writeln!(
            out,
            "# HELP paramopt_http_requests_total HTTP requests answered, by route and status.\n\
             # TYPE paramopt_http_requests_total counter"
        );
        for (route, r) in self.labels.iter().zip(&self.routes) {
            for (status, c) in r.statuses.iter().enumerate() {
                let n = c.load(Ordering::Relaxed);
                if n > 0 {
                    let _ = writeln!(out, "paramopt_http_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}");
                }
            }
        }
        let _ = writeln!(
            out,
            "# HELP paramopt_http_request_duration_seconds Time to answer an HTTP request, by route.\n\
             # TYPE paramopt_http_request_duration_seconds histogram"
        );
        for (route, r) in self.labels.iter().zip(&self.routes) {
            let count = r.count.load(Ordering::Relaxed);
            if count == 0 {
                continue;
            }
            let mut cumulative = 0;
            for (i, b) in BUCKETS.iter().enumerate() {
                cumulative += r.buckets[i].load(Ordering::Relaxed);
                let _ = writeln!(
                    out,
                    "paramopt_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"{b}\"}} {cumulative}"
                );
            }
            cumulative += r.buckets[BUCKETS.len()].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "paramopt_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {cumulative}"
            );
            let _ = writeln!(
                out,
                "paramopt_http_request_duration_seconds_sum{{route=\"{route}\"}} {}",
                r.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9
            );
            let _ = writeln!(out, "paramopt_http_request_duration_seconds_count{{route=\"{route}\"}} {cumulative}");
        }
        self.undeclared.render(&mut out);
        out
    }
}
