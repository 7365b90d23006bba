//! XML body → [`Push`]: a strict, small XML reader over quick-xml.
//!
//! WeChat pushes are one `<xml>` element of simple children. Everything XML allows beyond
//! that and a push never needs is refused: a DOCTYPE (so no entity can be declared, let alone
//! expanded), entity references other than the five predefined ones and character references,
//! processing instructions, text mixed with elements, and anything after the root element.
//! Depth and element count are bounded, so no input can make the parser work hard.

use quick_xml::events::Event as Xml;
use quick_xml::Reader;
use serde_json::{Map, Value};

/// How deep elements may nest below `<xml>` (WeChat's deepest is 3: `SendPicsInfo/PicList/item`).
const MAX_DEPTH: usize = 8;
/// How many elements one push may hold.
const MAX_ELEMENTS: usize = 1024;

/// Why a body is not a push: always a 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("body is not UTF-8")]
    NotUtf8,
    #[error("not well-formed XML: {0}")]
    Xml(String),
    #[error("DOCTYPE is not accepted")]
    Doctype,
    #[error("entity reference `&{0};` is not accepted")]
    Entity(String),
    #[error("processing instructions are not accepted")]
    ProcessingInstruction,
    #[error("root element must be <xml>")]
    Root,
    #[error("content after the root element")]
    Trailing,
    #[error("elements nested too deep or too many")]
    TooComplex,
    #[error("text mixed with elements in <{0}>")]
    Mixed(String),
    #[error("<{0}> appears more than once")]
    Duplicate(String),
    #[error("missing <{0}>")]
    Missing(&'static str),
    #[error("<{0}> is malformed")]
    BadField(&'static str),
}

/// A push as WeChat sent it: the four fields every push has, and the rest in document order.
#[derive(Debug, Clone, PartialEq)]
pub struct Push {
    pub to_user: String,
    pub from_user: String,
    pub create_time: i64,
    pub msg_type: String,
    /// Every other child of `<xml>`: a leaf is a string; a nested element an object of its
    /// children, with repeated children as an array.
    pub fields: Vec<(String, Value)>,
}

impl Push {
    /// The value of a leaf field.
    pub fn text(&self, name: &str) -> Option<&str> {
        self.fields.iter().find_map(|(n, v)| match v {
            Value::String(s) if n == name => Some(s.as_str()),
            _ => None,
        })
    }

    /// Removes and returns a leaf field.
    pub fn take_text(&mut self, name: &str) -> Option<String> {
        let at = self
            .fields
            .iter()
            .position(|(n, v)| n == name && v.is_string())?;
        match self.fields.remove(at).1 {
            Value::String(s) => Some(s),
            _ => None,
        }
    }
}

impl Push {
    /// An Open Platform authorization event (the decrypted XML a component's authorization
    /// URL receives) as a push: `AppId` (the component) in the place of `ToUserName`,
    /// `AuthorizerAppid` (the component's `AppId` in a ticket) in the place of
    /// `FromUserName`, and `InfoType` in the place of `MsgType`.
    pub fn component(body: &[u8]) -> Result<Push, ParseError> {
        envelope(
            body,
            "AppId",
            Sender::OrRecipient("AuthorizerAppid"),
            "InfoType",
        )
    }
}

/// Where a document names its sender.
enum Sender {
    /// A leaf that must be there.
    Required(&'static str),
    /// A leaf that may be absent or blank (then the recipient stands for it); kept in the
    /// fields.
    OrRecipient(&'static str),
}

/// Parses a document whose envelope (recipient, sender, `CreateTime`, kind) goes by these
/// names, taking the envelope's leaves out of the fields.
fn envelope(
    body: &[u8],
    recipient: &'static str,
    sender: Sender,
    kind: &'static str,
) -> Result<Push, ParseError> {
    let mut fields = parse_document(body)?;
    let to_user = take_required(&mut fields, recipient)?;
    let from_user = match sender {
        Sender::Required(name) => Some(take_required(&mut fields, name)?),
        Sender::OrRecipient(_) => None,
    };
    let create_time = create_time(take_required(&mut fields, "CreateTime")?)?;
    let msg_type = take_required(&mut fields, kind)?;
    let from_user = match (from_user, sender) {
        (Some(from), _) => from,
        (None, Sender::OrRecipient(name) | Sender::Required(name)) => fields
            .iter()
            .find_map(|(n, v)| match v {
                Value::String(s) if n == name && !s.trim().is_empty() => Some(s.clone()),
                _ => None,
            })
            .unwrap_or_else(|| to_user.clone()),
    };
    Ok(Push {
        to_user,
        from_user,
        create_time,
        msg_type,
        fields,
    })
}

/// Removes a leaf that must be there and not blank.
fn take_required(
    fields: &mut Vec<(String, Value)>,
    name: &'static str,
) -> Result<String, ParseError> {
    let at = fields
        .iter()
        .position(|(n, _)| n == name)
        .ok_or(ParseError::Missing(name))?;
    match fields.remove(at).1 {
        Value::String(s) if !s.trim().is_empty() => Ok(s),
        Value::String(_) => Err(ParseError::Missing(name)),
        _ => Err(ParseError::BadField(name)),
    }
}

fn create_time(text: String) -> Result<i64, ParseError> {
    text.trim()
        .parse::<i64>()
        .ok()
        .filter(|t| *t >= 0)
        .ok_or(ParseError::BadField("CreateTime"))
}

impl TryFrom<&[u8]> for Push {
    type Error = ParseError;

    fn try_from(body: &[u8]) -> Result<Self, ParseError> {
        envelope(
            body,
            "ToUserName",
            Sender::Required("FromUserName"),
            "MsgType",
        )
    }
}

/// An element being read.
struct Frame {
    name: String,
    text: String,
    children: Vec<(String, Value)>,
}

impl Frame {
    fn new(name: String) -> Self {
        Frame {
            name,
            text: String::new(),
            children: Vec::new(),
        }
    }

    /// The element's value once its end tag is read.
    fn finish(self) -> Result<(String, Value), ParseError> {
        if self.children.is_empty() {
            return Ok((self.name, Value::String(self.text)));
        }
        if !self.text.trim().is_empty() {
            return Err(ParseError::Mixed(self.name));
        }
        let mut object = Map::new();
        for (name, value) in self.children {
            match object.get_mut(&name) {
                None => {
                    object.insert(name, value);
                }
                Some(Value::Array(items)) => items.push(value),
                Some(first) => {
                    let first = first.take();
                    object.insert(name, Value::Array(vec![first, value]));
                }
            }
        }
        Ok((self.name, Value::Object(object)))
    }
}

fn xml_error(e: impl std::fmt::Display) -> ParseError {
    ParseError::Xml(e.to_string())
}

fn name_of(raw: &[u8]) -> Result<String, ParseError> {
    std::str::from_utf8(raw)
        .map(str::to_owned)
        .map_err(|_| ParseError::NotUtf8)
}

/// Reads `<xml>…</xml>` and returns its children in document order, refusing duplicates
/// among them (the envelope of an encrypted push is read with this too).
pub fn parse_document(body: &[u8]) -> Result<Vec<(String, Value)>, ParseError> {
    let text = std::str::from_utf8(body).map_err(|_| ParseError::NotUtf8)?;
    let mut reader = Reader::from_str(text);
    reader.config_mut().check_end_names = true;

    let mut stack: Vec<Frame> = Vec::new();
    let mut root: Option<Vec<(String, Value)>> = None;
    let mut elements = 0usize;
    let mut first = true;

    loop {
        let event = reader.read_event().map_err(xml_error)?;
        let at_start = std::mem::take(&mut first);
        let depth = stack.len();
        let Some(top) = stack.last_mut() else {
            // Outside the root element: before it, a declaration, comments and white space;
            // after it, comments and white space.
            match event {
                Xml::Eof => break,
                Xml::Comment(_) => continue,
                Xml::Text(t) if t.iter().all(u8::is_ascii_whitespace) => continue,
                Xml::Decl(_) if at_start => continue,
                _ if root.is_some() => return Err(ParseError::Trailing),
                Xml::DocType(_) => return Err(ParseError::Doctype),
                Xml::PI(_) => return Err(ParseError::ProcessingInstruction),
                Xml::Start(e) if e.name().as_ref() == b"xml" => {
                    stack.push(Frame::new("xml".into()));
                    continue;
                }
                Xml::Empty(e) if e.name().as_ref() == b"xml" => {
                    root = Some(Vec::new());
                    continue;
                }
                Xml::Start(_) | Xml::Empty(_) => return Err(ParseError::Root),
                _ => return Err(ParseError::Xml("content before the root element".into())),
            }
        };
        match event {
            Xml::Start(_) | Xml::Empty(_) if depth > MAX_DEPTH || elements >= MAX_ELEMENTS => {
                return Err(ParseError::TooComplex);
            }
            Xml::Start(e) => {
                elements += 1;
                stack.push(Frame::new(name_of(e.name().as_ref())?));
            }
            Xml::Empty(e) => {
                elements += 1;
                top.children
                    .push((name_of(e.name().as_ref())?, Value::String(String::new())));
            }
            Xml::End(_) => {
                let frame = stack.pop().expect("inside an element");
                match stack.last_mut() {
                    Some(parent) => parent.children.push(frame.finish()?),
                    None => root = Some(root_children(frame)?),
                }
            }
            Xml::Text(t) => top.text.push_str(&t.xml_content().map_err(xml_error)?),
            Xml::CData(t) => top.text.push_str(&t.decode().map_err(xml_error)?),
            Xml::GeneralRef(r) => {
                if let Some(ch) = r.resolve_char_ref().map_err(xml_error)? {
                    top.text.push(ch);
                } else {
                    let name = r.decode().map_err(xml_error)?;
                    match quick_xml::escape::resolve_predefined_entity(&name) {
                        Some(s) => top.text.push_str(s),
                        None => return Err(ParseError::Entity(name.into_owned())),
                    }
                }
            }
            Xml::Comment(_) => {}
            Xml::DocType(_) => return Err(ParseError::Doctype),
            Xml::PI(_) => return Err(ParseError::ProcessingInstruction),
            Xml::Decl(_) => return Err(ParseError::Xml("misplaced XML declaration".into())),
            Xml::Eof => return Err(ParseError::Xml("unexpected end of document".into())),
        }
    }
    root.ok_or_else(|| ParseError::Xml("no root element".into()))
}

/// The root's children in document order, refusing a name that appears twice: a push whose
/// fields are ambiguous is not one we can normalize faithfully.
fn root_children(root: Frame) -> Result<Vec<(String, Value)>, ParseError> {
    if !root.text.trim().is_empty() {
        return Err(ParseError::Mixed(root.name));
    }
    for (i, (name, _)) in root.children.iter().enumerate() {
        if root.children[..i].iter().any(|(n, _)| n == name) {
            return Err(ParseError::Duplicate(name.clone()));
        }
    }
    Ok(root.children)
}
