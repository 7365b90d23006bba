//! Property tests: generated pushes survive parsing and normalization with no field lost,
//! every record validates against its topic's schema, and no input makes the parser panic.

use std::collections::HashMap;

use proptest::prelude::*;
use schemas::{spec, Event, Kind, Topic};
use serde_json::{Map, Value};
use wechat::normalize::normalize;
use wechat::parse::Push;

/// An element value: a leaf or one level of children (repeated names allowed).
#[derive(Debug, Clone)]
enum Element {
    Leaf(String),
    Nested(Vec<(String, String)>),
}

/// Text as WeChat may send it: any printable text, spaces, CJK, XML's special characters.
fn text() -> impl Strategy<Value = String> {
    "[ a-zA-Z0-9_.:/&<>\"'\\]\\[中文\u{1F600}-]{0,24}"
}

/// Element names that no spec field reads, so every one must come back in `extra`.
fn extra_name() -> impl Strategy<Value = String> {
    "X[A-Za-z0-9_]{0,10}"
}

fn element() -> impl Strategy<Value = Element> {
    prop_oneof![
        text().prop_map(Element::Leaf),
        prop::collection::vec(("[A-C]", text()), 1..4).prop_map(Element::Nested),
    ]
}

/// Writes text as CDATA or escaped character data, as WeChat and its SDKs do.
fn write_text(out: &mut String, text: &str, cdata: bool) {
    if cdata && !text.contains("]]>") {
        out.push_str(&format!("<![CDATA[{text}]]>"));
    } else {
        for c in text.chars() {
            match c {
                '&' => out.push_str("&amp;"),
                '<' => out.push_str("&lt;"),
                '>' => out.push_str("&gt;"),
                c => out.push(c),
            }
        }
    }
}

#[derive(Debug, Clone)]
struct Generated {
    kind: Kind,
    type_: String,
    openid: String,
    create_time: i64,
    extra: Vec<(String, Element)>,
    cdata: bool,
}

fn generated() -> impl Strategy<Value = Generated> {
    let types: Vec<(Kind, String)> = spec::TYPES
        .iter()
        .filter(|t| {
            t.kind != Kind::Component
                && t.fields
                    .iter()
                    .all(|f| !matches!(f.ty, spec::FieldType::Number { .. }))
        })
        .map(|t| (t.kind, t.name.to_owned()))
        .chain([
            (Kind::Event, "brand_new_event".into()),
            (Kind::Message, "hologram".into()),
        ])
        .collect();
    (
        prop::sample::select(types),
        "o[A-Za-z0-9_-]{5,27}",
        0i64..=4_000_000_000,
        prop::collection::vec((extra_name(), element()), 0..6),
        any::<bool>(),
    )
        .prop_map(|((kind, type_), openid, create_time, extra, cdata)| {
            let mut seen = std::collections::HashSet::new();
            let extra = extra
                .into_iter()
                .filter(|(name, _)| seen.insert(name.clone()))
                .collect();
            Generated {
                kind,
                type_,
                openid,
                create_time,
                extra,
                cdata,
            }
        })
}

impl Generated {
    fn xml(&self) -> String {
        let mut xml = format!(
            "<xml><ToUserName><![CDATA[gh_prop]]></ToUserName><FromUserName><![CDATA[{}]]></FromUserName>\
             <CreateTime>{}</CreateTime>",
            self.openid, self.create_time
        );
        match self.kind {
            Kind::Event => xml.push_str(&format!(
                "<MsgType>event</MsgType><Event>{}</Event>",
                self.type_.to_uppercase()
            )),
            Kind::Message => xml.push_str(&format!("<MsgType>{}</MsgType>", self.type_)),
            Kind::Component => unreachable!("only account pushes are generated"),
        }
        for (name, element) in &self.extra {
            xml.push_str(&format!("\n  <{name}>"));
            match element {
                Element::Leaf(text) => write_text(&mut xml, text, self.cdata),
                Element::Nested(children) => {
                    for (child, text) in children {
                        xml.push_str(&format!("<{child}>"));
                        write_text(&mut xml, text, self.cdata);
                        xml.push_str(&format!("</{child}>"));
                    }
                }
            }
            xml.push_str(&format!("</{name}>"));
        }
        xml + "</xml>"
    }

    /// What `extra` must hold: every generated element, nested ones as objects with repeated
    /// children as arrays.
    fn expected_extra(&self) -> Map<String, Value> {
        let mut map = Map::new();
        for (name, element) in &self.extra {
            let value = match element {
                Element::Leaf(text) => Value::String(text.clone()),
                Element::Nested(children) => {
                    let mut object = Map::new();
                    for (child, text) in children {
                        match object.get_mut(child) {
                            None => {
                                object.insert(child.clone(), Value::String(text.clone()));
                            }
                            Some(Value::Array(items)) => items.push(Value::String(text.clone())),
                            Some(first) => {
                                let first = first.take();
                                object.insert(
                                    child.clone(),
                                    Value::Array(vec![first, Value::String(text.clone())]),
                                );
                            }
                        }
                    }
                    Value::Object(object)
                }
            };
            map.insert(name.clone(), value);
        }
        if Topic::of(self.kind, &self.type_).spec().is_none() {
            let (field, original) = match self.kind {
                Kind::Event => ("Event", self.type_.to_uppercase()),
                Kind::Message => ("MsgType", self.type_.clone()),
                Kind::Component => unreachable!("only account pushes are generated"),
            };
            map.insert(field.into(), Value::String(original));
        }
        map
    }
}

fn validator(
    topic: Topic,
    cache: &mut HashMap<Topic, jsonschema::Validator>,
) -> &jsonschema::Validator {
    cache
        .entry(topic)
        .or_insert_with(|| jsonschema::validator_for(&schemas::json_schema(topic)).unwrap())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn no_field_is_lost_and_every_record_validates(g in generated()) {
        let xml = g.xml();
        let push = Push::try_from(xml.as_bytes()).map_err(|e| TestCaseError::fail(format!("{e}: {xml}")))?;
        let event = normalize(push, "2026-11-26T00:00:00.000Z".into()).map_err(|e| TestCaseError::fail(format!("{e}: {xml}")))?;
        prop_assert_eq!(&event.openid, &g.openid);
        prop_assert_eq!(event.created_at, g.create_time);
        prop_assert_eq!(event.kind, g.kind);
        prop_assert_eq!(&event.type_, &g.type_);
        prop_assert_eq!(&event.extra, &g.expected_extra(), "{}", xml);
        // Every typed field of the type is present (null when its element was absent).
        let spec_fields = event.topic().spec().map_or(0, |s| s.fields.len());
        prop_assert_eq!(event.fields.len(), spec_fields);

        let json = serde_json::to_value(&event).unwrap();
        let mut cache = HashMap::new();
        let valid = validator(event.topic(), &mut cache).is_valid(&json);
        prop_assert!(valid, "{}", json);
        prop_assert_eq!(Event::from_json(json.to_string().as_bytes()).unwrap(), event);
    }

    #[test]
    fn a_retry_has_the_same_id_and_another_second_does_not(g in generated()) {
        let id = |xml: &str| normalize(Push::try_from(xml.as_bytes()).unwrap(), "t".into()).unwrap().id;
        let first = id(&g.xml());
        prop_assert_eq!(&first, &id(&g.xml()));
        let later = Generated { create_time: g.create_time + 1, ..g.clone() };
        prop_assert_ne!(first, id(&later.xml()));
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(push) = Push::try_from(&bytes[..]) {
            let _ = normalize(push, "t".into());
        }
    }

    #[test]
    fn mutated_pushes_never_panic(g in generated(), at in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let mut xml = g.xml().into_bytes();
        let i = at.index(xml.len());
        xml[i] = byte;
        if let Ok(push) = Push::try_from(&xml[..]) {
            let _ = normalize(push, "t".into());
        }
    }
}
