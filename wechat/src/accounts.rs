//! The `INGEST_ACCOUNTS` file, shared by the ingress (which serves each account) and the
//! workers (which find an account's AppID and AppSecret by its `original_id`).
//!
//! ```toml
//! [accounts.shop]
//! token = "…"
//! appid = "wx…"
//! encoding_aes_key = "…"   # optional
//! appsecret = "…"          # optional
//! original_id = "gh_…"     # the ToUserName of its pushes; required with more than one account
//! accept_plaintext = false # optional: with a key, let plaintext through while switching modes
//! ```
//!
//! Each secret may come from a file instead: `token_file`, `appsecret_file`,
//! `encoding_aes_key_file` (trailing newline ignored). The config file's `[accounts.NAME]`
//! tables are the same entries.
//!
//! A third-party platform (WeChat Open Platform) adds one `[component]` table:
//!
//! ```toml
//! [component]
//! appid = "wx…"            # the component_appid
//! appsecret = "…"          # the component_appsecret (the component worker's API calls)
//! token = "…"              # the message Token
//! encoding_aes_key = "…"   # the EncodingAESKey (every component push is encrypted)
//! release_check = false    # answer WeChat's release-check test accounts
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::str::FromStr;

use serde::Deserialize;

/// A secret that never prints (`Debug` shows `***`).
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_owned()))
    }
}

/// One `[accounts.NAME]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountEntry {
    pub token: Secret,
    pub appid: Option<String>,
    pub encoding_aes_key: Option<Secret>,
    pub appsecret: Option<Secret>,
    pub original_id: Option<String>,
    /// With an `encoding_aes_key`: let plaintext pushes through too (only while switching
    /// modes in WeChat's console).
    #[serde(default)]
    pub accept_plaintext: bool,
}

/// The `[component]` table (or the `WECHAT_COMPONENT_*` settings): a WeChat Open Platform
/// third-party platform, which receives every authorizer's pushes through one component.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComponentEntry {
    pub appid: String,
    /// Needed by the component worker (component token); the ingress never uses it.
    pub appsecret: Option<Secret>,
    pub token: Secret,
    pub encoding_aes_key: Secret,
    /// Answer WeChat's release-check (全网发布) test accounts with their fixed replies.
    #[serde(default)]
    pub release_check: bool,
}

impl ComponentEntry {
    /// What makes a component unusable, naming `origin` (`[component]`, `WECHAT_COMPONENT_*`).
    pub fn check(&self, origin: &str) -> Result<(), String> {
        if self.appid.trim().is_empty() {
            return Err(format!("{origin}: appid is empty"));
        }
        if self.token.expose().is_empty() {
            return Err(format!("{origin}: token is empty"));
        }
        crate::decrypt::AesKey::parse(self.encoding_aes_key.expose())
            .map_err(|e| format!("{origin}: encoding_aes_key: {e}"))?;
        Ok(())
    }
}

/// The whole file: accounts by name, sorted, and the component, if any.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountsFile {
    #[serde(default)]
    pub accounts: BTreeMap<String, AccountEntry>,
    #[serde(default)]
    pub component: Option<ComponentEntry>,
}

impl AccountsFile {
    /// Reads and checks a file; the error names the file and what is wrong.
    pub fn read(path: &Path) -> Result<AccountsFile, String> {
        let origin = format!("INGEST_ACCOUNTS {}", path.display());
        let text = std::fs::read_to_string(path).map_err(|e| format!("{origin}: {e}"))?;
        let table: toml::Table = toml::from_str(&text).map_err(|e| format!("{origin}: {e}"))?;
        AccountsFile::from_table(table, &origin)
    }

    /// The accounts of a parsed file (the `INGEST_ACCOUNTS` file, or the config file's
    /// `[accounts.NAME]` tables); `origin` names it in errors. A secret key may be given as
    /// `{key}_file` naming a file that holds it (trailing newline ignored): `token_file`,
    /// `appsecret_file`, `encoding_aes_key_file`.
    pub fn from_table(mut table: toml::Table, origin: &str) -> Result<AccountsFile, String> {
        if let Some(toml::Value::Table(accounts)) = table.get_mut("accounts") {
            for (name, account) in accounts.iter_mut() {
                if let toml::Value::Table(account) = account {
                    secrets_from_files(account)
                        .map_err(|e| format!("{origin}: [accounts.{name}] {e}"))?;
                }
            }
        }
        if let Some(toml::Value::Table(component)) = table.get_mut("component") {
            secrets_from_files(component).map_err(|e| format!("{origin}: [component] {e}"))?;
        }
        let file: AccountsFile = toml::Value::Table(table)
            .try_into()
            .map_err(|e| format!("{origin}: {e}"))?;
        if let Some(component) = &file.component {
            component.check(&format!("{origin}: [component]"))?;
        }
        for name in file.accounts.keys() {
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return Err(format!(
                    "account name {name:?}: use letters, digits, '_' and '-' only"
                ));
            }
        }
        Ok(file)
    }
}

/// The keys of an account table that hold secrets, each of which may come from a file.
const SECRET_KEYS: [&str; 3] = ["token", "appsecret", "encoding_aes_key"];

/// Replaces `{key}_file = "PATH"` with `{key} = <the file's content>` for the secret keys.
fn secrets_from_files(account: &mut toml::Table) -> Result<(), String> {
    for key in SECRET_KEYS {
        let file_key = format!("{key}_file");
        let Some(path) = account.remove(&file_key) else {
            continue;
        };
        let toml::Value::String(path) = path else {
            return Err(format!("{file_key} must be a path (a string)"));
        };
        if account.contains_key(key) {
            return Err(format!("{key} and {file_key} are both set: set one"));
        }
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("{file_key}: cannot read {path}: {e}"))?;
        account.insert(
            key.to_owned(),
            toml::Value::String(text.trim_end_matches(['\n', '\r']).to_owned()),
        );
    }
    Ok(())
}

/// Checks the rule that keeps one account's secrets speaking for that account only: with more
/// than one account, or an account beside an Open Platform component (whose authorizers are
/// other accounts), each must name its `original_id` (the `gh_…` `ToUserName` of its
/// pushes), and no two the same one. `accounts` are (name, original_id, what sets it) triples.
pub fn check_original_ids<'a>(
    accounts: impl IntoIterator<Item = (&'a str, Option<&'a str>, &'static str)>,
    beside_component: bool,
) -> Result<(), String> {
    let accounts: Vec<_> = accounts.into_iter().collect();
    let mut seen = BTreeMap::new();
    for (name, original_id, setting) in &accounts {
        match original_id {
            None if accounts.len() > 1 => {
                return Err(format!(
                    "account {name} has no original_id ({setting}): with more than one account, \
                     each needs its gh_ id so that a push naming another account is refused"
                ))
            }
            None if beside_component => {
                return Err(format!(
                    "account {name} has no original_id ({setting}): beside an Open Platform \
                     component, each account needs its gh_ id, so that its secrets never speak \
                     for an authorizer's account (nor the component's for it)"
                ))
            }
            None => {}
            Some(id) => {
                if let Some(other) = seen.insert(*id, *name) {
                    return Err(format!(
                        "accounts {other} and {name} have the same original_id {id:?}"
                    ));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_accounts_each_need_a_distinct_original_id() {
        assert!(check_original_ids([("default", None, "WECHAT_ORIGINAL_ID")], false).is_ok());
        let error =
            check_original_ids([("default", None, "WECHAT_ORIGINAL_ID")], true).unwrap_err();
        assert!(error.contains("component"), "{error}");
        assert!(check_original_ids([("default", Some("gh_d"), "x")], true).is_ok());
        assert!(
            check_original_ids([("a", Some("gh_a"), "x"), ("b", Some("gh_b"), "x")], false).is_ok()
        );
        let error = check_original_ids(
            [
                ("default", None, "WECHAT_ORIGINAL_ID"),
                ("b", Some("gh_b"), "original_id"),
            ],
            false,
        )
        .unwrap_err();
        assert!(
            error.contains("default") && error.contains("WECHAT_ORIGINAL_ID"),
            "{error}"
        );
        let error = check_original_ids([("a", Some("gh_x"), "x"), ("b", Some("gh_x"), "x")], false)
            .unwrap_err();
        assert!(error.contains("gh_x"), "{error}");
    }
}
