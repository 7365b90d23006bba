//! Open Platform (component) traffic, as WeChat sends it to a third-party platform: encrypted
//! authorization events (`component_verify_ticket`, `authorized`) to `{base}/component/auth`,
//! and the authorizers' ordinary pushes to `{base}/component/{authorizer AppID}`, all signed
//! with the component's Token and encrypted with its key for the **component's** AppID.

use wechat::decrypt::AesKey;

use crate::push::{run_salt, Request, Signer, Target};

/// A third-party platform (component) that wxload plays WeChat for.
#[derive(Debug, Clone)]
pub struct Component {
    appid: String,
    key: AesKey,
    signer: Signer,
    /// The ingress path the routes hang below (`/wechat`), without a trailing `/`.
    base: String,
}

impl Component {
    /// The component `appid` with its message `token` and EncodingAESKey `key`, served below
    /// the URL path `base`.
    pub fn new(appid: &str, token: &str, key: AesKey, base: &str) -> Component {
        Component {
            appid: appid.to_owned(),
            signer: Signer::encrypted(token, key.clone(), appid),
            key,
            base: base.trim_end_matches('/').to_owned(),
        }
    }

    /// Signs the authorizers' pushes: safe mode with the component's Token, key and AppID.
    pub fn signer(&self) -> &Signer {
        &self.signer
    }

    /// Where the authorization events go.
    pub fn auth_path(&self) -> String {
        format!("{}/component/auth", self.base)
    }

    /// Authorizer number `i`: AppID `wxauthorizer{i}`, `gh_authorizer{i}` in every push, on
    /// its route `{base}/component/wxauthorizer{i}`.
    pub fn authorizer(&self, i: u64) -> Target {
        let appid = format!("wxauthorizer{i}");
        Target {
            account: format!("gh_authorizer{i}"),
            path: format!("{}/component/{appid}", self.base),
            appid: Some(appid),
        }
    }

    /// Ticket push number `n` at `now` (Unix seconds): a ticket no other run or push repeats.
    pub fn ticket(&self, n: u64, now: i64) -> Request {
        let xml = format!(
            "<xml><AppId><![CDATA[{}]]></AppId><CreateTime>{now}</CreateTime>\
             <InfoType><![CDATA[component_verify_ticket]]></InfoType>\
             <ComponentVerifyTicket><![CDATA[ticket@@@wxload-{}{n}]]></ComponentVerifyTicket></xml>",
            self.appid,
            run_salt()
        );
        self.event(&xml, now, &format!("{}t{n}", run_salt()), n)
    }

    /// The `authorized` event of `authorizer` (from [`Component::authorizer`]) at `now`, with
    /// codes of this run.
    pub fn authorized(&self, authorizer: &Target, now: i64) -> Request {
        let appid = authorizer
            .appid
            .as_deref()
            .expect("an authorizer's target names its AppID");
        let salt = run_salt();
        let xml = format!(
            "<xml><AppId><![CDATA[{}]]></AppId><CreateTime>{now}</CreateTime>\
             <InfoType><![CDATA[authorized]]></InfoType>\
             <AuthorizerAppid><![CDATA[{appid}]]></AuthorizerAppid>\
             <AuthorizationCode><![CDATA[queryauthcode@@@wxload-{salt}{appid}]]></AuthorizationCode>\
             <AuthorizationCodeExpiredTime>{}</AuthorizationCodeExpiredTime>\
             <PreAuthCode><![CDATA[preauthcode@@@wxload-{salt}{appid}]]></PreAuthCode></xml>",
            self.appid,
            now + 3600
        );
        self.event(&xml, now, &format!("{salt}a{appid}"), 0)
    }

    /// An authorization event as WeChat posts it: `<xml><AppId>…</AppId><Encrypt>…</Encrypt></xml>`
    /// with `signature`, `timestamp`, `nonce`, `encrypt_type=aes` and `msg_signature`.
    fn event(&self, xml: &str, now: i64, nonce: &str, n: u64) -> Request {
        let push = wechat::parse::Push::component(xml.as_bytes()).expect("generated events parse");
        let id = wechat::normalize::normalize_component(push, String::new())
            .expect("generated events normalize")
            .id;
        let timestamp = now.to_string();
        let mut random = [0u8; 16];
        random[..8].copy_from_slice(&n.to_le_bytes());
        random[8] = b'c';
        let encrypt = self.key.encrypt(xml.as_bytes(), &self.appid, random);
        Request {
            path_and_query: format!(
                "{}?{}&encrypt_type=aes&msg_signature={}",
                self.auth_path(),
                self.signer.query(&timestamp, nonce),
                self.signer.msg_signature(&timestamp, nonce, &encrypt)
            ),
            body: format!(
                "<xml><AppId><![CDATA[{}]]></AppId><Encrypt><![CDATA[{encrypt}]]></Encrypt></xml>",
                self.appid
            ),
            id,
        }
    }
}

/// The component the tests load with.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    pub(crate) const KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";

    /// `wxcomponent`, token `ctoken`, its routes below `prefix`.
    pub(crate) fn component(prefix: &str) -> Component {
        Component::new("wxcomponent", "ctoken", AesKey::parse(KEY).unwrap(), prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::testing::KEY;
    use super::*;
    use crate::push::{build, Mix};
    use wechat::parse::{parse_document, Push};
    use wechat::verify::check;
    use wechat::Query;

    fn component() -> Component {
        super::testing::component("/wechat/")
    }

    /// Checks a request as the ingress does (both signatures with the component's token, the
    /// envelope's `outer` element, decryption for the component's AppID) and returns the
    /// path and the decrypted XML.
    fn open(request: &Request, outer: &str) -> (String, String) {
        let (path, query) = request.path_and_query.split_once('?').unwrap();
        let query = Query::parse(Some(query));
        let (timestamp, nonce) = (
            query.timestamp.as_deref().unwrap(),
            query.nonce.as_deref().unwrap(),
        );
        check(
            query.signature.as_deref().unwrap(),
            &mut ["ctoken", timestamp, nonce],
        )
        .unwrap();
        assert_eq!(query.encrypt_type.as_deref(), Some("aes"));
        let envelope = parse_document(request.body.as_bytes()).unwrap();
        assert_eq!(envelope.len(), 2, "{}", request.body);
        let field = |name: &str| {
            envelope
                .iter()
                .find(|(n, _)| n == name)
                .and_then(|(_, v)| v.as_str())
                .unwrap_or_else(|| panic!("no {name} in {}", request.body))
                .to_owned()
        };
        let encrypt = field("Encrypt");
        check(
            query.msg_signature.as_deref().unwrap(),
            &mut ["ctoken", timestamp, nonce, &encrypt],
        )
        .unwrap();
        assert!(check(
            query.msg_signature.as_deref().unwrap(),
            &mut ["other", timestamp, nonce, &encrypt],
        )
        .is_err());
        let key = AesKey::parse(KEY).unwrap();
        // Encrypted for the component, and for nothing else (not the authorizer).
        assert!(key.decrypt(&encrypt, "wxauthorizer0").is_err());
        let xml = String::from_utf8(key.decrypt(&encrypt, "wxcomponent").unwrap()).unwrap();
        let outer_value = field(outer);
        if outer == "AppId" {
            assert_eq!(outer_value, "wxcomponent");
        } else {
            assert!(xml.contains(&format!("<{outer}><![CDATA[{outer_value}]]>")));
        }
        (path.to_owned(), xml)
    }

    #[test]
    fn authorizers_are_numbered_routes_with_their_own_gh_id() {
        let c = component();
        assert_eq!(c.auth_path(), "/wechat/component/auth");
        assert_eq!(
            c.authorizer(3),
            Target {
                account: "gh_authorizer3".into(),
                path: "/wechat/component/wxauthorizer3".into(),
                appid: Some("wxauthorizer3".into()),
            }
        );
        let root = Component::new("wxc", "t", AesKey::parse(KEY).unwrap(), "/");
        assert_eq!(root.auth_path(), "/component/auth");
        assert_eq!(root.authorizer(0).path, "/component/wxauthorizer0");
    }

    #[test]
    fn a_ticket_verifies_decrypts_and_is_a_component_record() {
        let c = component();
        let now = 1_700_000_000;
        let (first, second) = (c.ticket(0, now), c.ticket(1, now));
        for ticket in [&first, &second] {
            let (path, xml) = open(ticket, "AppId");
            assert_eq!(path, "/wechat/component/auth");
            let event = wechat::normalize::normalize_component(
                Push::component(xml.as_bytes()).unwrap(),
                String::new(),
            )
            .unwrap();
            assert_eq!(event.id, ticket.id);
            assert_eq!(
                event.topic().name("wechat"),
                "wechat.component.component_verify_ticket"
            );
            assert_eq!(event.account, "wxcomponent");
            assert_eq!(event.created_at, now);
            assert!(xml.contains("<ComponentVerifyTicket><![CDATA[ticket@@@"));
        }
        // Two tickets in the same second are two records, signed with two nonces.
        assert_ne!(first.id, second.id);
        let nonce = |r: &Request| Query::parse(r.path_and_query.split_once('?').map(|p| p.1)).nonce;
        assert_ne!(nonce(&first), nonce(&second));
    }

    #[test]
    fn an_authorization_names_its_authorizer_and_is_a_component_record() {
        let c = component();
        let now = 1_700_000_000;
        let mut ids = std::collections::HashSet::new();
        let mut nonces = std::collections::HashSet::new();
        for i in 0..5 {
            let authorizer = c.authorizer(i);
            let request = c.authorized(&authorizer, now);
            let (path, xml) = open(&request, "AppId");
            assert_eq!(path, "/wechat/component/auth");
            let fields = parse_document(xml.as_bytes()).unwrap();
            let field = |name: &str| {
                fields
                    .iter()
                    .find(|(n, _)| n == name)
                    .and_then(|(_, v)| v.as_str())
                    .unwrap_or_else(|| panic!("no {name} in {xml}"))
                    .to_owned()
            };
            assert_eq!(field("InfoType"), "authorized");
            assert_eq!(field("AuthorizerAppid"), format!("wxauthorizer{i}"));
            assert!(field("AuthorizationCode").starts_with("queryauthcode@@@"));
            assert!(field("PreAuthCode").starts_with("preauthcode@@@"));
            assert_eq!(
                field("AuthorizationCodeExpiredTime"),
                (now + 3600).to_string()
            );
            let event = wechat::normalize::normalize_component(
                Push::component(xml.as_bytes()).unwrap(),
                String::new(),
            )
            .unwrap();
            assert_eq!(event.id, request.id);
            assert_eq!(event.topic().suffix(), "component.authorized");
            assert!(ids.insert(request.id.clone()));
            assert!(nonces
                .insert(Query::parse(request.path_and_query.split_once('?').map(|p| p.1)).nonce));
        }
    }

    #[test]
    fn authorizer_pushes_go_to_their_route_encrypted_for_the_component() {
        let c = component();
        let mix = Mix::parse("subscribe,text,location").unwrap();
        let authorizers: Vec<Target> = (0..4).map(|i| c.authorizer(i)).collect();
        let mut ids = std::collections::HashSet::new();
        for seq in 0..40 {
            let target = &authorizers[(seq % 4) as usize];
            let request = build(seq, 7, 1_700_000_000, &mix, target, c.signer());
            let (path, xml) = open(&request, "ToUserName");
            assert_eq!(path, target.path);
            let push = Push::try_from(xml.as_bytes()).unwrap();
            // The authorizer's one gh_ id, in the envelope and inside.
            assert_eq!(push.to_user, target.account);
            let event = wechat::normalize::normalize_on(
                push.clone(),
                String::new(),
                target.appid.as_deref(),
            )
            .unwrap();
            // The identity the ingress gives it covers the route's AppID.
            assert_eq!(event.id, request.id);
            assert_ne!(
                wechat::normalize::normalize(push, String::new())
                    .unwrap()
                    .id,
                request.id
            );
            assert!(ids.insert(request.id));
        }
    }
}
