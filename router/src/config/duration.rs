//! Go-style durations as gorouter's YAML writes them: `120s`, `5m`, `1m30s`, `250ms`.
//! A bare integer is read as seconds.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// Parses a Go-style duration (`h`, `m`, `s`, `ms`, `us`, `ns` units, concatenated).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let err = || format!("{text:?} is not a duration like 120s, 5m, 1m30s or 250ms");
    let text = text.trim();
    if text.is_empty() {
        return Err(err());
    }
    if text.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse().map(Duration::from_secs).map_err(|_| err());
    }
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .ok_or_else(err)?;
        if digits == 0 {
            return Err(err());
        }
        let value: f64 = rest[..digits].parse().map_err(|_| err())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let nanos_per_unit = match &rest[..unit_len] {
            "h" => 3_600e9,
            "m" => 60e9,
            "s" => 1e9,
            "ms" => 1e6,
            "us" | "µs" => 1e3,
            "ns" => 1.0,
            _ => return Err(err()),
        };
        rest = &rest[unit_len..];
        let nanos = value * nanos_per_unit;
        // About 292 years: enough for any timeout, and keeps the f64 -> u64 cast exact.
        if !nanos.is_finite() || nanos > 9.2e18 {
            return Err(err());
        }
        total = total
            .checked_add(Duration::from_nanos(nanos as u64))
            .ok_or_else(err)?;
    }
    Ok(total)
}

/// serde helper: a duration from a string, or an integer number of seconds.
pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Seconds(u64),
        Text(String),
    }
    match Raw::deserialize(deserializer)? {
        Raw::Seconds(s) => Ok(Duration::from_secs(s)),
        Raw::Text(t) => parse_duration(&t).map_err(serde::de::Error::custom),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations_parse() {
        assert_eq!(parse_duration("120s"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
    }

    #[test]
    fn garbage_is_refused() {
        for bad in [
            "",
            "s",
            "5x",
            "m5",
            "1e400s",
            "99999999999999h",
            "-1s",
            "5 m",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
    }
}
