//! Generated pushes, signed the way WeChat signs them (plaintext or safe mode).

/// The kinds of push a load mixes, with the XML fields each carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushType {
    Subscribe,
    Unsubscribe,
    Scan,
    Location,
    Click,
    View,
    Text,
}

impl PushType {
    pub fn parse(name: &str) -> Option<PushType> {
        Some(match name {
            "subscribe" => PushType::Subscribe,
            "unsubscribe" => PushType::Unsubscribe,
            "scan" => PushType::Scan,
            "location" => PushType::Location,
            "click" => PushType::Click,
            "view" => PushType::View,
            "text" => PushType::Text,
            _ => return None,
        })
    }

    fn fields(self, seq: u64) -> String {
        match self {
            PushType::Subscribe => format!(
                "<MsgType><![CDATA[event]]></MsgType><Event><![CDATA[subscribe]]></Event>\
                 <EventKey><![CDATA[qrscene_{}]]></EventKey><Ticket><![CDATA[TICKET]]></Ticket>",
                seq % 100
            ),
            PushType::Unsubscribe => "<MsgType><![CDATA[event]]></MsgType><Event><![CDATA[unsubscribe]]></Event>".into(),
            PushType::Scan => format!(
                "<MsgType><![CDATA[event]]></MsgType><Event><![CDATA[SCAN]]></Event>\
                 <EventKey><![CDATA[{}]]></EventKey><Ticket><![CDATA[TICKET]]></Ticket>",
                seq % 100
            ),
            PushType::Location => format!(
                "<MsgType><![CDATA[event]]></MsgType><Event><![CDATA[LOCATION]]></Event>\
                 <Latitude>{:.6}</Latitude><Longitude>{:.6}</Longitude><Precision>30.000000</Precision>",
                23.0 + (seq % 1000) as f64 / 1000.0,
                113.0 + (seq % 997) as f64 / 1000.0
            ),
            PushType::Click => format!(
                "<MsgType><![CDATA[event]]></MsgType><Event><![CDATA[CLICK]]></Event><EventKey><![CDATA[MENU_{}]]></EventKey>",
                seq % 8
            ),
            PushType::View => "<MsgType><![CDATA[event]]></MsgType><Event><![CDATA[VIEW]]></Event>\
                 <EventKey><![CDATA[https://example.com/menu]]></EventKey>"
                .into(),
            PushType::Text => format!(
                "<MsgType><![CDATA[text]]></MsgType><Content><![CDATA[hello {seq}]]></Content><MsgId>{}</MsgId>",
                6_000_000_000_000_000_000u64 + seq
            ),
        }
    }
}

/// A weighted mix of push types: `subscribe=10,location=50,...`.
#[derive(Debug, Clone)]
pub struct Mix(Vec<(PushType, u32)>);

impl Mix {
    pub fn parse(text: &str) -> Result<Mix, String> {
        let mut entries = Vec::new();
        for part in text.split(',').filter(|p| !p.is_empty()) {
            let (name, weight) = part.split_once('=').unwrap_or((part, "1"));
            let kind = PushType::parse(name.trim())
                .ok_or_else(|| format!("unknown push type {name:?}"))?;
            let weight: u32 = weight
                .trim()
                .parse()
                .map_err(|_| format!("bad weight in {part:?}"))?;
            entries.push((kind, weight));
        }
        if entries.iter().map(|(_, w)| w).sum::<u32>() == 0 {
            return Err("the mix is empty".into());
        }
        Ok(Mix(entries))
    }

    /// The type of push number `seq`: deterministic, in the mix's proportions.
    pub fn pick(&self, seq: u64) -> PushType {
        let total: u64 = self.0.iter().map(|(_, w)| u64::from(*w)).sum();
        // Spread the sequence over the weights without a pattern that lines up with users.
        let mut at = seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) % total;
        for (kind, weight) in &self.0 {
            if at < u64::from(*weight) {
                return *kind;
            }
            at -= u64::from(*weight);
        }
        self.0[0].0
    }
}

/// A number unique to this process, so two runs never share nonces.
pub(crate) fn run_salt() -> &'static str {
    static SALT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SALT.get_or_init(|| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        format!("{}{:09}x", std::process::id(), now.subsec_nanos())
    })
}

pub use wechat::Signer;

/// Where pushes go: an account's own URL, or an Open Platform authorizer's route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `ToUserName` of every push: the account's `gh_` id.
    pub account: String,
    /// The path pushes are POSTed to.
    pub path: String,
    /// The authorizer AppID of a component route (`{path}` ends in it), which the ingress
    /// puts in the record and its identity; `None` on an account's own URL.
    pub appid: Option<String>,
}

impl Target {
    /// An account's own URL.
    pub fn account(account: &str, path: &str) -> Target {
        Target {
            account: account.to_owned(),
            path: path.to_owned(),
            appid: None,
        }
    }
}

/// One push, ready to send (and to send again, identically, on retry).
#[derive(Debug, Clone)]
pub struct Request {
    pub path_and_query: String,
    pub body: String,
    pub id: schemas::EventId,
}

/// Builds push number `seq`: user `seq % users`, `CreateTime` advancing one second per round
/// of users but never past now (the ingress refuses a `CreateTime` ahead of the signed
/// timestamp), and a `LoadSeq` element, so no two pushes share an identity.
pub fn build(
    seq: u64,
    users: u64,
    base_time: i64,
    mix: &Mix,
    target: &Target,
    signer: &Signer,
) -> Request {
    let account = &target.account;
    let kind = mix.pick(seq);
    let openid = format!("oLoad{:012}", seq % users);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let created_at = (base_time + (seq / users) as i64).min(now as i64);
    let xml = format!(
        "<xml><ToUserName><![CDATA[{account}]]></ToUserName><FromUserName><![CDATA[{openid}]]></FromUserName>\
         <CreateTime>{created_at}</CreateTime>{}<LoadSeq>{seq}</LoadSeq></xml>",
        kind.fields(seq)
    );
    let push = wechat::parse::Push::try_from(xml.as_bytes()).expect("generated pushes parse");
    let id = wechat::normalize::normalize_on(push, String::new(), target.appid.as_deref())
        .expect("generated pushes normalize")
        .id;
    let timestamp = now.to_string();
    // A nonce no other push of any run reuses (the ingress refuses a (timestamp, nonce) pair
    // that comes back with another body).
    let nonce = format!("{}{seq}", run_salt());
    let mut random = [0u8; 16];
    random[..8].copy_from_slice(&seq.to_le_bytes());
    let signed = signer.push(&xml, account, &timestamp, &nonce, random);
    let (path_and_query, body) = (format!("{}?{}", target.path, signed.query), signed.body);
    Request {
        path_and_query,
        body,
        id,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wechat::decrypt::AesKey;

    #[test]
    fn the_mix_keeps_its_proportions() {
        let mix = Mix::parse("subscribe=1,location=3").unwrap();
        let locations = (0..10_000)
            .filter(|s| mix.pick(*s) == PushType::Location)
            .count();
        assert!((7_000..8_000).contains(&locations), "{locations}");
        assert!(Mix::parse("nope=1").is_err());
        assert!(Mix::parse("click=0").is_err());
    }

    #[test]
    fn every_push_has_its_own_identity_and_passes_the_ingress_checks() {
        let mix = Mix::parse("subscribe,unsubscribe,scan,location,click,view,text").unwrap();
        let signer = Signer::plaintext("t");
        let target = Target::account("gh_load", "/wechat");
        let mut ids = std::collections::HashSet::new();
        for seq in 0..2_000 {
            let r = build(seq, 100, 1_700_000_000, &mix, &target, &signer);
            assert!(ids.insert(r.id.clone()), "{}", r.id);
        }
        // Many rounds of few users from now on: CreateTime never passes the signed timestamp.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        for seq in (0..100_000).step_by(997) {
            let r = build(seq, 10, now, &mix, &target, &signer);
            let push = wechat::parse::Push::try_from(r.body.as_bytes()).unwrap();
            let timestamp: i64 = r
                .path_and_query
                .split("timestamp=")
                .nth(1)
                .and_then(|t| t.split('&').next())
                .unwrap()
                .parse()
                .unwrap();
            assert!(push.create_time <= timestamp, "{seq}");
            assert!(ids.insert(r.id.clone()), "{}", r.id);
        }
    }

    #[test]
    fn safe_mode_pushes_decrypt() {
        let key = AesKey::parse("abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG").unwrap();
        let signer = Signer::encrypted("t", key.clone(), "wxapp");
        let r = build(
            7,
            10,
            1_700_000_000,
            &Mix::parse("text").unwrap(),
            &Target::account("gh_load", "/wechat"),
            &signer,
        );
        assert!(r.path_and_query.contains("encrypt_type=aes"));
        let envelope = wechat::parse::parse_document(r.body.as_bytes()).unwrap();
        let encrypt = envelope
            .iter()
            .find(|(n, _)| n == "Encrypt")
            .unwrap()
            .1
            .as_str()
            .unwrap();
        let xml = key.decrypt(encrypt, "wxapp").unwrap();
        assert!(String::from_utf8(xml).unwrap().contains("hello 7"));
    }

    /// An account's own URL gets the pushes wxload sent before the component mode, byte for
    /// byte (bodies, path, query's shape, identities: taken from the release before it).
    #[test]
    fn an_accounts_pushes_are_what_they_were() {
        let mix = Mix::parse("subscribe,unsubscribe,scan,location,click,view,text").unwrap();
        let target = Target::account("gh_load", "/wechat");
        let golden = [
            (0, "<xml><ToUserName><![CDATA[gh_load]]></ToUserName><FromUserName><![CDATA[oLoad000000000000]]></FromUserName><CreateTime>1700000000</CreateTime><MsgType><![CDATA[event]]></MsgType><Event><![CDATA[subscribe]]></Event><EventKey><![CDATA[qrscene_0]]></EventKey><Ticket><![CDATA[TICKET]]></Ticket><LoadSeq>0</LoadSeq></xml>",
             "gh_load:oLoad000000000000:1700000000:event.subscribe:ha92bcb669b500c74"),
            (12, "<xml><ToUserName><![CDATA[gh_load]]></ToUserName><FromUserName><![CDATA[oLoad000000000002]]></FromUserName><CreateTime>1700000001</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[hello 12]]></Content><MsgId>6000000000000000012</MsgId><LoadSeq>12</LoadSeq></xml>",
             "gh_load:oLoad000000000002:1700000001:message.text:m6000000000000000012:h4e82e79c311f45a1"),
        ];
        for (seq, body, id) in golden {
            let r = build(
                seq,
                10,
                1_700_000_000,
                &mix,
                &target,
                &Signer::plaintext("t"),
            );
            assert_eq!(r.body, body);
            assert_eq!(r.id.to_string(), id);
            let (path, query) = r.path_and_query.split_once('?').unwrap();
            assert_eq!(path, "/wechat");
            let names: Vec<&str> = query
                .split('&')
                .map(|kv| kv.split_once('=').unwrap().0)
                .collect();
            assert_eq!(names, ["signature", "timestamp", "nonce"]);
        }
    }
}
