//! One way to build a Kafka client's configuration, for every client of both binaries: the
//! brokers, the client's own defaults, then `KAFKA_CONFIG` (settings every client needs, such
//! as TLS and SASL), then the client kind's own overrides (`KAFKA_PRODUCER_CONFIG`,
//! `KAFKA_CONSUMER_CONFIG`). A client built any other way would miss the security settings and
//! fail on a secured cluster.

use rdkafka::ClientConfig;

/// `bootstrap.servers`, then `defaults`, then each layer of `key=value` pairs in order.
pub fn client_config(
    brokers: &str,
    defaults: &[(&str, &str)],
    layers: &[&[String]],
) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", brokers);
    for (key, value) in defaults {
        config.set(*key, *value);
    }
    for pair in layers.iter().flat_map(|layer| layer.iter()) {
        if let Some((key, value)) = pair.split_once('=') {
            config.set(key.trim(), value.trim());
        }
    }
    config
}

/// Checks a `key=value` list setting: the error names the setting and the entry.
pub fn check_pairs(setting: &str, pairs: &[String]) -> Result<(), String> {
    // An empty entry (an empty variable) is no property at all.
    match pairs
        .iter()
        .filter(|pair| !pair.trim().is_empty())
        .find(|pair| {
            pair.split_once('=')
                .is_none_or(|(key, _)| key.trim().is_empty())
        }) {
        Some(bad) => Err(format!("{setting} entry is not key=value: {bad:?}")),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_apply_in_order_over_the_defaults() {
        let common = vec!["security.protocol=ssl".to_owned(), "acks = 1".to_owned()];
        let own = vec!["acks=all".to_owned()];
        let config = client_config(
            "b:9092",
            &[("acks", "0"), ("linger.ms", "1")],
            &[&common, &own],
        );
        assert_eq!(config.get("bootstrap.servers"), Some("b:9092"));
        assert_eq!(config.get("security.protocol"), Some("ssl"));
        assert_eq!(config.get("acks"), Some("all"));
        assert_eq!(config.get("linger.ms"), Some("1"));
    }

    #[test]
    fn malformed_pairs_are_named() {
        assert!(check_pairs("KAFKA_CONFIG", &["a=b".into()]).is_ok());
        let error = check_pairs("KAFKA_CONFIG", &["a=b".into(), "oops".into()]).unwrap_err();
        assert!(
            error.contains("KAFKA_CONFIG") && error.contains("oops"),
            "{error}"
        );
        assert!(check_pairs("X", &["=v".into()]).is_err());
        assert!(check_pairs("X", &["".into()]).is_ok(), "an empty variable");
    }
}
