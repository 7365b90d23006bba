//! The `INGEST_ACCOUNTS` file, shared by the ingress (which serves each account) and the
//! workers (which find an account's AppID and AppSecret by its `original_id`).
//!
//! ```toml
//! [accounts.shop]
//! token = "…"
//! appid = "wx…"
//! encoding_aes_key = "…"   # optional
//! appsecret = "…"          # optional
//! original_id = "gh_…"     # optional
//! accept_plaintext = false # optional: with a key, let plaintext through while switching modes
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

/// The whole file: accounts by name, sorted.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountsFile {
    #[serde(default)]
    pub accounts: BTreeMap<String, AccountEntry>,
}

impl AccountsFile {
    /// Reads and checks a file; the error names the file and what is wrong.
    pub fn read(path: &Path) -> Result<AccountsFile, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("INGEST_ACCOUNTS {}: {e}", path.display()))?;
        let file: AccountsFile = toml::from_str(&text)
            .map_err(|e| format!("INGEST_ACCOUNTS {}: {e}", path.display()))?;
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
