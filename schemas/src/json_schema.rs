//! The JSON Schema (draft 2020-12) of each topic, derived from [`crate::spec`]. The files in
//! `schemas/topics/` are this, written out for consumers that do not use Rust
//! (`cargo run -p schemas --example write-schemas`; a test fails when they are stale).

use serde_json::{json, Map, Value};

use crate::kind::Kind;
use crate::spec::{Field, FieldType, TYPES};
use crate::topic::Topic;

/// The version in every schema's `$id`; bumped on an incompatible change.
pub const VERSION: u32 = 3;

fn field_schema(field: &Field) -> Value {
    let mut schema = match field.ty {
        FieldType::Text => json!({"type": "string"}),
        FieldType::OptText | FieldType::Scene => json!({"type": ["string", "null"]}),
        FieldType::Number { .. } => json!({"type": "number"}),
        FieldType::OptNumber => json!({"type": ["number", "null"]}),
        FieldType::OptInt => json!({"type": ["integer", "null"]}),
        FieldType::List { items } => {
            let properties: Map<String, Value> = items
                .iter()
                .map(|f| (f.json.to_owned(), field_schema(f)))
                .collect();
            let required: Vec<&str> = items.iter().map(|f| f.json).collect();
            json!({
                "type": "array",
                "items": {
                    "type": "object",
                    "required": required,
                    "properties": properties,
                    "additionalProperties": {"$ref": "#/$defs/xml"},
                }
            })
        }
    };
    if let FieldType::Number { max } = field.ty {
        if max < f64::MAX {
            schema["minimum"] = json!(-max);
            schema["maximum"] = json!(max);
        }
    }
    schema["description"] = json!(field.doc);
    schema
}

/// The schema of a topic's record values.
pub fn json_schema(topic: Topic) -> Value {
    let kind = topic.kind().as_str();
    let suffix = topic.suffix();
    let type_schema = match topic.spec() {
        Some(spec) => json!({"const": spec.name}),
        None => {
            let known: Vec<&str> = TYPES
                .iter()
                .filter(|t| t.kind == topic.kind())
                .map(|t| t.name)
                .collect();
            let description = format!(
                "lower-case type; the original spelling is in extra.{}",
                topic.kind().type_element()
            );
            json!({"type": "string", "minLength": 1, "not": {"enum": known},
                   "description": description})
        }
    };
    let mut properties = Map::new();
    let mut required = vec![
        "id",
        "account",
        "openid",
        "created_at",
        "received_at",
        "kind",
        "type",
    ];
    let component = topic.kind() == Kind::Component;
    let (account, openid) = if component {
        (
            "AppId: the component's AppID",
            "the authorizer's AppID (the component's in a ticket); also the record key",
        )
    } else {
        (
            "ToUserName: the account's original id (gh_…)",
            "FromUserName: the user's OpenID; also the record key",
        )
    };
    for (name, schema) in [
        (
            "id",
            json!({"type": "string", "minLength": 1, "description": "dedup identity: the same for every retry of one push"}),
        ),
        (
            "account",
            json!({"type": "string", "minLength": 1, "description": account}),
        ),
        (
            "openid",
            json!({"type": "string", "minLength": 1, "description": openid}),
        ),
        (
            "created_at",
            json!({"type": "integer", "minimum": 0, "description": "CreateTime, Unix seconds"}),
        ),
        (
            "received_at",
            json!({"type": "string", "pattern": r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$",
                               "description": "when the ingress received the push: RFC 3339, UTC, milliseconds"}),
        ),
        ("kind", json!({"const": kind})),
        ("type", type_schema),
    ] {
        properties.insert(name.to_owned(), schema);
    }
    for field in topic.spec().map_or(&[][..], |s| s.fields) {
        properties.insert(field.json.to_owned(), field_schema(field));
        required.push(field.json);
    }
    if !component {
        properties.insert(
            "appid".to_owned(),
            json!({"type": "string", "minLength": 1,
                   "description": "Open Platform mode only: the authorizer AppID of the route the push came in on"}),
        );
    }
    properties.insert(
        "extra".to_owned(),
        json!({"type": "object", "additionalProperties": {"$ref": "#/$defs/xml"},
               "description": "every element not mapped to a field above, under its XML name"}),
    );
    required.push("extra");
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": format!("urn:wxpipe:schema:v{VERSION}:{suffix}"),
        "title": format!("wxpipe record on {{prefix}}.{suffix}"),
        "description": topic.spec().map_or(
            match topic.kind() {
                Kind::Event => "an event of a type wxpipe does not know yet",
                Kind::Message => "a message of a type wxpipe does not know yet",
                Kind::Component => "an Open Platform authorization event of a type wxpipe does not know yet",
            },
            |s| s.doc,
        ),
        "type": "object",
        "required": required,
        "properties": properties,
        "additionalProperties": false,
        "$defs": {
            "xml": {
                "description": "an XML element: a leaf is its text; a nested element an object of its children; repeated children an array",
                "anyOf": [
                    {"type": "string"},
                    {"type": "object", "additionalProperties": {"$ref": "#/$defs/xml"}},
                    {"type": "array", "items": {"$ref": "#/$defs/xml"}}
                ]
            }
        }
    })
}

/// The file a topic's schema is written to, relative to the `schemas/` folder.
pub fn file_name(topic: Topic) -> String {
    format!("topics/{}.json", topic.suffix())
}

/// A schema as written to its file.
pub fn pretty(topic: Topic) -> String {
    serde_json::to_string_pretty(&json_schema(topic)).expect("a schema serializes") + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_typed_field_takes_a_record_field_name() {
        // `appid` was a typed field of two event types (their `AppID` element) before it
        // became the route's AppID of every Open Platform record: two values, one name.
        for spec in TYPES {
            for field in spec.fields {
                assert!(
                    !crate::spec::RECORD_FIELDS.contains(&field.json),
                    "{}.{}: typed field {}",
                    spec.kind.as_str(),
                    spec.name,
                    field.json
                );
            }
        }
    }

    #[test]
    fn every_schema_compiles() {
        for topic in Topic::all() {
            assert!(
                jsonschema::validator_for(&json_schema(topic)).is_ok(),
                "{}",
                topic.suffix()
            );
        }
    }

    #[test]
    fn committed_schema_files_are_current() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut expected: Vec<String> = Topic::all()
            .map(|t| format!("{}.json", t.suffix()))
            .collect();
        for topic in Topic::all() {
            let committed = std::fs::read_to_string(dir.join(file_name(topic))).unwrap_or_default();
            assert!(
                committed == pretty(topic),
                "schemas/{} is stale: run `cargo run -p schemas --example write-schemas`",
                file_name(topic)
            );
        }
        let mut present: Vec<String> = std::fs::read_dir(dir.join("topics"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        present.sort();
        expected.sort();
        assert_eq!(
            present, expected,
            "a schema file for every topic, and no other"
        );
    }

    #[test]
    fn a_location_without_coordinates_is_invalid() {
        let schema = json_schema(Topic::of(Kind::Event, "location"));
        let record = json!({"id": "i", "account": "a", "openid": "o", "created_at": 1,
            "received_at": "2026-11-26T00:00:00.000Z", "kind": "event", "type": "location", "extra": {}});
        assert!(!jsonschema::is_valid(&schema, &record));
    }
}
