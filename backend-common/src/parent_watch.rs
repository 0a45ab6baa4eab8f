//! Leaving with LocalAI: a worker whose parent (the LocalAI process that started it) dies
//! without stopping it would serve on, holding its model's memory, until the machine
//! restarts. As every upstream backend does, the worker checks its parent process every
//! `LOCALAI_BACKEND_PARENT_WATCH_INTERVAL` (a Go duration such as `500ms` or `1m`, or a number
//! of seconds; default 2 s) and shuts down gracefully once it has been handed to another
//! parent. `LOCALAI_BACKEND_PARENT_WATCH=false` (or `0`, `no`, `off`) turns the watch off.
use std::time::Duration;

/// Turns the watch off when `false`, `0`, `no` or `off`.
pub const ENABLE_ENV: &str = "LOCALAI_BACKEND_PARENT_WATCH";
/// How often the parent is checked.
pub const INTERVAL_ENV: &str = "LOCALAI_BACKEND_PARENT_WATCH_INTERVAL";
/// The interval when none is set.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(2);

/// A Go duration (`300ms`, `1.5s`, `2m`, `1h30m`, units ns us µs ms s m h), or a bare number of
/// seconds; `None` for anything else, zero included.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    if let Ok(seconds) = text.parse::<f64>() {
        return (seconds > 0.0 && seconds.is_finite()).then(|| Duration::from_secs_f64(seconds));
    }
    let mut rest = text;
    let mut total = 0.0f64;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += number * seconds;
        rest = &rest[unit..];
    }
    (total > 0.0 && total.is_finite()).then(|| Duration::from_secs_f64(total))
}

/// The watch interval the environment asks for; `None` when the watch is off.
pub fn interval_from_env() -> Option<Duration> {
    let off = std::env::var(ENABLE_ENV).is_ok_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "false" | "0" | "no" | "off"
        )
    });
    if off {
        return None;
    }
    let Ok(text) = std::env::var(INTERVAL_ENV) else {
        return Some(DEFAULT_INTERVAL);
    };
    Some(parse_duration(&text).unwrap_or_else(|| {
        tracing::warn!(
            value = %text,
            "{INTERVAL_ENV} is not a duration such as 500ms, 2s or 1m; checking every 2s"
        );
        DEFAULT_INTERVAL
    }))
}

/// Completes once this process's parent is no longer the one it started with.
pub async fn parent_gone(interval: Duration) {
    // SAFETY: getppid has no preconditions and cannot fail.
    let parent = unsafe { libc::getppid() };
    loop {
        tokio::time::sleep(interval).await;
        // SAFETY: as above.
        let now = unsafe { libc::getppid() };
        if now != parent {
            tracing::warn!(
                parent,
                now,
                "the process that started this worker is gone; shutting down"
            );
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations_and_bare_seconds() {
        let ms = Duration::from_millis;
        assert_eq!(parse_duration("500ms"), Some(ms(500)));
        assert_eq!(parse_duration("2"), Some(ms(2000)));
        assert_eq!(parse_duration("0.25"), Some(ms(250)));
        assert_eq!(parse_duration("1m"), Some(ms(60_000)));
        assert_eq!(parse_duration("1h30m"), Some(ms(5_400_000)));
        assert_eq!(parse_duration("1.5s"), Some(ms(1500)));
        assert_eq!(parse_duration("250us"), Some(Duration::from_micros(250)));
        for bad in ["", "0", "0s", "-1", "1x", "ms", "s1", "1..5s"] {
            assert_eq!(parse_duration(bad), None, "{bad:?}");
        }
    }
}
