//! The query string WeChat signs every request with.

/// The parameters of a WeChat request's query string; the first of each counts.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Query {
    pub signature: Option<String>,
    pub timestamp: Option<String>,
    pub nonce: Option<String>,
    pub echostr: Option<String>,
    /// `aes` in compatible and safe mode.
    pub encrypt_type: Option<String>,
    pub msg_signature: Option<String>,
}

impl Query {
    pub fn parse(query: Option<&str>) -> Query {
        let mut q = Query::default();
        for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            let slot = match key.as_ref() {
                "signature" => &mut q.signature,
                "timestamp" => &mut q.timestamp,
                "nonce" => &mut q.nonce,
                "echostr" => &mut q.echostr,
                "encrypt_type" => &mut q.encrypt_type,
                "msg_signature" => &mut q.msg_signature,
                _ => continue,
            };
            slot.get_or_insert_with(|| value.into_owned());
        }
        q
    }
}
