//! The OpenAPI 3.1 document of the HTTP contract, built from the wire types.
//!
//! Every schema comes from a Rust type the service really sends or reads
//! (`schemars::JsonSchema`, derived in `wire.rs` and beside the types it
//! uses, hand-written where the serde is): request bodies are described as
//! they are deserialised, answers as they are serialised. The paths are
//! listed once, in [`OPERATIONS`], with every status docs/api.md gives them;
//! the service tests hold the table to the router (every route is in it) and
//! validate every answer they get against the schema of its path, method and
//! status. `GET /v1/openapi.json` serves the document, and `paramopt openapi`
//! prints it (docs/openapi.json is that output, checked by a test).

use std::sync::OnceLock;

use bytes::Bytes;
use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, SchemaGenerator};
use serde_json::{json, Map, Value};

use super::error::ErrorBody;
use super::wire;
use crate::service::store::CheckpointSummary;

/// Where a parameter of an operation is read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum In {
    Path,
    Query,
    Header,
}

impl In {
    fn as_str(self) -> &'static str {
        match self {
            In::Path => "path",
            In::Query => "query",
            In::Header => "header",
        }
    }
}

/// One path, query or header parameter.
#[derive(Clone, Copy)]
pub struct Param {
    pub name: &'static str,
    pub location: In,
    pub required: bool,
    pub description: &'static str,
    /// Its values' schema: a string, or the type the handler resolves it to.
    pub schema: fn(&mut SchemaGenerator) -> Value,
}

/// What a successful (200) answer holds.
#[derive(Clone, Copy)]
pub enum Answer {
    /// A JSON body whose schema the function adds to the generator.
    Json(fn(&mut SchemaGenerator) -> Value),
    /// A body of another media type (a page, a script, the metrics text).
    Text(&'static str),
}

/// One operation of the contract: a method on a path.
#[derive(Clone, Copy)]
pub struct Operation {
    /// Upper case, as in docs/api.md.
    pub method: &'static str,
    /// The router's path, `{name}` for a path parameter (OpenAPI's syntax too).
    pub path: &'static str,
    pub summary: &'static str,
    pub params: &'static [Param],
    /// The JSON request body's schema, when the operation reads one.
    pub body: Option<fn(&mut SchemaGenerator) -> Value>,
    pub answer: Answer,
    /// The error statuses it may answer besides the ones every route may
    /// (408 and 500, and 401 on `/v1`). Their body is always [`ErrorBody`].
    pub errors: &'static [u16],
}

impl Operation {
    /// Every status this operation may answer, 200 first.
    pub fn statuses(&self) -> Vec<u16> {
        let mut statuses = vec![200];
        if self.path.starts_with("/v1/") {
            statuses.push(401);
        }
        if self.body.is_some() {
            // A body that is not JSON, too large, of another media type, or of the wrong shape.
            statuses.extend([400, 413, 415, 422]);
        }
        statuses.extend(self.errors);
        statuses.extend([408, 500]);
        statuses.sort_unstable();
        statuses.dedup();
        statuses
    }
}

fn schema<T: JsonSchema + ?Sized>(generator: &mut SchemaGenerator) -> Value {
    generator.subschema_for::<T>().to_value()
}

/// `GET /v1/checkpoints/{module}/{generation}` answers the store's readable
/// JSON of the checkpoint (`store::checkpoint`), which the store hands on as
/// a `serde_json::Value`: an object whose members depend on the format version.
fn checkpoint_document(_: &mut SchemaGenerator) -> Value {
    json!({
        "type": "object",
        "description": "One whole checkpoint in readable JSON (its format is versioned by the store).",
        "additionalProperties": true
    })
}

/// The document itself is an object; its own schema is OpenAPI 3.1's.
fn openapi_document(_: &mut SchemaGenerator) -> Value {
    json!({"type": "object", "required": ["openapi", "info", "paths"], "additionalProperties": true})
}

const MODULE: Param = Param {
    name: "module",
    location: In::Path,
    required: true,
    description: "A module of the models files (`crypto`, `options`, `stocks` as shipped).",
    schema: schema::<String>,
};
const SESSION: Param = Param {
    name: "session",
    location: In::Query,
    required: true,
    description: "The context's session.",
    schema: schema::<crate::space::Session>,
};
const REGIME: Param = Param {
    name: "regime",
    location: In::Query,
    required: true,
    description: "The context's regime.",
    schema: schema::<crate::space::Regime>,
};
const POINTS: Param = Param {
    name: "points",
    location: In::Query,
    required: false,
    description: "About how many generations to show, from 2 to 5000 (400).",
    schema: schema::<String>,
};

/// Every operation the router serves: the service tests check this table
/// against the router's routes, so a route cannot be missing from it.
pub const OPERATIONS: &[Operation] = &[
    Operation {
        method: "POST",
        path: "/v1/decisions",
        summary: "A value for every parameter of a module in a context.",
        params: &[],
        body: Some(schema::<wire::DecisionRequest>),
        answer: Answer::Json(schema::<wire::DecisionResponse<'static>>),
        errors: &[429, 503],
    },
    Operation {
        method: "POST",
        path: "/v1/outcomes",
        summary: "A decision's outcome; durable once answered 200.",
        params: &[],
        body: Some(schema::<wire::OutcomeRequest>),
        answer: Answer::Json(schema::<wire::OutcomeResponse>),
        errors: &[404, 409, 503],
    },
    Operation {
        method: "GET",
        path: "/v1/parameters/{module}",
        summary: "The greedy (incumbent) values in a context.",
        params: &[MODULE, SESSION, REGIME],
        body: None,
        answer: Answer::Json(schema::<wire::ParametersResponse<'static>>),
        errors: &[422],
    },
    Operation {
        method: "GET",
        path: "/v1/modules",
        summary: "The modules and their parameter spaces.",
        params: &[],
        body: None,
        answer: Answer::Json(schema::<wire::ModulesResponse<'static>>),
        errors: &[],
    },
    Operation {
        method: "GET",
        path: "/v1/checkpoints",
        summary: "A module's stored generations, newest first, a page at a time.",
        params: &[
            Param { location: In::Query, ..MODULE },
            Param {
                name: "limit",
                location: In::Query,
                required: false,
                description: "Generations per page, 1 to 1000 (100 by default).",
                schema: schema::<u32>,
            },
            Param {
                name: "before",
                location: In::Query,
                required: false,
                description: "Only generations older than this: the previous page's `next_before`.",
                schema: schema::<u64>,
            },
        ],
        body: None,
        answer: Answer::Json(schema::<wire::CheckpointList>),
        errors: &[422, 503],
    },
    Operation {
        method: "GET",
        path: "/v1/checkpoints/{module}/{generation}",
        summary: "One whole checkpoint in readable JSON.",
        params: &[
            MODULE,
            Param {
                name: "generation",
                location: In::Path,
                required: true,
                description: "A generation number (a non-negative integer).",
                schema: schema::<String>,
            },
        ],
        body: None,
        answer: Answer::Json(checkpoint_document),
        errors: &[404, 422, 503],
    },
    Operation {
        method: "POST",
        path: "/v1/checkpoints/{module}",
        summary: "Checkpoints now; a body, if any, is ignored.",
        params: &[MODULE],
        body: None,
        answer: Answer::Json(schema::<CheckpointSummary>),
        errors: &[422, 503],
    },
    Operation {
        method: "POST",
        path: "/v1/rollback",
        summary: "A new generation equal to a stored one or to the defaults (`Idempotency-Key` makes a retry safe).",
        params: &[Param {
            name: "Idempotency-Key",
            location: In::Header,
            required: false,
            description: "1 to 200 printable ASCII characters: a retry with the same key gets the first answer \
                          and makes no second generation.",
            schema: schema::<String>,
        }],
        body: Some(schema::<wire::RollbackRequest>),
        answer: Answer::Json(schema::<wire::RollbackResponse>),
        errors: &[404, 503],
    },
    Operation {
        method: "POST",
        path: "/v1/ab-tests",
        summary: "Starts an A/B test of a challenger against the live policy.",
        params: &[],
        body: Some(schema::<wire::AbTestRequest>),
        answer: Answer::Json(schema::<wire::AbTestStarted>),
        errors: &[404, 409, 503],
    },
    Operation {
        method: "GET",
        path: "/v1/ab-tests/{module}",
        summary: "The running A/B test, and how the last one ended.",
        params: &[MODULE],
        body: None,
        answer: Answer::Json(schema::<wire::AbTestStatus>),
        errors: &[422],
    },
    Operation {
        method: "DELETE",
        path: "/v1/ab-tests/{module}",
        summary: "Ends the running A/B test without a verdict.",
        params: &[MODULE],
        body: None,
        answer: Answer::Json(schema::<wire::AbTestStopped>),
        errors: &[404, 422, 503],
    },
    Operation {
        method: "GET",
        path: "/v1/openapi.json",
        summary: "This document.",
        params: &[],
        body: None,
        answer: Answer::Json(openapi_document),
        errors: &[],
    },
    Operation {
        method: "GET",
        path: "/healthz",
        summary: "200 while every part works (with each module's safety state); 503 naming what died.",
        params: &[],
        body: None,
        answer: Answer::Json(schema::<wire::Health>),
        errors: &[503],
    },
    Operation {
        method: "GET",
        path: "/metrics",
        summary: "Counters and latencies in the Prometheus text format.",
        params: &[],
        body: None,
        answer: Answer::Text("text/plain"),
        errors: &[],
    },
    Operation {
        method: "GET",
        path: "/",
        summary: "The dashboard page.",
        params: &[],
        body: None,
        answer: Answer::Text("text/html"),
        errors: &[],
    },
    Operation {
        method: "GET",
        path: "/dashboard/app.js",
        summary: "The dashboard's script.",
        params: &[],
        body: None,
        answer: Answer::Text("text/javascript"),
        errors: &[],
    },
    Operation {
        method: "GET",
        path: "/dashboard/style.css",
        summary: "The dashboard's stylesheet.",
        params: &[],
        body: None,
        answer: Answer::Text("text/css"),
        errors: &[],
    },
    Operation {
        method: "GET",
        path: "/v1/dashboard/overview",
        summary: "Operations at a glance (docs/dashboard.md).",
        params: &[],
        body: None,
        answer: Answer::Json(schema::<super::dashboard::wire::DashboardOverview>),
        errors: &[422],
    },
    Operation {
        method: "GET",
        path: "/v1/dashboard/modules/{module}/grid",
        summary: "Every incumbent in every context.",
        params: &[MODULE],
        body: None,
        answer: Answer::Json(schema::<super::dashboard::wire::DashboardGrid>),
        errors: &[422],
    },
    Operation {
        method: "GET",
        path: "/v1/dashboard/modules/{module}/history",
        summary: "One parameter's incumbent over the generations.",
        params: &[
            MODULE,
            Param {
                name: "parameter",
                location: In::Query,
                required: true,
                description: "`group.name`.",
                schema: schema::<String>,
            },
            SESSION,
            REGIME,
            POINTS,
        ],
        body: None,
        answer: Answer::Json(schema::<super::dashboard::wire::DashboardHistory>),
        errors: &[422, 503],
    },
    Operation {
        method: "GET",
        path: "/v1/dashboard/modules/{module}/progress",
        summary: "Whether the module is learning: rewards per generation, the defaults' estimate, posteriors.",
        params: &[MODULE, POINTS],
        body: None,
        answer: Answer::Json(schema::<super::dashboard::wire::DashboardProgress>),
        errors: &[422, 503],
    },
    Operation {
        method: "GET",
        path: "/v1/dashboard/modules/{module}/effectiveness",
        summary: "The rows of `parameter_effectiveness`.",
        params: &[MODULE],
        body: None,
        answer: Answer::Json(schema::<super::dashboard::wire::DashboardEffectiveness>),
        errors: &[422, 503],
    },
    Operation {
        method: "GET",
        path: "/v1/dashboard/modules/{module}/moves",
        summary: "The moves made on evidence (promotions, replacements, change detected, budget spent), newest first.",
        params: &[
            MODULE,
            Param {
                name: "limit",
                location: In::Query,
                required: false,
                description: "Moves to show, 1 to 500; 50 unless given.",
                schema: schema::<u32>,
            },
        ],
        body: None,
        answer: Answer::Json(schema::<crate::service::dashboard::DashboardMoves>),
        errors: &[422, 503],
    },
];

fn settings() -> SchemaSettings {
    SchemaSettings::draft2020_12().with(|s| {
        s.definitions_path = "/components/schemas".into();
        s.meta_schema = None;
    })
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "The body is not JSON, or holds a number out of range.",
        401 => "A missing or wrong bearer token (only when the server has one).",
        404 => "An unknown decision, generation or A/B test.",
        408 => "The request took longer than `--request-timeout-secs`.",
        409 => "A duplicate outcome, or an A/B test while one runs.",
        413 => "The body is over the limit (`--body-limit-bytes`).",
        415 => "The body is not `application/json`.",
        422 => "Well-formed JSON (or a query or path) with a bad value; the message names it.",
        500 => "An internal error; the server's log has the details.",
        503 => "The store is unavailable, a part of the server died, or it is shutting down.",
        _ => "See docs/api.md.",
    }
}

/// The whole document, as a JSON value.
pub fn document() -> Value {
    // Requests are described as they are read and answers as they are
    // written (an `Option` field of an answer is always there, maybe null).
    let mut requests = settings().for_deserialize().into_generator();
    let mut answers = settings().for_serialize().into_generator();
    let error = schema::<ErrorBody<'static>>(&mut answers);
    let mut paths = Map::new();
    for op in OPERATIONS {
        let mut responses = Map::new();
        for status in op.statuses() {
            let content = match (status, op.answer) {
                (200, Answer::Json(f)) => json!({"application/json": {"schema": f(&mut answers)}}),
                (200, Answer::Text(media)) => json!({media: {"schema": {"type": "string"}}}),
                _ => json!({"application/json": {"schema": error.clone()}}),
            };
            responses.insert(status.to_string(), json!({"description": reason(status), "content": content}));
        }
        let parameters: Vec<Value> = op
            .params
            .iter()
            .map(|p| {
                json!({
                    "name": p.name,
                    "in": p.location.as_str(),
                    "required": p.required,
                    "description": p.description,
                    "schema": (p.schema)(&mut requests),
                })
            })
            .collect();
        let mut operation = json!({
            "operationId": operation_id(op),
            "summary": op.summary,
            "responses": responses,
        });
        if !parameters.is_empty() {
            operation["parameters"] = Value::Array(parameters);
        }
        if let Some(body) = op.body {
            operation["requestBody"] =
                json!({"required": true, "content": {"application/json": {"schema": body(&mut requests)}}});
        }
        if op.path.starts_with("/v1/") {
            // Only when the server has a token; `/healthz`, `/metrics` and the page stay open.
            operation["security"] = json!([{"bearer": []}, {}]);
        }
        let item = paths.entry(op.path.to_string()).or_insert_with(|| json!({}));
        item[op.method.to_ascii_lowercase()] = operation;
    }
    let mut schemas = requests.take_definitions(true);
    for (name, answer) in answers.take_definitions(true) {
        if let Some(request) = schemas.get(&name) {
            // One name, two shapes: the document would describe one of them wrongly.
            assert_eq!(request, &answer, "{name} is read and written with different schemas");
        }
        schemas.insert(name, answer);
    }
    json!({
        "openapi": "3.1.0",
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "info": {
            "title": "paramopt",
            "version": "1.0.0",
            "description": "Online parameter learning for trading modules. docs/api.md is the prose contract; \
                            this document is generated from the service's wire types (`paramopt openapi`).",
        },
        "servers": [{"url": "http://127.0.0.1:8700"}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    })
}

/// `decide`-style names from the method and path: `get_v1_checkpoints_module_generation`.
fn operation_id(op: &Operation) -> String {
    let words: Vec<&str> =
        op.path.split(|c: char| !c.is_ascii_alphanumeric()).filter(|w| !w.is_empty() && *w != "json").collect();
    let mut id = op.method.to_ascii_lowercase();
    for w in if words.is_empty() { vec!["dashboard_page"] } else { words } {
        id.push('_');
        id.push_str(w);
    }
    id
}

/// The document as `paramopt openapi` prints it and docs/openapi.json holds
/// it: pretty-printed, with a final newline. Built once per process.
pub fn text() -> &'static str {
    static TEXT: OnceLock<String> = OnceLock::new();
    TEXT.get_or_init(|| {
        let mut text = serde_json::to_string_pretty(&document()).expect("the document serialises");
        text.push('\n');
        text
    })
}

/// The body of `GET /v1/openapi.json`.
pub fn json() -> Bytes {
    Bytes::from_static(text().as_bytes())
}
