//! [`Push`] → [`schemas::Event`]: the contract's JSON, with the dedup identity.

use schemas::{Detail, DetailShape, Event, Kind, Topic};
use serde_json::{Map, Value};
use sha1::{Digest, Sha1};

use crate::parse::{ParseError, Push};

/// An OpenID or account id: non-empty, at most 128 characters, and free of `:`, white space
/// and control characters, so the identity built from it is unambiguous.
fn check_id(value: &str, field: &'static str) -> Result<(), ParseError> {
    let ok = !value.is_empty()
        && value.chars().count() <= 128
        && !value
            .chars()
            .any(|c| c == ':' || c.is_whitespace() || c.is_control());
    if ok {
        Ok(())
    } else {
        Err(ParseError::BadField(field))
    }
}

/// The dedup identity: FromUserName + CreateTime, as WeChat recommends, qualified by the
/// account and the type, by `MsgId` where the push has one, and by a digest of `EventKey`
/// where it has one (two CLICKs on different keys in one second are two events). Every retry
/// of a push carries the same fields, so it gets the same identity.
pub fn identity(
    account: &str,
    openid: &str,
    created_at: i64,
    kind: Kind,
    type_: &str,
    msg_id: Option<&str>,
    event_key: Option<&str>,
) -> String {
    let kind = match kind {
        Kind::Event => "event",
        Kind::Message => "message",
    };
    let mut id = format!("{account}:{openid}:{created_at}:{kind}.{type_}");
    if let Some(msg_id) = msg_id.map(str::trim).filter(|m| !m.is_empty()) {
        id.push_str(":m");
        id.push_str(msg_id);
    }
    if let Some(key) = event_key.filter(|k| !k.is_empty()) {
        let digest = Sha1::digest(key.as_bytes());
        id.push_str(":k");
        id.push_str(&hex::encode(&digest[..8]));
    }
    id
}

fn number(push: &mut Push, field: &'static str, range: f64) -> Result<f64, ParseError> {
    let text = push.take_text(field).ok_or(ParseError::Missing(field))?;
    text.trim()
        .parse::<f64>()
        .ok()
        .filter(|n| n.is_finite() && n.abs() <= range)
        .ok_or(ParseError::BadField(field))
}

fn non_empty(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.is_empty())
}

/// Normalizes a push received at `received_at` (RFC 3339).
pub fn normalize(mut push: Push, received_at: String) -> Result<Event, ParseError> {
    check_id(&push.to_user, "ToUserName")?;
    check_id(&push.from_user, "FromUserName")?;
    let (kind, type_, original_event) = if push.msg_type.trim().eq_ignore_ascii_case("event") {
        let event = push
            .take_text("Event")
            .filter(|e| !e.trim().is_empty())
            .ok_or(ParseError::Missing("Event"))?;
        (Kind::Event, event.trim().to_ascii_lowercase(), Some(event))
    } else {
        (
            Kind::Message,
            push.msg_type.trim().to_ascii_lowercase(),
            None,
        )
    };
    // WeChat spells it `MsgId` in messages and `MsgID` in some events.
    let msg_id = push
        .text("MsgId")
        .or_else(|| push.text("MsgID"))
        .map(str::to_owned);
    let id = identity(
        &push.to_user,
        &push.from_user,
        push.create_time,
        kind,
        &type_,
        msg_id.as_deref(),
        push.text("EventKey"),
    );

    let detail = match Detail::shape(kind, &type_) {
        DetailShape::Qr => {
            let key = non_empty(push.take_text("EventKey"));
            Detail::Qr {
                scene: key.map(|k| match k.strip_prefix("qrscene_") {
                    Some(scene) => scene.to_owned(),
                    None => k,
                }),
                ticket: non_empty(push.take_text("Ticket")),
            }
        }
        DetailShape::Location => Detail::Location {
            latitude: number(&mut push, "Latitude", 90.0)?,
            longitude: number(&mut push, "Longitude", 180.0)?,
            precision: number(&mut push, "Precision", f64::MAX)?,
        },
        DetailShape::Click => Detail::Click {
            key: push.take_text("EventKey").unwrap_or_default(),
        },
        DetailShape::View => Detail::View {
            url: push.take_text("EventKey").unwrap_or_default(),
        },
        DetailShape::None => Detail::None {},
    };

    let topic = Topic::of(kind, &type_);
    let mut extra: Map<String, Value> = push.fields.into_iter().collect();
    if topic.type_name() == "other" {
        // `type` is lower-cased; keep the name exactly as WeChat sent it.
        let original = original_event.unwrap_or(push.msg_type);
        let field = if kind == Kind::Event {
            "Event"
        } else {
            "MsgType"
        };
        extra.insert(field.into(), Value::String(original));
    }

    Ok(Event {
        id,
        account: push.to_user,
        openid: push.from_user,
        created_at: push.create_time,
        received_at,
        kind,
        type_,
        detail,
        extra,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::{ParseError, Push};
    use serde_json::json;

    const AT: &str = "2026-11-26T00:00:00.000Z";

    fn event(xml: &str) -> Result<Event, ParseError> {
        normalize(Push::try_from(xml.as_bytes())?, AT.into())
    }

    fn push(fields: &str) -> String {
        format!(
            "<xml><ToUserName><![CDATA[toUser]]></ToUserName><FromUserName><![CDATA[FromUser]]></FromUserName>\
             <CreateTime>123456789</CreateTime>{fields}</xml>"
        )
    }

    fn ev(fields: &str) -> String {
        push(&format!("<MsgType><![CDATA[event]]></MsgType>{fields}"))
    }

    // The six samples of WeChat's document (seeds/000), verbatim.
    const SEED_SUBSCRIBE: &str = "<xml> <ToUserName><![CDATA[toUser]]></ToUserName> <FromUserName><![CDATA[FromUser]]></FromUserName> <CreateTime>123456789</CreateTime> <MsgType><![CDATA[event]]></MsgType> <Event><![CDATA[subscribe]]></Event> </xml>";
    const SEED_QR_SUBSCRIBE: &str = "<xml><ToUserName><![CDATA[toUser]]></ToUserName> <FromUserName><![CDATA[FromUser]]></FromUserName> <CreateTime>123456789</CreateTime> <MsgType><![CDATA[event]]></MsgType> <Event><![CDATA[subscribe]]></Event> <EventKey><![CDATA[qrscene_123123]]></EventKey> <Ticket><![CDATA[TICKET]]></Ticket> </xml>";
    const SEED_SCAN: &str = "<xml> <ToUserName><![CDATA[toUser]]></ToUserName> <FromUserName><![CDATA[FromUser]]></FromUserName> <CreateTime>123456789</CreateTime> <MsgType><![CDATA[event]]></MsgType> <Event><![CDATA[SCAN]]></Event> <EventKey><![CDATA[SCENE_VALUE]]></EventKey> <Ticket><![CDATA[TICKET]]></Ticket> </xml>";
    const SEED_LOCATION: &str = "<xml> <ToUserName><![CDATA[toUser]]></ToUserName> <FromUserName><![CDATA[fromUser]]></FromUserName> <CreateTime>123456789</CreateTime> <MsgType><![CDATA[event]]></MsgType> <Event><![CDATA[LOCATION]]></Event> <Latitude>23.137466</Latitude> <Longitude>113.352425</Longitude> <Precision>119.385040</Precision> </xml>";
    const SEED_CLICK: &str = "<xml> <ToUserName><![CDATA[toUser]]></ToUserName> <FromUserName><![CDATA[FromUser]]></FromUserName> <CreateTime>123456789</CreateTime> <MsgType><![CDATA[event]]></MsgType> <Event><![CDATA[CLICK]]></Event> <EventKey><![CDATA[EVENTKEY]]></EventKey> </xml>";
    const SEED_VIEW: &str = "<xml> <ToUserName><![CDATA[toUser]]></ToUserName> <FromUserName><![CDATA[FromUser]]></FromUserName> <CreateTime>123456789</CreateTime> <MsgType><![CDATA[event]]></MsgType> <Event><![CDATA[VIEW]]></Event> <EventKey><![CDATA[www.qq.com]]></EventKey> </xml>";

    #[test]
    fn seed_subscribe() {
        let e = event(SEED_SUBSCRIBE).unwrap();
        assert_eq!((e.kind, e.type_.as_str()), (Kind::Event, "subscribe"));
        assert_eq!(e.account, "toUser");
        assert_eq!(e.openid, "FromUser");
        assert_eq!(e.created_at, 123456789);
        assert_eq!(e.received_at, AT);
        assert_eq!(
            e.detail,
            Detail::Qr {
                scene: None,
                ticket: None
            }
        );
        assert!(e.extra.is_empty());
        assert_eq!(e.topic().suffix(), "event.subscribe");
        assert_eq!(e.id, "toUser:FromUser:123456789:event.subscribe");
    }

    #[test]
    fn seed_qr_subscribe() {
        let e = event(SEED_QR_SUBSCRIBE).unwrap();
        assert_eq!(e.topic().suffix(), "event.subscribe");
        assert_eq!(
            e.detail,
            Detail::Qr {
                scene: Some("123123".into()),
                ticket: Some("TICKET".into())
            }
        );
        assert!(e.extra.is_empty());
    }

    #[test]
    fn seed_scan() {
        let e = event(SEED_SCAN).unwrap();
        assert_eq!(e.topic().suffix(), "event.scan");
        assert_eq!(e.type_, "scan");
        assert_eq!(
            e.detail,
            Detail::Qr {
                scene: Some("SCENE_VALUE".into()),
                ticket: Some("TICKET".into())
            }
        );
    }

    #[test]
    fn seed_location() {
        let e = event(SEED_LOCATION).unwrap();
        assert_eq!(e.topic().suffix(), "event.location");
        assert_eq!(e.openid, "fromUser");
        assert_eq!(
            e.detail,
            Detail::Location {
                latitude: 23.137466,
                longitude: 113.352425,
                precision: 119.38504
            }
        );
        assert!(e.extra.is_empty());
    }

    #[test]
    fn seed_click_and_view() {
        let click = event(SEED_CLICK).unwrap();
        assert_eq!(click.topic().suffix(), "event.click");
        assert_eq!(
            click.detail,
            Detail::Click {
                key: "EVENTKEY".into()
            }
        );
        let view = event(SEED_VIEW).unwrap();
        assert_eq!(view.topic().suffix(), "event.view");
        assert_eq!(
            view.detail,
            Detail::View {
                url: "www.qq.com".into()
            }
        );
    }

    #[test]
    fn seed_unsubscribe() {
        let e = event(&ev("<Event><![CDATA[unsubscribe]]></Event>")).unwrap();
        assert_eq!(e.topic().suffix(), "event.unsubscribe");
        assert_eq!(e.detail, Detail::None {});
    }

    #[test]
    fn event_names_match_case_insensitively() {
        for (name, topic) in [
            ("SCAN", "event.scan"),
            ("scan", "event.scan"),
            ("Scan", "event.scan"),
            ("LOCATION", "event.location"),
            ("location", "event.location"),
            ("Subscribe", "event.subscribe"),
            ("SUBSCRIBE", "event.subscribe"),
            ("click", "event.click"),
            ("View", "event.view"),
            ("UNSUBSCRIBE", "event.unsubscribe"),
        ] {
            let xml = ev(&format!(
                "<Event><![CDATA[{name}]]></Event><EventKey>k</EventKey>\
                 <Latitude>1</Latitude><Longitude>2</Longitude><Precision>3</Precision>"
            ));
            assert_eq!(event(&xml).unwrap().topic().suffix(), topic, "{name}");
        }
        let xml = push("<MsgType><![CDATA[EVENT]]></MsgType><Event>subscribe</Event>");
        assert_eq!(event(&xml).unwrap().kind, Kind::Event);
    }

    #[test]
    fn qr_scene_only_loses_the_qrscene_prefix() {
        let scene = |key: &str| match event(&ev(&format!(
            "<Event>subscribe</Event><EventKey><![CDATA[{key}]]></EventKey>"
        )))
        .unwrap()
        .detail
        {
            Detail::Qr { scene, .. } => scene,
            other => panic!("{other:?}"),
        };
        assert_eq!(scene("qrscene_42"), Some("42".into()));
        assert_eq!(scene("last_trade_no_42"), Some("last_trade_no_42".into()));
        assert_eq!(scene(""), None);
    }

    #[test]
    fn unknown_events_keep_their_fields_and_name() {
        let e = event(&ev(
            "<Event><![CDATA[Some_New_Event]]></Event><EventKey>k</EventKey><Status>ok</Status>\
             <Info><A>1</A><B>2</B><B>3</B></Info>",
        ))
        .unwrap();
        assert_eq!(e.topic().suffix(), "event.other");
        assert_eq!(e.type_, "some_new_event");
        assert_eq!(
            serde_json::Value::Object(e.extra),
            json!({"Event": "Some_New_Event", "EventKey": "k", "Status": "ok",
                   "Info": {"A": "1", "B": ["2", "3"]}})
        );
    }

    #[test]
    fn messages_go_to_their_type_and_keep_msgid() {
        let e = event(&push("<MsgType><![CDATA[text]]></MsgType><Content>hi</Content><MsgId>1234567890123456</MsgId>")).unwrap();
        assert_eq!(e.topic().suffix(), "message.text");
        assert_eq!(e.kind, Kind::Message);
        assert_eq!(e.extra["MsgId"], "1234567890123456");
        assert!(
            e.id.ends_with(":message.text:m1234567890123456"),
            "{}",
            e.id
        );
        let unknown = event(&push("<MsgType>Hologram</MsgType>")).unwrap();
        assert_eq!(unknown.topic().suffix(), "message.other");
        assert_eq!(unknown.extra["MsgType"], "Hologram");
    }

    #[test]
    fn identity_separates_what_differs_and_only_that() {
        let id = |fields: &str| event(&ev(fields)).unwrap().id;
        let click_a = id("<Event>CLICK</Event><EventKey>A</EventKey>");
        // A retry, even with other case or white space around elements, is the same id.
        assert_eq!(click_a, id("<Event>CLICK</Event>  <EventKey>A</EventKey>"));
        assert_eq!(click_a, id("<Event>click</Event><EventKey>A</EventKey>"));
        // Two keys, or two types, in the same second are two events.
        assert_ne!(click_a, id("<Event>CLICK</Event><EventKey>B</EventKey>"));
        assert_ne!(
            id("<Event>LOCATION</Event><Latitude>1</Latitude><Longitude>2</Longitude><Precision>3</Precision>"),
            id("<Event>VIEW</Event><EventKey>A</EventKey>")
        );
        // Other accounts, users and seconds are other events.
        let base = identity("gh_a", "o1", 1, Kind::Event, "subscribe", None, None);
        assert_ne!(
            base,
            identity("gh_b", "o1", 1, Kind::Event, "subscribe", None, None)
        );
        assert_ne!(
            base,
            identity("gh_a", "o2", 1, Kind::Event, "subscribe", None, None)
        );
        assert_ne!(
            base,
            identity("gh_a", "o1", 2, Kind::Event, "subscribe", None, None)
        );
        assert_ne!(
            base,
            identity("gh_a", "o1", 1, Kind::Message, "subscribe", None, None)
        );
        assert_ne!(
            identity("gh_a", "o1", 1, Kind::Message, "text", Some("1"), None),
            identity("gh_a", "o1", 1, Kind::Message, "text", Some("2"), None)
        );
        // MsgID (events) and MsgId (messages) both count.
        assert_ne!(
            id("<Event>TEMPLATESENDJOBFINISH</Event><MsgID>1</MsgID>"),
            id("<Event>TEMPLATESENDJOBFINISH</Event><MsgID>2</MsgID>")
        );
    }

    #[test]
    fn bad_input_classes() {
        use ParseError as E;
        let cases: Vec<(String, ParseError)> = vec![
            ("not xml".into(), E::Xml(String::new())),
            ("<xml><ToUserName>a</ToUserName>".into(), E::Xml(String::new())),
            ("<xml><A></B></xml>".into(), E::Xml(String::new())),
            ("<root/>".into(), E::Root),
            ("<!DOCTYPE xml [<!ENTITY e \"boom\">]><xml/>".into(), E::Doctype),
            (ev("<Event>&e;</Event>"), E::Entity("e".into())),
            ("<?pi x?><xml/>".into(), E::ProcessingInstruction),
            (format!("{}<xml/>", ev("<Event>subscribe</Event>")), E::Trailing),
            (format!("{}junk", ev("<Event>subscribe</Event>")), E::Trailing),
            (ev("<Event>subscribe</Event><A>text<B>x</B></A>"), E::Mixed("A".into())),
            (ev("<Event>subscribe</Event><Event>unsubscribe</Event>"), E::Duplicate("Event".into())),
            (push("<MsgType>event</MsgType>").replace("<ToUserName><![CDATA[toUser]]></ToUserName>", ""), E::Missing("ToUserName")),
            (push("<MsgType>event</MsgType>").replace("[FromUser]", "[]"), E::Missing("FromUserName")),
            (push("<MsgType>event</MsgType>").replace("123456789", "12345.6"), E::BadField("CreateTime")),
            (push("<MsgType>event</MsgType>").replace("123456789", "-1"), E::BadField("CreateTime")),
            (push("<MsgType>event</MsgType>").replace("123456789", ""), E::Missing("CreateTime")),
            (push(""), E::Missing("MsgType")),
            (ev(""), E::Missing("Event")),
            (ev("<Event>LOCATION</Event><Latitude>north</Latitude><Longitude>2</Longitude><Precision>3</Precision>"), E::BadField("Latitude")),
            (ev("<Event>LOCATION</Event><Latitude>91</Latitude><Longitude>2</Longitude><Precision>3</Precision>"), E::BadField("Latitude")),
            (ev("<Event>LOCATION</Event><Latitude>NaN</Latitude><Longitude>2</Longitude><Precision>3</Precision>"), E::BadField("Latitude")),
            (ev("<Event>LOCATION</Event><Latitude>1</Latitude><Precision>3</Precision>"), E::Missing("Longitude")),
            (push("<MsgType>event</MsgType>").replace("[FromUser]", "[a:b]"), E::BadField("FromUserName")),
            (push("<MsgType>event</MsgType>").replace("[FromUser]", "[a b]"), E::BadField("FromUserName")),
            (ev(&format!("<Event>subscribe</Event>{}{}", "<a>".repeat(20), "</a>".repeat(20))), E::TooComplex),
            (ev(&"<a/>".repeat(2000)), E::TooComplex),
        ];
        for (xml, expected) in cases {
            let got = event(&xml).expect_err(&xml);
            match (&got, &expected) {
                (E::Xml(_), E::Xml(_)) => {}
                _ => assert_eq!(got, expected, "{xml}"),
            }
        }
        assert_eq!(
            Push::try_from(&b"<xml>\xff</xml>"[..]).unwrap_err(),
            E::NotUtf8
        );
    }

    #[test]
    fn predefined_entities_and_character_references_are_text() {
        let e = event(&ev(
            "<Event>CLICK</Event><EventKey>a&amp;b&#x4e2d;&#25991;&lt;</EventKey>",
        ))
        .unwrap();
        assert_eq!(
            e.detail,
            Detail::Click {
                key: "a&b中文<".into()
            }
        );
    }

    #[test]
    fn prolog_comments_and_whitespace_are_fine() {
        let xml = format!(
            "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<!-- c -->\n{}\n<!-- after -->\n",
            SEED_SUBSCRIBE
        );
        assert_eq!(event(&xml).unwrap().type_, "subscribe");
    }

    #[test]
    fn every_public_plain_vector_normalizes() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/vectors/plain");
        let manifest: Vec<serde_json::Value> =
            serde_json::from_str(&std::fs::read_to_string(format!("{dir}/manifest.json")).unwrap())
                .unwrap();
        assert_eq!(manifest.len(), 77);
        for entry in manifest {
            let file = entry["file"].as_str().unwrap().trim_start_matches("plain/");
            let xml = std::fs::read(format!("{dir}/{file}")).unwrap();
            let e = normalize(
                Push::try_from(&xml[..]).unwrap_or_else(|e| panic!("{file}: {e}")),
                AT.into(),
            )
            .unwrap_or_else(|e| panic!("{file}: {e}"));
            assert_eq!(e.openid, entry["from"].as_str().unwrap(), "{file}");
            assert_eq!(
                e.created_at.to_string(),
                entry["create_time"].as_str().unwrap(),
                "{file}"
            );
            let schema: serde_json::Value =
                serde_json::from_str(schemas::schema(e.topic())).unwrap();
            let value = serde_json::to_value(&e).unwrap();
            assert!(jsonschema::is_valid(&schema, &value), "{file}: {value}");
        }
    }
}
