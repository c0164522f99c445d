//! What a module's parameters do to its trades: their roles, scopes and
//! strategies, declared in a models file's `[counterfactual]` section.
//!
//! With these declarations one reported trade tells what every other value of
//! a determined parameter would have earned (see `agent::counterfactual`):
//! - `gate`: the module trades iff its score reaches the parameter;
//! - `scale`: a taken trade's return is proportional to the parameter;
//! - `weights`: the score is the weights' normalised blend of named features;
//! - `stop_loss` / `profit_target`: the position closes at the first check of
//!   its path at or beyond the level;
//! - `opaque` (the default): none of that is known, so the parameter learns
//!   from bandit feedback as before.
//!
//! A scope says when a parameter matters at all: only in one session, or only
//! for one strategy. Out of scope it is served at its incumbent, never
//! explored, and learns nothing. The raw form ([`CounterfactualSpec`]) mirrors
//! the TOML; [`Counterfactual`] is the validated form the agent takes.

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};

use super::{Feature, Parameter, Session, SpaceError};

/// `[counterfactual]`: the module's strategies, its parameters' roles and the
/// settings of counterfactual learning.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CounterfactualSpec {
    /// The strategies a decision may name (`decide`'s `strategy`, `trade.strategy`).
    #[serde(default)]
    pub strategies: Vec<String>,
    /// Probability that an exploring decision serves the most permissive gate.
    #[serde(default = "default_explore_rate")]
    pub explore_rate: f64,
    /// Level of the anytime-valid test that moves a cell's table off the defaults.
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    /// How much better (reward units per opportunity) a table must be.
    #[serde(default)]
    pub margin: f64,
    /// A cell's table is refitted after this many of its counterfactual outcomes.
    #[serde(default = "default_refit_every")]
    pub refit_every: u64,
    #[serde(default)]
    pub roles: Vec<RoleSpec>,
}

fn default_explore_rate() -> f64 {
    0.1
}
fn default_alpha() -> f64 {
    0.2
}
fn default_refit_every() -> u64 {
    32
}

/// One `[[counterfactual.roles]]` entry: a whole group or one parameter.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleSpec {
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub parameter: Option<String>,
    pub role: String,
    /// A gate's score: `"confidence"` (the outcome's `trade.confidence`) or
    /// the name of a `weights` group.
    #[serde(default)]
    pub score: Option<String>,
    /// `"module"` (default), `"session"` or `"strategy"`.
    #[serde(default)]
    pub scope: Option<String>,
    /// Member name -> the session or strategy it belongs to; by default a
    /// member is named after its session or strategy.
    #[serde(default)]
    pub members: Option<BTreeMap<String, String>>,
    /// For `weights`: member name -> the feature it weighs.
    #[serde(default)]
    pub features: Option<BTreeMap<String, String>>,
    /// For an exit: the `evidence.applied` key that carries the capital the
    /// position used (returns move by capital x the change of the exit's P&L).
    #[serde(default)]
    pub capital: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Opaque,
    Gate,
    Scale,
    Weights,
    StopLoss,
    ProfitTarget,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Opaque => "opaque",
            Role::Gate => "gate",
            Role::Scale => "scale",
            Role::Weights => "weights",
            Role::StopLoss => "stop_loss",
            Role::ProfitTarget => "profit_target",
        }
    }

    /// Whether one outcome tells every arm's reward (given the evidence).
    pub fn determined(self) -> bool {
        self != Role::Opaque
    }
}

/// When a parameter matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    Module,
    Session(Session),
    /// Index into [`Counterfactual::strategies`].
    Strategy(usize),
}

/// Where a gate's score comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ScoreSource {
    /// The outcome's `trade.confidence`.
    Confidence,
    /// The weights group's normalised blend of its features.
    Weights,
}

/// The (only) weights group: parameter indices and, in the same order, the
/// index of the feature each one weighs.
#[derive(Debug, Clone, Serialize)]
pub struct WeightsGroup {
    pub name: String,
    pub members: Vec<usize>,
    pub features: Vec<usize>,
}

/// The exit parameters, on the position's path.
#[derive(Debug, Clone, Serialize)]
pub struct ExitRoles {
    pub stop_loss: Option<usize>,
    pub profit_target: Option<usize>,
    /// The `evidence.applied` key holding the position's capital.
    pub capital: String,
}

/// A module's validated declarations. Per-parameter vectors follow
/// `ModuleSpace::params`.
#[derive(Debug, Clone, Serialize)]
pub struct Counterfactual {
    pub strategies: Vec<String>,
    pub roles: Vec<Role>,
    pub scopes: Vec<Scope>,
    /// Gate parameters, in the module's order; all share `score`.
    pub gates: Vec<usize>,
    pub score: Option<ScoreSource>,
    pub scales: Vec<usize>,
    pub weights: Option<WeightsGroup>,
    pub exit: Option<ExitRoles>,
    pub explore_rate: f64,
    pub alpha: f64,
    pub margin: f64,
    pub refit_every: u64,
}

impl Counterfactual {
    pub fn strategy_index(&self, name: &str) -> Option<usize> {
        self.strategies.iter().position(|s| s == name)
    }

    /// Whether parameter `p` matters for a decision in `session` of `strategy`
    /// (`None`: not known). A strategy-scoped parameter is out of scope while
    /// the strategy is unknown.
    pub fn in_scope(&self, p: usize, session: Session, strategy: Option<usize>) -> bool {
        match self.scopes[p] {
            Scope::Module => true,
            Scope::Session(s) => s == session,
            Scope::Strategy(s) => strategy == Some(s),
        }
    }

    /// The parameter of `among` in scope for the decision, when exactly one is.
    pub fn in_scope_of(&self, among: &[usize], session: Session, strategy: Option<usize>) -> Option<usize> {
        let mut it = among.iter().copied().filter(|&p| self.in_scope(p, session, strategy));
        let first = it.next()?;
        it.next().is_none().then_some(first)
    }

    /// Whether any strategy-scoped parameter exists: then a decision's slot
    /// (what its gate and scale are) depends on its strategy.
    /// Whether the file lists strategies: then a decision's and a trade's
    /// strategy must be one of them; a module that lists none may name its
    /// own, kept as a label.
    pub fn declares_strategies(&self) -> bool {
        !self.strategies.is_empty()
    }

    pub fn strategy_scoped(&self) -> bool {
        self.scopes.iter().any(|s| matches!(s, Scope::Strategy(_)))
    }
}

/// Checks a `[counterfactual]` section against the module's parameters and
/// features. `fail(field, value, reason)` builds the error naming the file.
pub fn validate(
    spec: CounterfactualSpec,
    params: &[Parameter],
    features: &[Feature],
    simplex_groups: &[(String, Vec<usize>)],
    fail: &dyn Fn(String, String, String) -> SpaceError,
) -> Result<Counterfactual, SpaceError> {
    let at = |k: &str| format!("counterfactual.{k}");
    let mut seen = HashSet::new();
    for (i, s) in spec.strategies.iter().enumerate() {
        let ok = !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ok {
            return Err(fail(
                at(&format!("strategies[{i}]")),
                format!("{s:?}"),
                "must be a name of letters, digits and '_'".into(),
            ));
        }
        if !seen.insert(s.clone()) {
            return Err(fail(at(&format!("strategies[{i}]")), format!("{s:?}"), "is declared twice".into()));
        }
    }
    if !(spec.explore_rate > 0.0 && spec.explore_rate < 1.0) {
        return Err(fail(at("explore_rate"), spec.explore_rate.to_string(), "must be in (0, 1)".into()));
    }
    if !(spec.alpha > 0.0 && spec.alpha < 1.0) {
        return Err(fail(at("alpha"), spec.alpha.to_string(), "must be in (0, 1)".into()));
    }
    if !(spec.margin.is_finite() && spec.margin >= 0.0) {
        return Err(fail(at("margin"), spec.margin.to_string(), "must be a finite number >= 0".into()));
    }
    if spec.refit_every == 0 {
        return Err(fail(at("refit_every"), "0".into(), "must be >= 1".into()));
    }

    let n = params.len();
    let mut roles = vec![Role::Opaque; n];
    let mut scopes = vec![Scope::Module; n];
    let mut declared = vec![false; n];
    let mut gate_score: Option<(ScoreSource, Option<String>, String)> = None;
    let mut weights: Option<WeightsGroup> = None;
    let mut exit_capital: Option<String> = None;
    let mut exit = ExitRoles { stop_loss: None, profit_target: None, capital: String::new() };

    for (r, role_spec) in spec.roles.into_iter().enumerate() {
        let field = |k: &str| format!("counterfactual.roles[{r}].{k}");
        let role = match role_spec.role.as_str() {
            "opaque" => Role::Opaque,
            "gate" => Role::Gate,
            "scale" => Role::Scale,
            "weights" => Role::Weights,
            "stop_loss" => Role::StopLoss,
            "profit_target" => Role::ProfitTarget,
            other => {
                return Err(fail(
                    field("role"),
                    format!("{other:?}"),
                    "must be gate, scale, weights, stop_loss, profit_target or opaque".into(),
                ))
            }
        };
        // The parameters this entry declares, and their member names.
        let members: Vec<(usize, &str)> = match (&role_spec.group, &role_spec.parameter) {
            (Some(g), None) => {
                let m: Vec<(usize, &str)> = params
                    .iter()
                    .enumerate()
                    .filter(|(_, p)| &p.group == g)
                    .map(|(i, p)| (i, p.name.as_str()))
                    .collect();
                if m.is_empty() {
                    return Err(fail(field("group"), format!("{g:?}"), "is not a group of this module".into()));
                }
                m
            }
            (None, Some(name)) => match params.iter().position(|p| &p.full_name == name) {
                Some(i) => vec![(i, params[i].name.as_str())],
                None => {
                    return Err(fail(
                        field("parameter"),
                        format!("{name:?}"),
                        "is not a parameter of this module".into(),
                    ))
                }
            },
            _ => {
                return Err(fail(
                    field("group"),
                    format!("{:?}/{:?}", role_spec.group, role_spec.parameter),
                    "give exactly one of `group` and `parameter`".into(),
                ))
            }
        };
        for &(p, _) in &members {
            if declared[p] {
                return Err(fail(field("role"), format!("{:?}", params[p].full_name), "has a role already".into()));
            }
            declared[p] = true;
            roles[p] = role;
        }

        // Scope.
        let scope = role_spec.scope.as_deref().unwrap_or("module");
        let owner = |member: &str| -> String {
            role_spec.members.as_ref().and_then(|m| m.get(member).cloned()).unwrap_or_else(|| member.to_string())
        };
        if let Some(map) = &role_spec.members {
            for key in map.keys() {
                if !members.iter().any(|(_, m)| m == key) {
                    return Err(fail(field("members"), format!("{key:?}"), "is not a member of this entry".into()));
                }
            }
            if scope == "module" {
                return Err(fail(
                    field("members"),
                    format!("{map:?}"),
                    "needs scope \"session\" or \"strategy\"".into(),
                ));
            }
        }
        for &(p, member) in &members {
            let who = owner(member);
            scopes[p] = match scope {
                "module" => Scope::Module,
                "session" => match who.parse::<Session>() {
                    Ok(s) => Scope::Session(s),
                    Err(_) => {
                        return Err(fail(
                            field("members"),
                            format!("{member:?} -> {who:?}"),
                            "is not a session (asia_prime, europe_prime, us_prime)".into(),
                        ))
                    }
                },
                "strategy" => match seen.contains(&who) {
                    true => Scope::Strategy(spec.strategies.iter().position(|s| *s == who).expect("seen")),
                    false => {
                        return Err(fail(
                            field("members"),
                            format!("{member:?} -> {who:?}"),
                            "is not one of counterfactual.strategies".into(),
                        ))
                    }
                },
                other => {
                    return Err(fail(
                        field("scope"),
                        format!("{other:?}"),
                        "must be module, session or strategy".into(),
                    ))
                }
            };
        }
        // The joint evaluation needs one gate and one scale per decision: a
        // module-wide group of several would make the trade's gate ambiguous.
        if matches!(role, Role::Gate | Role::Scale) && scope == "module" && members.len() > 1 {
            return Err(fail(
                field("scope"),
                "\"module\"".into(),
                format!("a {} group of {} members needs scope session or strategy", role.as_str(), members.len()),
            ));
        }

        let integer = members.iter().find(|(p, _)| params[*p].kind == super::ParamKind::Integer);
        if let (Some(&(p, _)), true) = (integer, role.determined()) {
            return Err(fail(
                field("role"),
                format!("{:?}", params[p].full_name),
                "an integer parameter is rounded by the module; declare it opaque".into(),
            ));
        }

        match role {
            Role::Gate => {
                let score = match role_spec.score.as_deref() {
                    Some("confidence") => (ScoreSource::Confidence, None),
                    Some(name) => (ScoreSource::Weights, Some(name.to_string())),
                    None => {
                        return Err(fail(
                            field("score"),
                            "none".into(),
                            "a gate needs \"confidence\" or a weights group".into(),
                        ))
                    }
                };
                match &gate_score {
                    Some((s, w, _)) if (*s, w.clone()) != score => {
                        return Err(fail(
                            field("score"),
                            format!("{:?}", role_spec.score),
                            "every gate must share one score".into(),
                        ))
                    }
                    _ => gate_score = Some((score.0, score.1, field("score"))),
                }
            }
            Role::Weights => {
                if weights.is_some() {
                    return Err(fail(
                        field("group"),
                        format!("{:?}", role_spec.group),
                        "only one weights group is supported".into(),
                    ));
                }
                let Some(group) = &role_spec.group else {
                    return Err(fail(
                        field("parameter"),
                        format!("{:?}", role_spec.parameter),
                        "weights are a whole group".into(),
                    ));
                };
                if !simplex_groups.iter().any(|(g, _)| g == group) {
                    return Err(fail(
                        field("group"),
                        format!("{group:?}"),
                        "a weights group must be a simplex group".into(),
                    ));
                }
                if scope != "module" {
                    return Err(fail(
                        field("scope"),
                        format!("{scope:?}"),
                        "weights are shared by the whole module".into(),
                    ));
                }
                let map = role_spec.features.clone().unwrap_or_default();
                let mut fs = Vec::new();
                for &(_, member) in &members {
                    let Some(f) = map.get(member) else {
                        return Err(fail(
                            field("features"),
                            format!("{member:?}"),
                            "every weight needs its feature".into(),
                        ));
                    };
                    match features.iter().position(|x| &x.name == f) {
                        Some(i) => fs.push(i),
                        None => {
                            return Err(fail(field("features"), format!("{f:?}"), "is not a declared feature".into()))
                        }
                    }
                }
                weights = Some(WeightsGroup {
                    name: group.clone(),
                    members: members.iter().map(|m| m.0).collect(),
                    features: fs,
                });
            }
            Role::StopLoss | Role::ProfitTarget => {
                if members.len() != 1 || scope != "module" {
                    return Err(fail(
                        field("role"),
                        role.as_str().into(),
                        "an exit is one module-wide parameter".into(),
                    ));
                }
                let slot = if role == Role::StopLoss { &mut exit.stop_loss } else { &mut exit.profit_target };
                if slot.is_some() {
                    return Err(fail(field("role"), role.as_str().into(), "is declared twice".into()));
                }
                *slot = Some(members[0].0);
                let Some(cap) = role_spec.capital.clone() else {
                    return Err(fail(
                        field("capital"),
                        "none".into(),
                        "an exit needs the evidence.applied key of the capital".into(),
                    ));
                };
                match &exit_capital {
                    Some(c) if *c != cap => {
                        return Err(fail(field("capital"), format!("{cap:?}"), format!("the other exit says {c:?}")))
                    }
                    _ => exit_capital = Some(cap),
                }
            }
            Role::Scale | Role::Opaque => {}
        }
        if role != Role::Gate && role_spec.score.is_some() {
            return Err(fail(field("score"), format!("{:?}", role_spec.score), "only a gate has a score".into()));
        }
        if role != Role::Weights && role_spec.features.is_some() {
            return Err(fail(field("features"), "{..}".into(), "only a weights group has features".into()));
        }
    }

    let score = match gate_score {
        None => None,
        Some((ScoreSource::Confidence, _, _)) => Some(ScoreSource::Confidence),
        Some((ScoreSource::Weights, name, field)) => match (&weights, name) {
            (Some(w), Some(n)) if w.name == n => Some(ScoreSource::Weights),
            (_, n) => return Err(fail(field, format!("{n:?}"), "is not the module's weights group".into())),
        },
    };
    let gates: Vec<usize> = (0..n).filter(|&p| roles[p] == Role::Gate).collect();
    let scales: Vec<usize> = (0..n).filter(|&p| roles[p] == Role::Scale).collect();
    // One scale per slot: two module-wide scale parameters would multiply.
    if scales.iter().filter(|&&p| scopes[p] == Scope::Module).count() > 1 {
        return Err(fail(at("roles"), "scale".into(), "at most one module-wide scale parameter".into()));
    }
    if weights.is_some() && score != Some(ScoreSource::Weights) {
        return Err(fail(at("roles"), "weights".into(), "a weights group needs a gate that scores with it".into()));
    }
    let exit = exit_capital.map(|capital| ExitRoles { capital, ..exit });
    Ok(Counterfactual {
        strategies: spec.strategies,
        roles,
        scopes,
        gates,
        score,
        scales,
        weights,
        exit,
        explore_rate: spec.explore_rate,
        alpha: spec.alpha,
        margin: spec.margin,
        refit_every: spec.refit_every,
    })
}
