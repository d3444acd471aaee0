//! Wall-clock timestamps as milliseconds since the Unix epoch, the one time
//! representation on the wire and on the board.

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// RFC 3339 rendering of a millisecond timestamp in UTC, for humans:
/// always three fraction digits, so columns of times line up.
pub fn rfc3339(ms: i64) -> String {
    const FORMAT: &[time::format_description::BorrowedFormatItem<'static>] = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    let nanos = i128::from(ms) * 1_000_000;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| t.format(FORMAT).ok())
        .unwrap_or_else(|| ms.to_string())
}

#[cfg(test)]
mod tests {
    use super::rfc3339;

    #[test]
    fn renders_three_fraction_digits_always() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_796_208_810_690), "2026-12-02T10:53:30.690Z");
        assert_eq!(rfc3339(1_796_208_811_100), "2026-12-02T10:53:31.100Z");
        assert_eq!(rfc3339(1_796_208_811_007), "2026-12-02T10:53:31.007Z");
    }
}
