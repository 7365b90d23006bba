//! The parts of a `REDIS_URL` (`scheme://[userinfo@]host:port,host:port[/path]`), and the URL
//! without its password for errors and logs.

use crate::StoreError;

/// The URL's parts: `scheme://[userinfo@]host:port,host:port[/path]`.
pub(crate) struct Parts<'a> {
    pub(crate) tls: bool,
    pub(crate) userinfo: Option<&'a str>,
    pub(crate) hosts: Vec<&'a str>,
    pub(crate) path: &'a str,
}

pub(crate) fn parts(url: &str) -> Parts<'_> {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => (Some(userinfo), hosts),
        None => (None, authority),
    };
    Parts {
        tls: scheme.starts_with("rediss"),
        userinfo,
        hosts: hosts.split(',').filter(|h| !h.is_empty()).collect(),
        path,
    }
}

impl Parts<'_> {
    /// `redis[s]://[userinfo@]host` for each host.
    pub(crate) fn node_urls(&self, with_userinfo: bool) -> Vec<String> {
        let scheme = if self.tls { "rediss" } else { "redis" };
        let userinfo = match (with_userinfo, self.userinfo) {
            (true, Some(userinfo)) => format!("{userinfo}@"),
            _ => String::new(),
        };
        self.hosts
            .iter()
            .map(|host| format!("{scheme}://{userinfo}{host}"))
            .collect()
    }

    pub(crate) fn invalid(url: &str, why: &str) -> StoreError {
        StoreError::Redis(redis::RedisError::from((
            redis::ErrorKind::InvalidClientConfig,
            "invalid REDIS_URL",
            format!("{why}: {}", redact(url)),
        )))
    }
}

/// A URL without its password, for errors and logs.
pub(crate) fn redact(url: &str) -> String {
    match parts(url).userinfo {
        Some(userinfo) => url.replacen(userinfo, "…", 1),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_their_parts() {
        let p = parts("rediss+cluster://u:secret@a:1,b:2");
        assert!(p.tls);
        assert_eq!(p.userinfo, Some("u:secret"));
        assert_eq!(
            p.node_urls(true),
            ["rediss://u:secret@a:1", "rediss://u:secret@b:2"]
        );
        let p = parts("redis+sentinel://a:1,b:2/wxpipe");
        assert_eq!((p.hosts.len(), p.path), (2, "wxpipe"));
        assert_eq!(p.node_urls(true), ["redis://a:1", "redis://b:2"]);
        assert!(!redact("redis+cluster://u:secret@a:1").contains("secret"));
    }
}
