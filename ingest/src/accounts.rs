//! The accounts one deployment serves: the `WECHAT_*` settings at `{INGEST_PATH}`, and each
//! `[accounts.NAME]` of the `INGEST_ACCOUNTS` TOML file at `{INGEST_PATH}/NAME`. Each account
//! is verified with its own secrets only.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::{Config, Secret};
use wechat::decrypt::AesKey;

/// One Official Account.
#[derive(Debug)]
pub struct Account {
    /// `default` for the `WECHAT_*` account, else the table name.
    pub name: String,
    pub token: Secret,
    pub appid: Option<String>,
    /// Present: compatible and safe mode are accepted.
    pub aes_key: Option<AesKey>,
    pub appsecret: Option<Secret>,
    /// The `gh_…` id; when set, a push whose `ToUserName` differs is refused. Unset only when
    /// it is the one account served: then any `ToUserName` is taken.
    pub original_id: Option<String>,
    /// With an AES key, plaintext pushes are refused unless this is set: WeChat always sends
    /// `encrypt_type=aes` in compatible and safe mode, so a plaintext push is a downgrade.
    pub accept_plaintext: bool,
}

/// Every served account, by the path it is served at.
#[derive(Debug, Default)]
pub struct Accounts {
    by_path: HashMap<String, Arc<Account>>,
}

fn build(
    name: &str,
    token: &str,
    appid: Option<String>,
    aes_key: Option<&str>,
    appsecret: Option<String>,
    original_id: Option<String>,
    accept_plaintext: bool,
) -> Result<Account, String> {
    if token.is_empty() {
        return Err(format!("account {name}: token is empty"));
    }
    let aes_key = match aes_key.filter(|k| !k.is_empty()) {
        None => None,
        Some(key) => {
            if appid.as_deref().is_none_or(str::is_empty) {
                return Err(format!(
                    "account {name}: an EncodingAESKey needs the AppID too (it is checked inside every encrypted push)"
                ));
            }
            Some(AesKey::parse(key).map_err(|e| format!("account {name}: {e}"))?)
        }
    };
    Ok(Account {
        name: name.to_owned(),
        token: Secret::new(token),
        appid,
        aes_key,
        appsecret: appsecret.filter(|s| !s.is_empty()).map(Secret::new),
        original_id: original_id.filter(|s| !s.is_empty()),
        accept_plaintext,
    })
}

impl Accounts {
    /// The accounts a config names: a clear message when any is unusable.
    pub fn load(config: &Config) -> Result<Accounts, String> {
        let mut accounts = Accounts::default();
        if let Some(token) = config.token.as_ref().filter(|t| !t.expose().is_empty()) {
            let account = build(
                "default",
                token.expose(),
                config.shared.appid.clone(),
                config.encoding_aes_key.as_ref().map(Secret::expose),
                config
                    .shared
                    .appsecret
                    .as_ref()
                    .map(|s| s.expose().to_owned()),
                config.shared.original_id.clone(),
                config.accept_plaintext,
            )?;
            accounts
                .by_path
                .insert(config.path.clone(), Arc::new(account));
        }
        if let Some(file) = config.shared.accounts()? {
            for (name, entry) in file.accounts {
                // The name keys the account's nonce bindings and metrics.
                if accounts.by_path.contains_key(&config.path) && name == "default" {
                    return Err("account name \"default\" is taken by the WECHAT_* account: rename the table in INGEST_ACCOUNTS".into());
                }
                let account = build(
                    &name,
                    entry.token.expose(),
                    entry.appid,
                    entry.encoding_aes_key.as_ref().map(Secret::expose),
                    entry.appsecret.map(|s| s.expose().to_owned()),
                    entry.original_id,
                    entry.accept_plaintext,
                )?;
                let path = format!("{}/{name}", config.path.trim_end_matches('/'));
                accounts.by_path.insert(path, Arc::new(account));
            }
        }
        // An Open Platform component alone is served too (see `component`). It is no account
        // for the original_id rule below, but its authorizers are accounts: beside it, an
        // account without its gh_ id would speak for theirs.
        let component = config.shared.component()?;
        if accounts.by_path.is_empty() && component.is_none() {
            return Err("no account configured: set WECHAT_TOKEN, or INGEST_ACCOUNTS with at least one [accounts.NAME], or an Open Platform component (WECHAT_COMPONENT_* or [component])".into());
        }
        wechat::accounts::check_original_ids(
            accounts.iter().map(|(path, a)| {
                let setting = if path == config.path {
                    "WECHAT_ORIGINAL_ID"
                } else {
                    "original_id in its [accounts.NAME] table"
                };
                (a.name.as_str(), a.original_id.as_deref(), setting)
            }),
            component.is_some(),
        )?;
        Ok(accounts)
    }

    /// The account served at a request path.
    pub fn at(&self, path: &str) -> Option<&Arc<Account>> {
        self.by_path.get(path)
    }

    pub fn len(&self) -> usize {
        self.by_path.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_path.is_empty()
    }

    /// (path, account) pairs, sorted by path.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Arc<Account>)> {
        let mut all: Vec<_> = self.by_path.iter().map(|(p, a)| (p.as_str(), a)).collect();
        all.sort_by_key(|(p, _)| *p);
        all.into_iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_with_file(toml: &str) -> Config {
        static FILES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "wxpipe-accounts-{}-{}",
            std::process::id(),
            FILES.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("accounts.toml");
        std::fs::write(&file, toml).unwrap();
        let mut config = Config::for_token("t");
        config.token = None;
        config.shared.accounts_file = Some(file);
        config
    }

    #[test]
    fn accounts_are_served_under_the_path_by_name() {
        let mut config = config_with_file(
            r#"
            [accounts.shop]
            token = "shop-token"
            appid = "wxshop"
            encoding_aes_key = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
            original_id = "gh_shop"

            [accounts.news]
            token = "news-token"
            original_id = "gh_news"
            "#,
        );
        config.token = Some(Secret::new("default-token"));
        config.shared.original_id = Some("gh_default".into());
        let accounts = Accounts::load(&config).unwrap();
        assert_eq!(accounts.len(), 3);
        let paths: Vec<&str> = accounts.iter().map(|(p, _)| p).collect();
        assert_eq!(paths, ["/wechat", "/wechat/news", "/wechat/shop"]);
        let shop = accounts.at("/wechat/shop").unwrap();
        assert_eq!(shop.token.expose(), "shop-token");
        assert!(shop.aes_key.is_some());
        assert_eq!(shop.original_id.as_deref(), Some("gh_shop"));
        assert!(accounts.at("/wechat/news").unwrap().aes_key.is_none());
        assert_eq!(
            accounts.at("/wechat").unwrap().token.expose(),
            "default-token"
        );
    }

    #[test]
    fn unusable_files_are_clear_errors() {
        for (toml, expected) in [
            ("[accounts.a]\nappid = \"x\"\n", "token"),
            ("[accounts.a]\ntoken = \"t\"\nencoding_aes_key = \"short\"\nappid = \"wx\"\n", "43"),
            ("[accounts.a]\ntoken = \"t\"\nencoding_aes_key = \"abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG\"\n", "AppID"),
            ("[accounts.\"a/b\"]\ntoken = \"t\"\n", "letters"),
            ("[accounts.a]\ntoken = \"t\"\ntypo = 1\n", "typo"),
            ("not toml [", "INGEST_ACCOUNTS"),
            ("", "no account"),
        ] {
            let error = Accounts::load(&config_with_file(toml)).unwrap_err();
            assert!(error.contains(expected), "{toml:?}: {error}");
        }
    }

    #[test]
    fn several_accounts_each_need_their_original_id() {
        let mut config =
            config_with_file("[accounts.shop]\ntoken = \"t\"\noriginal_id = \"gh_shop\"\n");
        assert!(Accounts::load(&config).is_ok(), "one account: none needed");
        config.token = Some(Secret::new("default-token"));
        let error = Accounts::load(&config).unwrap_err();
        assert!(error.contains("WECHAT_ORIGINAL_ID"), "{error}");
        config.shared.original_id = Some("gh_default".into());
        assert!(Accounts::load(&config).is_ok());
        config.shared.original_id = Some("gh_shop".into());
        let error = Accounts::load(&config).unwrap_err();
        assert!(error.contains("gh_shop"), "two accounts, one id: {error}");
        let mut config = config_with_file(
            "[accounts.a]\ntoken = \"t\"\noriginal_id = \"gh_a\"\n[accounts.b]\ntoken = \"t\"\n",
        );
        config.token = None;
        let error = Accounts::load(&config).unwrap_err();
        assert!(
            error.contains("account b") && error.contains("original_id"),
            "{error}"
        );
    }

    #[test]
    fn a_component_alone_is_served_and_an_account_beside_it_needs_its_original_id() {
        let mut config = config_with_file(
            "[component]\nappid = \"wxc\"\ntoken = \"t\"\n\
             encoding_aes_key = \"abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG\"\n",
        );
        assert!(Accounts::load(&config).unwrap().is_empty(), "no account");
        // Beside one account, which needs its original_id: without it, its secrets would
        // speak for any authorizer's account (the red team's finding).
        config.token = Some(Secret::new("default-token"));
        let error = Accounts::load(&config).unwrap_err();
        assert!(
            error.contains("WECHAT_ORIGINAL_ID") && error.contains("component"),
            "{error}"
        );
        config.shared.original_id = Some("gh_default".into());
        assert_eq!(Accounts::load(&config).unwrap().len(), 1);
        // The component in two places is refused here too (`ingest validate` loads this).
        config.shared.component_appid = Some("wxc".into());
        let error = Accounts::load(&config).unwrap_err();
        assert!(error.contains("both set"), "{error}");
    }

    #[test]
    fn default_names_the_wechat_account_when_it_is_set() {
        let mut config = config_with_file("[accounts.default]\ntoken = \"t\"\n");
        assert!(Accounts::load(&config).is_ok(), "no WECHAT_* account: free");
        config.token = Some(Secret::new("t"));
        let error = Accounts::load(&config).unwrap_err();
        assert!(error.contains("default"), "{error}");
    }
}
