//! One trade in the plan's enhanced schema, as the module sent it.
//!
//! The trade record is the module's own document. The plan's fields are
//! typed ([`TradeRecord`]'s named fields); every other field the module sent,
//! at any depth and of any JSON type, is kept verbatim in
//! [`TradeRecord::module_fields`] as its original JSON text, so a big integer
//! or a deep array comes back byte for byte. In JSON (the local store's lines,
//! answers) the record is one flat object again: the plan's fields beside the
//! module's own, exactly as sent plus what the server filled in.
//!
//! Firestore cannot hold every JSON value natively (no arrays of arrays, no
//! integers past 64 bits), so its backend keeps the module's fields as one
//! JSON string beside the typed ones ([`FirestoreTrade`]).

use std::collections::BTreeMap;

use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::agent::{Decision, Settled};
use crate::space::ModuleSpace;

/// A free-form JSON object, as the plan's nested trade fields are.
pub type Object = Map<String, Value>;

/// The plan's trade fields, typed; [`TradeRecord::fill_from_decision`] adds
/// the parameter context (`entry_parameters`, `module_specific_params`,
/// `market_context`) from the decision that produced it. Fields the module did
/// not send stay absent.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TradeRecord {
    pub module_name: String,
    /// The decision this trade followed, when there was one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision_id: Option<String>,
    /// Seconds since the Unix epoch; listings order by it.
    pub created_at: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub symbol: Option<String>,
    /// `BUY` or `SELL`, in any case.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub side: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quantity: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub price: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub strategy: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub confidence: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profit_loss: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_reason: Option<String>,
    /// The trade's return as a fraction; the reward is derived from it when none is given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub return_pct: Option<f64>,
    /// The reward paramopt learned from, after derivation and clipping.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reward: Option<f64>,
    #[serde(skip_serializing_if = "Map::is_empty")]
    pub entry_parameters: Object,
    #[serde(skip_serializing_if = "Map::is_empty")]
    pub module_specific_params: Object,
    #[serde(skip_serializing_if = "Map::is_empty")]
    pub exit_analysis: Object,
    #[serde(skip_serializing_if = "Map::is_empty")]
    pub market_context: Object,
    #[serde(skip_serializing_if = "Map::is_empty")]
    pub parameter_performance: Object,
    /// Every field the plan does not name, as the module sent it. Never a
    /// reason to refuse a trade; a key that collides with a plan field cannot
    /// occur (the plan's field takes it).
    #[serde(skip)]
    pub module_fields: ModuleFields,
}

/// The names of [`TradeRecord`]'s typed fields, as they appear in JSON.
pub const PLAN_FIELDS: [&str; 18] = [
    "module_name",
    "decision_id",
    "created_at",
    "symbol",
    "side",
    "quantity",
    "price",
    "strategy",
    "confidence",
    "profit_loss",
    "exit_reason",
    "return_pct",
    "reward",
    "entry_parameters",
    "module_specific_params",
    "exit_analysis",
    "market_context",
    "parameter_performance",
];

/// A module's own trade fields, each kept as the JSON text it arrived as.
#[derive(Debug, Clone, Default)]
pub struct ModuleFields(pub BTreeMap<String, Box<RawValue>>);

impl PartialEq for ModuleFields {
    fn eq(&self, other: &Self) -> bool {
        self.0.len() == other.0.len()
            && self.0.iter().zip(&other.0).all(|((a, x), (b, y))| a == b && x.get() == y.get())
    }
}

impl ModuleFields {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    /// The field's JSON text as it was sent.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(|v| v.get())
    }
}

/// Why a stored or sent trade could not be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TradeError {
    /// A plan field of the wrong type; `field` is its path (`quantity`,
    /// `exit_analysis.path`), `got` the value sent, shortened.
    #[error("trade.{field}: {expected}, got {got}")]
    WrongType { field: String, expected: String, got: String },
    /// A plan field of the right type with a value the plan does not allow.
    #[error("trade.{field} {reason}, got {got}")]
    Invalid { field: &'static str, reason: &'static str, got: String },
    /// Past a limit that keeps one trade from costing the server much.
    #[error("trade {what} {found}, over the limit of {limit}")]
    TooBig { what: &'static str, found: usize, limit: usize },
    /// A number that is not a finite f64 (`1e309`): malformed, as anywhere in a body.
    #[error("trade.{field}: number {number} is out of range (not a finite number)")]
    NumberOutOfRange { field: String, number: String },
    #[error("trade: {0}")]
    Json(String),
}

/// The first number in `text` too large for an f64, for the error message.
fn infinite_number(text: &str) -> String {
    text.split(|c: char| !(c.is_ascii_digit() || matches!(c, '-' | '+' | '.' | 'e' | 'E')))
        .find(|t| t.parse::<f64>().is_ok_and(f64::is_infinite))
        .map_or_else(|| "?".to_string(), shorten)
}

/// How deeply a trade may nest objects and arrays, and how many values
/// (object members and array elements, at every depth) it may hold.
pub const MAX_TRADE_DEPTH: usize = 32;
pub const MAX_TRADE_VALUES: usize = 2_000;

/// Depth and count of the values below `v` (a scalar is depth 0).
fn depth_and_count(v: &Value) -> (usize, usize) {
    match v {
        Value::Array(items) => items.iter().fold((1, items.len()), |(d, n), x| {
            let (xd, xn) = depth_and_count(x);
            (d.max(xd + 1), n + xn)
        }),
        Value::Object(m) => m.values().fold((1, m.len()), |(d, n), x| {
            let (xd, xn) = depth_and_count(x);
            (d.max(xd + 1), n + xn)
        }),
        _ => (0, 0),
    }
}

impl TradeRecord {
    /// Splits a trade object sent as JSON into the plan's typed fields and the
    /// module's own. A plan field of the wrong type is an error naming it and
    /// the value; nothing else is.
    pub fn from_fields(fields: BTreeMap<String, Box<RawValue>>) -> Result<TradeRecord, TradeError> {
        let mut plan = Map::new();
        let mut module = BTreeMap::new();
        let (mut depth, mut count) = (1, fields.len());
        for (name, raw) in fields {
            let value: Value = serde_json::from_str(raw.get()).map_err(|e| {
                if e.to_string().starts_with("number out of range") {
                    TradeError::NumberOutOfRange { field: name.clone(), number: infinite_number(raw.get()) }
                } else if e.to_string().starts_with("recursion limit exceeded") {
                    TradeError::Json(format!(
                        "{name} nests objects and arrays deeper than 128 levels, over the limit of {MAX_TRADE_DEPTH}"
                    ))
                } else {
                    TradeError::Json(e.to_string())
                }
            })?;
            let (d, n) = depth_and_count(&value);
            (depth, count) = (depth.max(d + 1), count + n);
            if PLAN_FIELDS.contains(&name.as_str()) {
                if !value.is_null() {
                    plan.insert(name, value);
                }
            } else {
                module.insert(name, one_line(raw));
            }
        }
        if depth > MAX_TRADE_DEPTH {
            return Err(TradeError::TooBig { what: "nests objects and arrays", found: depth, limit: MAX_TRADE_DEPTH });
        }
        if count > MAX_TRADE_VALUES {
            return Err(TradeError::TooBig { what: "holds values", found: count, limit: MAX_TRADE_VALUES });
        }
        let plan = Value::Object(plan);
        let mut record: TradeRecord = serde_path_to_error::deserialize(&plan).map_err(|e| {
            let field = e.path().to_string();
            let got = field_value(&plan, &field).map_or_else(|| "?".to_string(), |v| shorten(&v.to_string()));
            let expected = e.into_inner().to_string();
            // serde says "invalid type: string \"x\", expected f64": keep what it expected.
            let expected = expected.rsplit_once("expected ").map_or(expected.clone(), |(_, x)| format!("expected {x}"));
            TradeError::WrongType { field, expected, got }
        })?;
        record.module_fields = ModuleFields(module);
        Ok(record)
    }

    /// Checks what the types cannot: finite numbers, signs, vocabularies, and
    /// that `exit_analysis.path` (the position's return at each check, which
    /// counterfactual credit reads) is a list of finite numbers.
    pub fn check(&self) -> Result<(), TradeError> {
        let bad = |field, reason, got: String| Err(TradeError::Invalid { field, reason, got: shorten(&got) });
        for (field, v) in [
            ("quantity", self.quantity),
            ("price", self.price),
            ("confidence", self.confidence),
            ("profit_loss", self.profit_loss),
            ("return_pct", self.return_pct),
        ] {
            if let Some(x) = v.filter(|x| !x.is_finite()) {
                return bad(field, "is not a finite number", x.to_string());
            }
        }
        if let Some(q) = self.quantity.filter(|q| *q < 0.0) {
            return bad("quantity", "must not be negative", q.to_string());
        }
        if let Some(p) = self.price.filter(|p| *p < 0.0) {
            return bad("price", "must not be negative", p.to_string());
        }
        if let Some(c) = self.confidence.filter(|c| !(0.0..=1.0).contains(c)) {
            return bad("confidence", "must be within [0, 1]", c.to_string());
        }
        if let Some(side) =
            self.side.as_ref().filter(|s| !s.eq_ignore_ascii_case("buy") && !s.eq_ignore_ascii_case("sell"))
        {
            return bad("side", "must be BUY or SELL", format!("{side:?}"));
        }
        if let Some(symbol) = self.symbol.as_ref().filter(|s| s.trim().is_empty()) {
            return bad("symbol", "must not be empty", format!("{symbol:?}"));
        }
        if let Some(path) = self.exit_analysis.get("path") {
            let numbers = path.as_array().is_some_and(|xs| xs.iter().all(|x| x.as_f64().is_some_and(f64::is_finite)));
            if !numbers {
                return bad(
                    "exit_analysis.path",
                    "must be a list of finite numbers (the return at each check)",
                    path.to_string(),
                );
            }
        }
        Ok(())
    }

    /// `exit_analysis.path`: the position's return at each check, in order; empty when not sent.
    pub fn exit_path(&self) -> Vec<f64> {
        self.exit_analysis
            .get("path")
            .and_then(Value::as_array)
            .map_or_else(Vec::new, |xs| xs.iter().filter_map(Value::as_f64).collect())
    }

    /// Everything the server adds to a trade its module sent, once its
    /// outcome is accepted: the decision's parameter context, the reward
    /// learned, what the alternatives would have earned, and the time.
    pub fn complete(&mut self, space: &ModuleSpace, settled: &Settled) {
        self.fill_from_decision(&settled.decision, space);
        self.reward = Some(settled.reward);
        self.fill_alternatives(space, &settled.decision, &settled.outcome);
        self.created_at = settled.settled_at;
    }

    /// Fills the parameter context from `decision`: every parameter's value
    /// (`entry_parameters`), the features sent (`module_specific_params`), and
    /// the context, generation, exploration flag and propensity
    /// (`market_context`). The decision's values win over the module's keys of
    /// the same name: they are what was actually served.
    pub fn fill_from_decision(&mut self, decision: &Decision, space: &ModuleSpace) {
        self.module_name = decision.module.clone();
        self.decision_id = Some(decision.id.to_string());
        for (p, v) in space.params.iter().zip(&decision.values) {
            self.entry_parameters.insert(p.full_name.clone(), Value::from(*v));
        }
        for (f, v) in space.features.iter().zip(&decision.features) {
            if let Some(v) = v {
                self.module_specific_params.insert(f.name.clone(), Value::from(*v));
            }
        }
        let c = &mut self.market_context;
        c.insert("session".into(), decision.context.session.as_str().into());
        c.insert("regime".into(), decision.context.regime.as_str().into());
        c.insert("policy_generation".into(), decision.generation.into());
        c.insert("explore".into(), decision.explore.into());
        c.insert("propensity".into(), Value::from(decision.propensity));
    }
}

/// `raw` with any line breaks turned into spaces. In valid JSON a line break
/// can only be white space (inside a string it must be escaped), so the value
/// is unchanged; the local store keeps one trade per line.
fn one_line(raw: Box<RawValue>) -> Box<RawValue> {
    if !raw.get().contains(['\n', '\r']) {
        return raw;
    }
    RawValue::from_string(raw.get().replace(['\n', '\r'], " ")).unwrap_or(raw)
}

impl TradeRecord {
    /// `parameter_performance.alternative_outcomes`: per parameter the
    /// outcome determines, what each of its arms would have done (traded or
    /// skipped, and its return where known). The server's entries replace a
    /// module's of the same parameter name; the module's others stay.
    pub fn fill_alternatives(&mut self, space: &ModuleSpace, decision: &Decision, outcome: &crate::agent::Outcome) {
        let Ok(alternatives) = crate::agent::alternatives(space, decision, outcome) else { return };
        if alternatives.is_empty() {
            return;
        }
        let entry =
            self.parameter_performance.entry("alternative_outcomes").or_insert_with(|| Value::Object(Map::new()));
        if !entry.is_object() {
            // The module's own value of another shape is kept beside ours.
            let theirs = std::mem::replace(entry, Value::Object(Map::new()));
            entry.as_object_mut().map(|m| m.insert("module".into(), theirs));
        }
        let Some(map) = entry.as_object_mut() else { return };
        for a in alternatives {
            let arms: Vec<Value> = a
                .arms
                .iter()
                .map(|arm| {
                    let mut row = Map::new();
                    row.insert("value".into(), Value::from(arm.value));
                    row.insert("outcome".into(), Value::from(arm.label()));
                    if let Some(r) = arm.reward {
                        row.insert("return".into(), Value::from(r));
                    }
                    Value::Object(row)
                })
                .collect();
            map.insert(a.parameter, Value::Array(arms));
        }
    }
}

/// The value at a serde path such as `exit_analysis.path[2]`, for error messages.
fn field_value<'a>(root: &'a Value, path: &str) -> Option<&'a Value> {
    let mut v = root;
    for part in path.split('.') {
        let (key, index) = match part.split_once('[') {
            Some((k, rest)) => (k, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (part, None),
        };
        if !key.is_empty() {
            v = v.get(key)?;
        }
        if let Some(i) = index {
            v = v.get(i)?;
        }
    }
    Some(v)
}

/// At most 60 characters of `text`, so an error never echoes a huge value.
pub fn shorten(text: &str) -> String {
    const MAX: usize = 60;
    if text.chars().count() <= MAX {
        return text.to_string();
    }
    let head: String = text.chars().take(MAX).collect();
    format!("{head}… ({} bytes)", text.len())
}

/// The flat JSON form: the plan's fields, then the module's own as sent.
impl TradeRecord {
    pub fn flat(&self) -> FlatTrade<'_> {
        FlatTrade(self)
    }
}

/// [`TradeRecord`] as one flat JSON object (see the module docs).
pub struct FlatTrade<'a>(pub &'a TradeRecord);

impl Serialize for FlatTrade<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let typed = serde_json::to_value(self.0).map_err(serde::ser::Error::custom)?;
        let typed = typed.as_object().cloned().unwrap_or_default();
        let mut map = s.serialize_map(Some(typed.len() + self.0.module_fields.len()))?;
        for (k, v) in &typed {
            map.serialize_entry(k, v)?;
        }
        for (k, v) in &self.0.module_fields.0 {
            if !typed.contains_key(k) {
                map.serialize_entry(k, v)?;
            }
        }
        map.end()
    }
}

/// Reads the flat JSON form back; the local store's lines are this.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredTrade(pub TradeRecord);

impl Serialize for StoredTrade {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        FlatTrade(&self.0).serialize(s)
    }
}

impl<'de> Deserialize<'de> for StoredTrade {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let fields = BTreeMap::<String, Box<RawValue>>::deserialize(d)?;
        TradeRecord::from_fields(fields).map(StoredTrade).map_err(serde::de::Error::custom)
    }
}

/// A trade as a Firestore document: the typed fields natively (so listings
/// can filter and order on them), the module's own as one JSON string.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FirestoreTrade {
    #[serde(flatten)]
    pub trade: TradeRecord,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module_fields_json: Option<String>,
}

impl FirestoreTrade {
    pub fn new(trade: &TradeRecord) -> Result<FirestoreTrade, serde_json::Error> {
        let module_fields_json =
            if trade.module_fields.is_empty() { None } else { Some(serde_json::to_string(&trade.module_fields.0)?) };
        Ok(FirestoreTrade { trade: trade.clone(), module_fields_json })
    }

    pub fn into_trade(self) -> Result<TradeRecord, serde_json::Error> {
        let mut trade = self.trade;
        if let Some(json) = self.module_fields_json {
            trade.module_fields = ModuleFields(serde_json::from_str(&json)?);
        }
        Ok(trade)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<TradeRecord, TradeError> {
        TradeRecord::from_fields(serde_json::from_str(json).unwrap())
    }

    #[test]
    fn plan_fields_lists_every_typed_field() {
        let mut full = TradeRecord {
            decision_id: Some("d".into()),
            symbol: Some("s".into()),
            side: Some("BUY".into()),
            quantity: Some(1.0),
            price: Some(1.0),
            strategy: Some("x".into()),
            confidence: Some(0.5),
            profit_loss: Some(1.0),
            exit_reason: Some("e".into()),
            return_pct: Some(0.1),
            reward: Some(0.1),
            ..Default::default()
        };
        for m in [
            &mut full.entry_parameters,
            &mut full.module_specific_params,
            &mut full.exit_analysis,
            &mut full.market_context,
            &mut full.parameter_performance,
        ] {
            m.insert("k".into(), Value::Bool(true));
        }
        let json = serde_json::to_value(&full).unwrap();
        let mut keys: Vec<&str> = json.as_object().unwrap().keys().map(String::as_str).collect();
        let mut listed = PLAN_FIELDS.to_vec();
        keys.sort_unstable();
        listed.sort_unstable();
        assert_eq!(keys, listed);
    }

    #[test]
    fn module_fields_round_trip_byte_for_byte() {
        let sent = r#"{"symbol":"BTCUSD","threshold":0.6,"big":123456789012345678901234567890,
            "nested":{"a":[[1,2],[3,[4,null]]],"b":{"c":true}},"nothing":null,"flag":false,
            "text":"é\u00e9","neg":-0.0,"huge":1.7976931348623157e308,"tiny":5e-324,"empty":{},"list":[]}"#;
        let t = parse(sent).unwrap();
        assert_eq!(t.symbol.as_deref(), Some("BTCUSD"));
        assert_eq!(t.module_fields.len(), 11);
        assert_eq!(t.module_fields.get("big"), Some("123456789012345678901234567890"));
        assert_eq!(t.module_fields.get("neg"), Some("-0.0"));
        let line = serde_json::to_string(&t.flat()).unwrap();
        let back: StoredTrade = serde_json::from_str(&line).unwrap();
        assert_eq!(back.0, t);
        assert!(line.contains(r#""big":123456789012345678901234567890"#), "{line}");
        let doc = FirestoreTrade::new(&t).unwrap();
        assert_eq!(doc.into_trade().unwrap(), t);
    }

    #[test]
    fn a_pretty_printed_field_is_stored_on_one_line_with_its_value_unchanged() {
        let t = parse("{\"orders\": [\n  {\"id\": 1,\r\n   \"note\": \"a\\nb\"}\n]}").unwrap();
        let line = serde_json::to_string(&t.flat()).unwrap();
        assert!(!line.contains('\n') && !line.contains('\r'), "{line}");
        let back: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(back["orders"], serde_json::json!([{"id": 1, "note": "a\nb"}]));
    }

    #[test]
    fn absent_fields_stay_absent() {
        let t = parse(r#"{"return_pct": 0.01}"#).unwrap();
        let json = serde_json::to_value(t.flat()).unwrap();
        assert_eq!(json.as_object().unwrap().len(), 3, "{json}"); // module_name, created_at, return_pct
        assert!(json.get("symbol").is_none() && json.get("side").is_none());
    }

    #[test]
    fn depth_and_size_are_bounded() {
        let deep = format!("{{\"x\": {}1{}}}", "[".repeat(MAX_TRADE_DEPTH), "]".repeat(MAX_TRADE_DEPTH));
        let e = parse(&deep).unwrap_err();
        assert_eq!(
            e,
            TradeError::TooBig { what: "nests objects and arrays", found: MAX_TRADE_DEPTH + 1, limit: MAX_TRADE_DEPTH }
        );
        let ok = format!("{{\"x\": {}1{}}}", "[".repeat(MAX_TRADE_DEPTH - 2), "]".repeat(MAX_TRADE_DEPTH - 2));
        parse(&ok).unwrap();
        let wide = format!("{{\"x\": [{}]}}", vec!["0"; MAX_TRADE_VALUES].join(","));
        assert!(matches!(parse(&wide), Err(TradeError::TooBig { what: "holds values", .. })));
    }

    #[test]
    fn check_refuses_bad_plan_values_by_name() {
        let e = parse(r#"{"confidence": 1.5}"#).unwrap().check().unwrap_err();
        assert_eq!(e.to_string(), "trade.confidence must be within [0, 1], got 1.5");
        let e = parse(r#"{"exit_analysis": {"path": [0.1, "x"]}}"#).unwrap().check().unwrap_err();
        assert!(e.to_string().starts_with("trade.exit_analysis.path must be a list of finite numbers"), "{e}");
        let t = parse(r#"{"exit_analysis": {"path": [0.01, -0.02, 0.03], "hold_duration_hours": 4}}"#).unwrap();
        t.check().unwrap();
        assert_eq!(t.exit_path(), vec![0.01, -0.02, 0.03]);
    }

    #[test]
    fn a_plan_field_of_the_wrong_type_names_the_field_and_the_value() {
        let e = parse(r#"{"quantity": "lots"}"#).unwrap_err();
        assert_eq!(e.to_string(), r#"trade.quantity: expected f64, got "lots""#);
        let e = parse(r#"{"exit_analysis": [1]}"#).unwrap_err();
        assert!(e.to_string().starts_with("trade.exit_analysis: expected a map, got [1]"), "{e}");
        let long = format!(r#"{{"symbol": [{}]}}"#, vec!["1"; 500].join(","));
        let e = parse(&long).unwrap_err().to_string();
        assert!(e.len() < 160 && e.contains("bytes)"), "{e}");
    }
}
