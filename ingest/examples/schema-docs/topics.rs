//! The per-topic reference of `schemas/README.md`: each topic's fields, from the spec, and a
//! sample record, normalized from the public corpus. Written by
//! `cargo run -p ingest --example schema-docs`; `tests/schema_docs.rs` includes this file and
//! fails when the README is stale. Not in the library: the ingress never runs it.

use std::fmt::Write;
use std::path::Path;

use schemas::spec::{Field, FieldType};
use schemas::Topic;
use serde_json::Value;

use wechat::normalize::normalize;
use wechat::parse::Push;

pub const START: &str =
    "<!-- topics:start (generated: cargo run -p ingest --example schema-docs) -->";
pub const END: &str = "<!-- topics:end -->";

fn type_name(ty: &FieldType) -> &'static str {
    match ty {
        FieldType::Text => "string",
        FieldType::OptText | FieldType::Scene => "string or null",
        FieldType::Number { .. } => "number",
        FieldType::OptNumber => "number or null",
        FieldType::OptInt => "integer or null",
        FieldType::List { .. } => "array of objects",
    }
}

fn field_rows(out: &mut String, fields: &[Field], prefix: &str) {
    for field in fields {
        let from = field
            .from
            .iter()
            .map(|p| p.join("/"))
            .collect::<Vec<_>>()
            .join(" or ");
        let _ = writeln!(
            out,
            "| `{prefix}{}` | {} | `{from}` | {} |",
            field.json,
            type_name(&field.ty),
            field.doc
        );
        if let FieldType::List { items } = field.ty {
            field_rows(out, items, &format!("{prefix}{}[].", field.json));
        }
    }
}

/// The generated section, from the corpus in `vectors` (the `tests/vectors` folder).
pub fn topics_section(vectors: &Path) -> String {
    let manifest: Vec<Value> = serde_json::from_str(
        &std::fs::read_to_string(vectors.join("plain/manifest.json")).expect("manifest"),
    )
    .expect("manifest is JSON");
    let mut out = String::from(START);
    out.push('\n');
    for topic in Topic::all() {
        let suffix = topic.suffix();
        let doc = topic.spec().map_or(
            "a type wxpipe does not know yet; its fields are all in `extra`",
            |s| s.doc,
        );
        let _ = writeln!(out, "\n### `{{prefix}}.{suffix}`\n\n{}.\n", capitalize(doc));
        if let Some(spec) = topic.spec().filter(|s| !s.fields.is_empty()) {
            out.push_str("| field | type | from | meaning |\n|---|---|---|---|\n");
            field_rows(&mut out, spec.fields, "");
            out.push('\n');
        }
        let sample = manifest.iter().find_map(|entry| {
            if topic.kind() == schemas::Kind::Component {
                return None;
            }
            let xml = std::fs::read(vectors.join(entry["file"].as_str()?)).ok()?;
            let event = normalize(
                Push::try_from(&xml[..]).ok()?,
                "2026-11-26T08:00:00.000Z".into(),
            )
            .ok()?;
            (event.topic() == topic).then_some((entry["file"].as_str()?.to_owned(), event))
        });
        let (source, event) = sample
            .map(|(file, event)| (format!("from `tests/vectors/{file}`"), event))
            .unwrap_or_else(|| {
                (
                    "a made-up push; the corpus has none".to_owned(),
                    made_up(topic),
                )
            });
        let json = serde_json::to_string_pretty(&event).expect("serializes");
        let _ = writeln!(out, "Sample ({source}):\n\n```json\n{json}\n```");
    }
    out.push_str(END);
    out
}

/// A push of a topic the corpus lacks (an event type WeChat may add tomorrow, or an Open
/// Platform authorization event, which the corpus has none of).
fn made_up(topic: Topic) -> schemas::Event {
    if topic.kind() == schemas::Kind::Component {
        let fields = match topic.type_name() {
            "component_verify_ticket" => {
                "<ComponentVerifyTicket>ticket@@@made-up</ComponentVerifyTicket>".to_owned()
            }
            "unauthorized" => "<AuthorizerAppid>wxauthorizer</AuthorizerAppid>".to_owned(),
            "other" => "<AuthorizerAppid>wxauthorizer</AuthorizerAppid>".to_owned(),
            _ => "<AuthorizerAppid>wxauthorizer</AuthorizerAppid><AuthorizationCode>queryauthcode@@@made-up</AuthorizationCode>\
                  <AuthorizationCodeExpiredTime>1764147600</AuthorizationCodeExpiredTime><PreAuthCode>preauthcode@@@made-up</PreAuthCode>"
                .to_owned(),
        };
        let info_type = match topic.type_name() {
            "other" => "NEW_INFO_TYPE",
            known => known,
        };
        let xml = format!(
            "<xml><AppId>wxcomponent</AppId><CreateTime>1764144000</CreateTime><InfoType>{info_type}</InfoType>{fields}</xml>"
        );
        return wechat::normalize::normalize_component(
            Push::component(xml.as_bytes()).expect("valid"),
            "2026-11-26T08:00:00.000Z".into(),
        )
        .expect("valid");
    }
    let msg = match topic.kind() {
        schemas::Kind::Component => unreachable!("made above"),
        schemas::Kind::Event => {
            "<MsgType>event</MsgType><Event>NEW_EVENT_TYPE</Event><EventKey>k</EventKey>"
        }
        schemas::Kind::Message => "<MsgType>new_message_type</MsgType><MsgId>1</MsgId>",
    };
    let xml = format!(
        "<xml><ToUserName>gh_account</ToUserName><FromUserName>oUser</FromUserName><CreateTime>1764144000</CreateTime>{msg}</xml>"
    );
    normalize(
        Push::try_from(xml.as_bytes()).expect("valid"),
        "2026-11-26T08:00:00.000Z".into(),
    )
    .expect("valid")
}

fn capitalize(text: &str) -> String {
    let mut chars = text.chars();
    chars
        .next()
        .map_or_else(String::new, |c| c.to_uppercase().chain(chars).collect())
}

/// `readme` with its generated section replaced.
pub fn with_topics_section(readme: &str, vectors: &Path) -> Option<String> {
    let start = readme.find(START)?;
    let end = readme.find(END)? + END.len();
    Some(format!(
        "{}{}{}",
        &readme[..start],
        topics_section(vectors),
        &readme[end..]
    ))
}
