//! [`Push`] → [`schemas::Event`]: the contract's JSON, with the dedup identity. The typed
//! fields of each type come from [`schemas::spec`]; what they do not take stays in `extra`.

use schemas::spec::{Field, FieldType};
use schemas::{Event, EventId, Kind, OpenId, Topic};
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

/// 16 hex digits of SHA-1 over the fields in a canonical form: names sorted at every level,
/// each name and value length-prefixed, so no two different sets of fields share a form.
/// The four fields every push has and `Event` are not in it: the identity names them already.
pub fn fields_digest(fields: &[(String, Value)]) -> String {
    fn feed(hasher: &mut Sha1, value: &Value) {
        match value {
            Value::String(s) => {
                hasher.update(b"s");
                hasher.update((s.len() as u64).to_be_bytes());
                hasher.update(s.as_bytes());
            }
            Value::Array(items) => {
                hasher.update(b"a");
                hasher.update((items.len() as u64).to_be_bytes());
                for item in items {
                    feed(hasher, item);
                }
            }
            Value::Object(map) => {
                let mut entries: Vec<_> = map.iter().collect();
                entries.sort_by(|a, b| a.0.cmp(b.0));
                feed_entries(hasher, entries.into_iter());
            }
            // The parser makes only strings, arrays and objects.
            other => feed(hasher, &Value::String(other.to_string())),
        }
    }
    fn feed_entries<'a>(
        hasher: &mut Sha1,
        entries: impl ExactSizeIterator<Item = (&'a String, &'a Value)>,
    ) {
        hasher.update(b"o");
        hasher.update((entries.len() as u64).to_be_bytes());
        for (name, value) in entries {
            hasher.update((name.len() as u64).to_be_bytes());
            hasher.update(name.as_bytes());
            feed(hasher, value);
        }
    }
    let mut entries: Vec<_> = fields.iter().map(|(n, v)| (n, v)).collect();
    entries.sort_by(|a, b| a.0.cmp(b.0));
    let mut hasher = Sha1::new();
    feed_entries(&mut hasher, entries.into_iter());
    hex::encode(&hasher.finalize()[..8])
}

/// Removes the element at `path` below `map`, and any parent it leaves empty.
fn take_in(map: &mut Map<String, Value>, path: &[&str]) -> Option<Value> {
    let (first, rest) = path.split_first()?;
    if rest.is_empty() {
        return map.remove(*first);
    }
    let child = map.get_mut(*first)?.as_object_mut()?;
    let taken = take_in(child, rest);
    if child.is_empty() {
        map.remove(*first);
    }
    taken
}

/// Removes the element at `path` below `<xml>`, and any parent it leaves empty.
fn take_top(fields: &mut Vec<(String, Value)>, path: &[&str]) -> Option<Value> {
    let (first, rest) = path.split_first()?;
    let at = fields.iter().position(|(name, _)| name == first)?;
    if rest.is_empty() {
        return Some(fields.remove(at).1);
    }
    let child = fields[at].1.as_object_mut()?;
    let taken = take_in(child, rest);
    if child.is_empty() {
        fields.remove(at);
    }
    taken
}

/// Where a field's value comes from: the top of the push, or a list item.
trait Source {
    fn take(&mut self, path: &[&str]) -> Option<Value>;
}

impl Source for Vec<(String, Value)> {
    fn take(&mut self, path: &[&str]) -> Option<Value> {
        take_top(self, path)
    }
}

impl Source for Map<String, Value> {
    fn take(&mut self, path: &[&str]) -> Option<Value> {
        take_in(self, path)
    }
}

/// The element a field is read from, as WeChat names it, for error messages.
fn xml_name(field: &Field) -> &'static str {
    field.from[0].last().copied().unwrap_or(field.json)
}

fn leaf(value: Option<Value>, field: &Field) -> Result<Option<String>, ParseError> {
    match value {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(ParseError::BadField(xml_name(field))),
    }
}

fn parse_number<T: std::str::FromStr>(text: &str, field: &Field) -> Result<T, ParseError> {
    text.trim()
        .parse()
        .map_err(|_| ParseError::BadField(xml_name(field)))
}

/// Reads one typed field out of `source`, as its type says.
fn typed(source: &mut impl Source, field: &Field) -> Result<Value, ParseError> {
    let raw = field.from.iter().find_map(|path| source.take(path));
    Ok(match field.ty {
        FieldType::Text => Value::String(leaf(raw, field)?.unwrap_or_default()),
        FieldType::OptText => leaf(raw, field)?
            .filter(|s| !s.is_empty())
            .map_or(Value::Null, Value::String),
        FieldType::Scene => {
            leaf(raw, field)?
                .filter(|s| !s.is_empty())
                .map_or(Value::Null, |key| match key.strip_prefix("qrscene_") {
                    Some(scene) => Value::String(scene.to_owned()),
                    None => Value::String(key),
                })
        }
        FieldType::Number { max } => {
            let text = leaf(raw, field)?
                .filter(|s| !s.trim().is_empty())
                .ok_or(ParseError::Missing(xml_name(field)))?;
            let n: f64 = parse_number(&text, field)?;
            if !n.is_finite() || n.abs() > max {
                return Err(ParseError::BadField(xml_name(field)));
            }
            Value::from(n)
        }
        FieldType::OptNumber => match leaf(raw, field)?.filter(|s| !s.trim().is_empty()) {
            None => Value::Null,
            Some(text) => {
                let n: f64 = parse_number(&text, field)?;
                if !n.is_finite() {
                    return Err(ParseError::BadField(xml_name(field)));
                }
                Value::from(n)
            }
        },
        FieldType::OptInt => match leaf(raw, field)?.filter(|s| !s.trim().is_empty()) {
            None => Value::Null,
            Some(text) => Value::from(parse_number::<i64>(&text, field)?),
        },
        FieldType::List { items } => {
            let entries = match raw {
                None => Vec::new(),
                Some(Value::Array(entries)) => entries,
                Some(Value::String(s)) if s.trim().is_empty() => Vec::new(),
                Some(entry) => vec![entry],
            };
            let list = entries
                .into_iter()
                .map(|entry| {
                    let Value::Object(mut item) = entry else {
                        return Err(ParseError::BadField(xml_name(field)));
                    };
                    let mut out = Map::new();
                    for item_field in items {
                        out.insert(item_field.json.to_owned(), typed(&mut item, item_field)?);
                    }
                    // Children the spec does not name are kept under their XML name.
                    out.extend(item);
                    Ok(Value::Object(out))
                })
                .collect::<Result<Vec<_>, _>>()?;
            Value::Array(list)
        }
    })
}

/// Normalizes a push received at `received_at` (RFC 3339).
pub fn normalize(push: Push, received_at: String) -> Result<Event, ParseError> {
    normalize_on(push, received_at, None)
}

/// Normalizes a push that came in on an Open Platform authorizer's route, `appid` (the
/// authorizer AppID of the route, `None` on an account's own route): the record names the
/// route's AppID, and its identity covers it, so two routes never share an identity.
pub fn normalize_on(
    mut push: Push,
    received_at: String,
    appid: Option<&str>,
) -> Result<Event, ParseError> {
    check_id(&push.to_user, "ToUserName")?;
    check_id(&push.from_user, "FromUserName")?;
    let (kind, type_, original) = if push.msg_type.trim().eq_ignore_ascii_case("event") {
        let event = push
            .take_text("Event")
            .filter(|e| !e.trim().is_empty())
            .ok_or(ParseError::Missing("Event"))?;
        (Kind::Event, event.trim().to_ascii_lowercase(), event)
    } else {
        let msg_type = push.msg_type.clone();
        (
            Kind::Message,
            msg_type.trim().to_ascii_lowercase(),
            msg_type,
        )
    };
    if let Some(appid) = appid {
        check_id(appid, "AppId")?;
    }
    finish(push, kind, type_, original, received_at, appid)
}

/// Normalizes an Open Platform authorization event ([`Push::component`]).
pub fn normalize_component(push: Push, received_at: String) -> Result<Event, ParseError> {
    check_id(&push.to_user, "AppId")?;
    check_id(&push.from_user, "AuthorizerAppid")?;
    let info_type = push.msg_type.clone();
    let type_ = info_type.trim().to_ascii_lowercase();
    finish(push, Kind::Component, type_, info_type, received_at, None)
}

fn finish(
    mut push: Push,
    kind: Kind,
    type_: String,
    original: String,
    received_at: String,
    appid: Option<&str>,
) -> Result<Event, ParseError> {
    // WeChat spells it `MsgId` in messages and `MsgID` in some events.
    let msg_id = push.text("MsgId").or_else(|| push.text("MsgID"));
    let digest = match appid {
        None => fields_digest(&push.fields),
        Some(appid) => {
            // Under a name no XML element can have.
            let mut fields = push.fields.clone();
            fields.push((" appid".to_owned(), Value::String(appid.to_owned())));
            fields_digest(&fields)
        }
    };
    let id = EventId::new(
        &push.to_user,
        &push.from_user,
        push.create_time,
        kind,
        &type_,
        msg_id,
        &digest,
    );

    let topic = Topic::of(kind, &type_);
    let mut fields = Map::new();
    for field in topic.spec().map_or(&[][..], |spec| spec.fields) {
        fields.insert(field.json.to_owned(), typed(&mut push.fields, field)?);
    }
    let mut extra: Map<String, Value> = push.fields.into_iter().collect();
    if topic.spec().is_none() {
        // `type` is lower-cased; keep the name exactly as WeChat sent it.
        extra.insert(kind.type_element().into(), Value::String(original));
    }

    Ok(Event {
        id,
        account: push.to_user,
        openid: OpenId::new(push.from_user),
        appid: appid.map(str::to_owned),
        created_at: push.create_time,
        received_at,
        kind,
        type_,
        fields,
        extra,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::{ParseError, Push};
    use serde_json::json;

    const AT: &str = "2026-11-26T00:00:00.000Z";

    fn typed(e: &Event) -> serde_json::Value {
        serde_json::Value::Object(e.fields.clone())
    }

    /// Normalizes a push that must land on `topic` with these typed `fields`: the event, for
    /// the test's further checks.
    fn event_on(xml: &str, topic: &str, fields: serde_json::Value) -> Event {
        let e = event(xml).unwrap();
        assert_eq!(e.topic().suffix(), topic);
        assert_eq!(typed(&e), fields);
        e
    }

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
        assert_eq!(typed(&e), json!({"scene": null, "ticket": null}));
        assert!(e.extra.is_empty());
        assert_eq!(e.topic().suffix(), "event.subscribe");
        // The digest of no further fields: pinned, so the canonical form cannot drift.
        assert_eq!(
            e.id,
            "toUser:FromUser:123456789:event.subscribe:ha918d2e6588b8206"
        );
    }

    #[test]
    fn seed_qr_subscribe() {
        let fields = json!({"scene": "123123", "ticket": "TICKET"});
        let e = event_on(SEED_QR_SUBSCRIBE, "event.subscribe", fields);
        assert!(e.extra.is_empty());
    }

    #[test]
    fn seed_scan() {
        let fields = json!({"scene": "SCENE_VALUE", "ticket": "TICKET"});
        let e = event_on(SEED_SCAN, "event.scan", fields);
        assert_eq!(e.type_, "scan");
    }

    #[test]
    fn seed_location() {
        let fields =
            json!({"latitude": 23.137466, "longitude": 113.352425, "precision": 119.38504});
        let e = event_on(SEED_LOCATION, "event.location", fields);
        assert_eq!(e.openid, "fromUser");
        assert!(e.extra.is_empty());
    }

    #[test]
    fn seed_click_and_view() {
        let click = event(SEED_CLICK).unwrap();
        assert_eq!(click.topic().suffix(), "event.click");
        assert_eq!(typed(&click), json!({"key": "EVENTKEY"}));
        let view = event(SEED_VIEW).unwrap();
        assert_eq!(view.topic().suffix(), "event.view");
        assert_eq!(typed(&view), json!({"url": "www.qq.com", "menu_id": null}));
    }

    #[test]
    fn seed_unsubscribe() {
        let xml = ev("<Event><![CDATA[unsubscribe]]></Event>");
        event_on(&xml, "event.unsubscribe", json!({}));
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
        let scene = |key: &str| {
            event(&ev(&format!(
                "<Event>subscribe</Event><EventKey><![CDATA[{key}]]></EventKey>"
            )))
            .unwrap()
            .text("scene")
            .map(str::to_owned)
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
        assert_eq!(e.text("msg_id"), Some("1234567890123456"));
        assert_eq!(e.text("content"), Some("hi"));
        assert!(e.extra.is_empty());
        assert!(
            e.id.contains(":message.text:m1234567890123456:h"),
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
        let base = EventId::new("gh_a", "o1", 1, Kind::Event, "subscribe", None, "0");
        for (account, openid, second, kind) in [
            ("gh_b", "o1", 1, Kind::Event),
            ("gh_a", "o2", 1, Kind::Event),
            ("gh_a", "o1", 2, Kind::Event),
            ("gh_a", "o1", 1, Kind::Message),
        ] {
            let other = EventId::new(account, openid, second, kind, "subscribe", None, "0");
            assert_ne!(base, other, "{account} {openid} {second} {kind:?}");
        }
        assert_ne!(
            EventId::new("gh_a", "o1", 1, Kind::Message, "text", Some("1"), "0"),
            EventId::new("gh_a", "o1", 1, Kind::Message, "text", Some("2"), "0")
        );
        // Events that differ only in a field the spec does not type are two events too
        // (WxJava issues 2231 and 2705): the digest covers every field, nested ones included.
        let session = |kf: &str| {
            id(&format!(
                "<Event>kf_create_session</Event><KfAccount>{kf}</KfAccount>"
            ))
        };
        assert_eq!(session("a@x"), session("a@x"));
        assert_ne!(session("a@x"), session("b@x"));
        assert_ne!(
            id("<Event>user_get_card</Event><CardId>c</CardId><UserCardCode>1</UserCardCode>"),
            id("<Event>user_get_card</Event><CardId>c</CardId><UserCardCode>2</UserCardCode>")
        );
        let pics = |md5: &str| {
            id(&format!(
                "<Event>pic_weixin</Event><EventKey>k</EventKey><SendPicsInfo><Count>1</Count>\
                 <PicList><item><PicMd5Sum>{md5}</PicMd5Sum></item></PicList></SendPicsInfo>"
            ))
        };
        assert_ne!(pics("aa"), pics("bb"));
        // A field moved to another parent, or a value split differently between two fields,
        // is another event: the canonical form is unambiguous.
        assert_ne!(
            id("<Event>x</Event><A>bc</A><B></B>"),
            id("<Event>x</Event><A>b</A><B>c</B>")
        );
        assert_ne!(
            id("<Event>x</Event><A><B>1</B></A>"),
            id("<Event>x</Event><B><A>1</A></B>")
        );
        // The order of the fields is not part of the identity.
        assert_eq!(
            id("<Event>x</Event><A>1</A><B>2</B>"),
            id("<Event>x</Event><B>2</B><A>1</A>")
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
        assert_eq!(typed(&e), json!({"key": "a&b中文<"}));
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
            let schema = schemas::json_schema(e.topic());
            let value = serde_json::to_value(&e).unwrap();
            assert!(jsonschema::is_valid(&schema, &value), "{file}: {value}");
        }
    }
}

#[cfg(test)]
mod component_tests {
    use super::*;
    use crate::parse::{ParseError, Push};
    use serde_json::json;

    const AT: &str = "2026-12-06T00:00:00.000Z";

    fn component(xml: &str) -> Result<Event, ParseError> {
        normalize_component(Push::component(xml.as_bytes())?, AT.into())
    }

    #[test]
    fn a_ticket_is_keyed_by_the_component() {
        let e = component("<xml><AppId>wxcomponent</AppId><CreateTime>1413192605</CreateTime><InfoType>component_verify_ticket</InfoType><ComponentVerifyTicket>ticket@@@x</ComponentVerifyTicket></xml>").unwrap();
        assert_eq!(
            e.topic().name("wechat"),
            "wechat.component.component_verify_ticket"
        );
        assert_eq!(
            (e.account.as_str(), e.openid.as_str()),
            ("wxcomponent", "wxcomponent")
        );
        assert_eq!(
            serde_json::Value::Object(e.fields),
            json!({"ticket": "ticket@@@x"})
        );
        assert!(e.extra.is_empty());
    }

    #[test]
    fn an_authorization_is_keyed_by_its_authorizer() {
        let e = component("<xml><AppId>wxcomponent</AppId><CreateTime>1413192760</CreateTime><InfoType>authorized</InfoType><AuthorizerAppid>wxauthorizer</AuthorizerAppid><AuthorizationCode>code</AuthorizationCode><AuthorizationCodeExpiredTime>1413196360</AuthorizationCodeExpiredTime><PreAuthCode>pre</PreAuthCode></xml>").unwrap();
        assert_eq!(e.topic().suffix(), "component.authorized");
        assert_eq!(e.openid, "wxauthorizer");
        assert_eq!(
            serde_json::Value::Object(e.fields),
            json!({"authorizer_appid": "wxauthorizer", "authorization_code": "code",
                   "authorization_code_expired_time": 1413196360, "pre_auth_code": "pre"})
        );
        let other = component("<xml><AppId>wxcomponent</AppId><CreateTime>1</CreateTime><InfoType>notify_third_fasteregister</InfoType></xml>").unwrap();
        assert_eq!(other.topic().suffix(), "component.other");
        assert_eq!(other.extra["InfoType"], "notify_third_fasteregister");
    }

    #[test]
    fn an_authorization_event_needs_its_three_fields() {
        for (xml, missing) in [
            (
                "<xml><CreateTime>1</CreateTime><InfoType>unauthorized</InfoType></xml>",
                "AppId",
            ),
            (
                "<xml><AppId>wx</AppId><InfoType>unauthorized</InfoType></xml>",
                "CreateTime",
            ),
            (
                "<xml><AppId>wx</AppId><CreateTime>1</CreateTime></xml>",
                "InfoType",
            ),
        ] {
            assert_eq!(component(xml).unwrap_err(), ParseError::Missing(missing));
        }
    }

    #[test]
    fn a_route_appid_is_in_the_record_and_its_identity() {
        let xml = "<xml><ToUserName>gh_a</ToUserName><FromUserName>o1</FromUserName><CreateTime>1</CreateTime><MsgType>event</MsgType><Event>subscribe</Event></xml>";
        let push = || Push::try_from(xml.as_bytes()).unwrap();
        let plain = normalize(push(), AT.into()).unwrap();
        let a = normalize_on(push(), AT.into(), Some("wxa")).unwrap();
        let b = normalize_on(push(), AT.into(), Some("wxb")).unwrap();
        assert_eq!(plain.appid, None);
        assert_eq!(a.appid.as_deref(), Some("wxa"));
        assert_ne!(a.id, b.id, "two routes, two identities");
        assert_ne!(a.id, plain.id);
        assert_eq!(serde_json::to_value(&a).unwrap()["appid"], "wxa");
        assert!(serde_json::to_value(&plain).unwrap().get("appid").is_none());
    }
}
